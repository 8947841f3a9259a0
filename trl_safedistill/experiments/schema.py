"""Validate ``metrics.json`` against ``schema.json`` (beside this module) with the ``jsonschema`` library.

The schema declares its draft in ``$schema`` (2020-12); the validator class for that draft is chosen from it,
and the schema itself is checked against the draft's meta-schema once, before its first use, so a broken edit
of ``schema.json`` fails loudly instead of validating nothing. A mismatch raises :class:`SchemaError` naming the
JSON path of the error (``$.models[1].metrics``), so a reader can find the offending field.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from jsonschema.exceptions import best_match
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for

SCHEMA_PATH = Path(__file__).with_name("schema.json")


class SchemaError(ValueError):
    """``metrics.json`` does not match the schema; the message names the JSON path."""


def load_schema() -> dict[str, Any]:
    """The schema of ``metrics.json`` as a dict."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def _validator() -> Validator:
    """The validator of the schema's declared draft, after checking the schema against that draft (cached)."""
    schema = load_schema()
    cls = validator_for(schema)  # the draft named in "$schema"
    cls.check_schema(schema)  # raises jsonschema.SchemaError on an invalid schema.json
    return cls(schema)


def validate(metrics: dict[str, Any]) -> None:
    """Raise :class:`SchemaError` (``"<JSON path>: <reason>"``) when ``metrics`` does not match the schema.

    When there are several errors, the message is jsonschema's most relevant one (:func:`best_match`: the
    deepest error outside alternatives) and says how many more there are.
    """
    errors = list(_validator().iter_errors(metrics))
    if not errors:
        return
    error = best_match(errors)
    more = f" (and {len(errors) - 1} more schema errors)" if len(errors) > 1 else ""
    raise SchemaError(f"{error.json_path}: {error.message}{more}")


def validate_file(path: Path | str) -> dict[str, Any]:
    """Load and validate a ``metrics.json``; returns it. Errors name the file (and the line for broken JSON)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise SchemaError(f"{path}:{error.lineno}: not valid JSON: {error.msg}") from None
    try:
        validate(data)
    except SchemaError as error:
        raise SchemaError(f"{path}: {error}") from None
    return data
