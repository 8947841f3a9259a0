"""Recipe parsing with errors a user can act on: TRL's ``TrlParser`` that names the YAML file, line and key.

``trl-safedistill train`` and ``align`` read a recipe YAML (``--config``) and command-line flags into
dataclasses with TRL's :class:`~trl.TrlParser`. On a mistake TRL prints argparse's whole usage (180
lines for ``learning_rate: abc``) or a traceback without the file's name. :class:`RecipeParser` is the
same parser, but every mistake is a :class:`~trl_safedistill.errors.UserError` of one line:

* a missing file, a YAML syntax error (with its line), a file that is not a mapping;
* an unknown key (with its line; TRL would reject it too, without one);
* a value of the wrong type (``learning_rate: abc``), from the YAML (``file:line: key``) or a flag (``--key``);
* a ``ValueError`` of a dataclass's ``__post_init__`` (``distill_format must be one of ...``), with
  the recipe's file and the line of the key it names.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NoReturn

from trl import TrlParser

from .errors import UserError

_ARGUMENT = re.compile(r"argument --([A-Za-z0-9_.-]+)(?:/-{1,2}[A-Za-z0-9_.-]+)*: ?")


def recipe_key_lines(path: str) -> dict[str, int]:
    """``{key: line}`` for the top-level keys of recipe ``path``; raises :class:`UserError` on any unusable file."""
    import yaml

    file = Path(path)
    if not file.is_file():
        raise UserError(f"{path}: config file not found: pass --config the path of a recipe YAML (see recipes/)")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        line = text_line_of_byte(file.read_bytes(), error.start)
        raise UserError(f"{path}:{line}: not valid UTF-8 (byte 0x{error.object[error.start]:02x}): save the file as UTF-8") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        problem = getattr(error, "problem", None) or str(error)
        raise UserError(f"{where}: not valid YAML ({problem}): fix the syntax of this line or the one before") from None
    if not isinstance(node, yaml.MappingNode):
        raise UserError(f"{path}: a recipe must be a YAML mapping of field: value lines")
    return {str(key.value): key.start_mark.line + 1 for key, _ in node.value}


def text_line_of_byte(data: bytes, offset: int) -> int:
    """The 1-based line number of byte ``offset`` in ``data``."""
    return data.count(b"\n", 0, offset) + 1


class RecipeParser(TrlParser):
    """:class:`~trl.TrlParser` whose errors are one-line :class:`UserError` s naming the recipe file, line and key."""

    def __init__(self, dataclass_types: Any = None, **kwargs: Any):
        super().__init__(dataclass_types, **kwargs)
        self._recipe_path: str | None = None
        self._recipe_lines: dict[str, int] = {}
        self._flags: set[str] = set()

    def field_names(self) -> set[str]:
        return {action.dest for action in self._actions}

    def parse_args_and_config(self, args: Iterable[str] | None = None, **kwargs: Any):
        args = list(args) if args is not None else sys.argv[1:]
        self._recipe_path, self._recipe_lines = None, {}
        self._flags = {arg[2:].split("=", 1)[0].replace("-", "_") for arg in args if arg.startswith("--")}
        if "--config" in args:
            position = args.index("--config")
            if position + 1 >= len(args):
                raise UserError("--config needs the path of a recipe YAML: --config RECIPE.yaml")
            self._recipe_path = args[position + 1]
            self._recipe_lines = recipe_key_lines(self._recipe_path)
            known = self.field_names() | {"env"}
            unknown = [key for key in self._recipe_lines if key not in known]
            if unknown:
                more = f" (and {len(unknown) - 1} more: {', '.join(unknown[1:])})" if len(unknown) > 1 else ""
                raise UserError(
                    f"{self._where(unknown[0])}: unknown key '{unknown[0]}'{more}: no such field; remove it or fix its "
                    f"spelling (--help lists every field)"
                )
        try:
            return super().parse_args_and_config(args, **kwargs)
        except UserError:
            raise
        except ValueError as error:
            raise UserError(self._locate(str(error))) from error

    def error(self, message: str) -> NoReturn:
        """argparse's error (a bad value or flag): one :class:`UserError` instead of the usage and ``exit(2)``."""
        match = _ARGUMENT.search(message)
        if match is None:
            raise UserError(f"{message} (--help lists every field)")
        key = match.group(1).replace("-", "_")
        raise UserError(f"{self._field(key)}: {message[match.end() :]}")

    def _where(self, key: str) -> str:
        """``--key`` when a flag set ``key``, else ``file:line`` when the recipe did, else the recipe file."""
        if key in self._flags or self._recipe_path is None:
            return f"--{key}"
        line = self._recipe_lines.get(key)
        return f"{self._recipe_path}:{line}" if line else self._recipe_path

    def _field(self, key: str) -> str:
        """``--key`` for a flag, ``file:line: key`` for a recipe key."""
        where = self._where(key)
        return where if where.startswith("--") else f"{where}: {key}"

    def _locate(self, message: str) -> str:
        """A dataclass's ``ValueError`` message prefixed with where the field it names was set."""
        message = " ".join(message.split())
        unused = re.match(r"Some specified arguments are not used by the HfArgumentParser: (\[.*\])", message)
        if unused:
            flags = [arg for arg in re.findall(r"'([^']*)'", unused.group(1)) if arg.startswith("-")] or [unused.group(1)]
            return f"unknown flag {', '.join(flags)}: no such field; remove it or fix its spelling (--help lists every field)"
        named = [(m.start(), key) for key in self.field_names() for m in [re.search(rf"(?<![\w-]){re.escape(key)}\b", message)] if m]
        if not named:
            return f"{self._recipe_path}: {message}" if self._recipe_path else message
        key = min(named)[1]
        if message.startswith(key) or key not in self._flags | set(self._recipe_lines):
            return f"{self._where(key)}: {message}"
        return f"{self._field(key)}: {message}"


def check_model_name(name: str | None, key: str = "model_name_or_path") -> None:
    """Raise a one-line :class:`UserError` when ``name`` is neither a model folder nor a hub id that can load here.

    Accepted: ``embedded-default`` (and its aliases), a folder with a ``config.json``, or a hub id (``org/name``);
    offline (``HF_HUB_OFFLINE=1``) a hub id must already be in the local Hugging Face cache. Checked before any
    data or weights are loaded, so the mistake costs no time.
    """
    import os

    from .models import EMBEDDED_ALIASES

    if not name:
        raise UserError(f"{key} is not set: give a model folder, a hub id or embedded-default")
    if name in EMBEDDED_ALIASES:
        return
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{key}: {name} has no config.json: give the folder of a saved model (save_pretrained)")
        return
    looks_local = name.startswith(("/", "./", "../", "~")) or path.suffix in {".json", ".safetensors", ".bin", ".gguf"}
    if looks_local or name.count("/") > 1:
        raise UserError(f"{key}: {name}: no such model folder")
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(name, "config.json"), str):
            raise UserError(f"{key}: '{name}' is not a local folder and not in the Hugging Face cache, and HF_HUB_OFFLINE "
                            "is set: download it first, or give a model folder or embedded-default")
