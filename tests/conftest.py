"""Shared fixtures: tiny GPT-2 models saved to disk and loaded back through `from_pretrained`, offline."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

# Set before transformers/huggingface_hub are imported anywhere: no test may touch the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

def pytest_collection_modifyitems(config, items) -> None:
    """`gpu` tests skip, with the reason, where no CUDA GPU is visible."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


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


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_model_dir, shakespeare) -> SimpleNamespace:
    """One short real fit shared by the checkpoint, export and generation tests: 8 steps at a learning rate
    large enough that lora_B is clearly non-zero, validated at steps 4 and 8. Tests read it and write
    elsewhere (a resume test copies the checkpoint first)."""
    from tests.helpers import fit_args, run_cli

    tmp = tmp_path_factory.mktemp("trained")
    run_cli(fit_args(tiny_model_dir, shakespeare, tmp, "--trainer.max_steps", "8",
                     "--model.learning_rate", "2e-2", "--trainer.val_check_interval", "4"), cwd=tmp)
    run = tmp / "lightning_logs" / "lit_lora" / "version_0"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    return SimpleNamespace(dir=tmp, run=run, ckpt=run / "checkpoints" / "last.ckpt", base=tiny_model_dir)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch) -> Path:
    """Run in a fresh directory so lightning_logs/ and caches land there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
