"""Validate ``metrics.json`` against ``schema.json`` (beside this module).

A small validator for the JSON Schema keywords the schema uses (``type`` incl. lists, ``properties``,
``required``, ``additionalProperties``, ``items``, ``enum``, ``minimum``/``maximum``, ``minItems``/``maxItems``,
local ``$ref``), so no extra dependency is needed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SCHEMA_PATH = Path(__file__).with_name("schema.json")
_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


class SchemaError(ValueError):
    """``metrics.json`` does not match the schema; the message names the JSON path."""


def load_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def _is_type(value: Any, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _TYPES[name])


def _check(value: Any, schema: dict[str, Any], root: dict[str, Any], path: str) -> None:
    if "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target[part]
        _check(value, target, root, path)
        return
    types = schema.get("type")
    if types is not None:
        names = types if isinstance(types, list) else [types]
        if not any(_is_type(value, t) for t in names):
            raise SchemaError(f"{path}: expected {' or '.join(names)}, got {type(value).__name__}")
    if "enum" in schema and value not in schema["enum"]:
        raise SchemaError(f"{path}: {value!r} not one of {schema['enum']}")
    if _is_type(value, "number"):
        if "minimum" in schema and value < schema["minimum"]:
            raise SchemaError(f"{path}: {value} < minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            raise SchemaError(f"{path}: {value} > maximum {schema['maximum']}")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                raise SchemaError(f"{path}: field '{key}' missing")
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in properties:
                _check(item, properties[key], root, f"{path}.{key}")
            elif extra is False:
                raise SchemaError(f"{path}: unexpected field '{key}'")
            elif isinstance(extra, dict):
                _check(item, extra, root, f"{path}.{key}")
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            raise SchemaError(f"{path}: fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            raise SchemaError(f"{path}: more than {schema['maxItems']} items")
        if "items" in schema:
            for index, item in enumerate(value):
                _check(item, schema["items"], root, f"{path}[{index}]")


def validate(metrics: dict[str, Any]) -> None:
    """Raise :class:`SchemaError` (naming the JSON path) when ``metrics`` does not match the schema."""
    schema = load_schema()
    _check(metrics, schema, schema, "$")


def validate_file(path: Path | str) -> dict[str, Any]:
    """Load and validate a ``metrics.json``; returns it."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    validate(data)
    return data
