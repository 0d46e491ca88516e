"""Shared fixtures: tiny GPT-2 models saved to disk and loaded back through `from_pretrained`, offline."""

from __future__ import annotations

import os
from pathlib import Path

# Set before transformers/huggingface_hub are imported anywhere: no test may touch the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
QUICKSTART = REPO / "examples" / "quickstart"
TINY_SHAPE = dict(n_layer=2, n_embd=64, n_head=2, n_positions=128)


def save_tiny_gpt2(path: Path, tokenizer_dir: Path, seed: int = 0, **overrides) -> Path:
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
        **{**TINY_SHAPE, **overrides},
    )
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer, 64-wide GPT-2 with the quickstart's 512-token tokenizer, saved like a hub checkpoint."""
    return save_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"), QUICKSTART / "tokenizer")


@pytest.fixture(scope="session")
def gpt2_tokenizer_dir() -> Path:
    path = SHARED_DATA / "gpt2-tokenizer"
    if not path.is_dir():
        pytest.skip("../shared/data/gpt2-tokenizer is not present")
    return path


@pytest.fixture(scope="session")
def shakespeare(tmp_path_factory) -> Path:
    """The first 30 KB of tiny shakespeare (read from ../shared), or the quickstart corpus without it."""
    src = SHARED_DATA / "tinyshakespeare" / "input.txt"
    text = src.read_text(encoding="utf-8")[:30_000] if src.is_file() else (QUICKSTART / "train.txt").read_text()[:30_000]
    out = tmp_path_factory.mktemp("corpus") / "shakespeare.txt"
    out.write_text(text, encoding="utf-8")
    return out


@pytest.fixture
def in_tmp(tmp_path, monkeypatch) -> Path:
    """Run in a fresh directory so lightning_logs/ and caches land there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
