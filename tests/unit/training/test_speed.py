"""TF32 on the GPUs that have it, and never on CPUs or over a user's choice. Runs that check the host reads
and compile are in tests/e2e/test_performance.py."""

from __future__ import annotations

import pytest
import torch

from lit_lora.training.speed import compile_target, enable_tf32, is_compiled, speed_up


@pytest.fixture
def matmul_precision():
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(before)


@pytest.mark.parametrize("capability, expected", [((8, 0), "high"), ((9, 0), "high"), ((7, 5), "highest")])
def test_tf32_is_turned_on_for_gpus_that_have_it(monkeypatch, matmul_precision, capability, expected):
    # No GPU here: the capability is what an A100/H100 (8.0/9.0) or an RTX 2080 (7.5, no TF32) reports.
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert enable_tf32(torch.device("cuda", 0)) is (expected == "high")
    assert torch.get_float32_matmul_precision() == expected


def test_tf32_leaves_cpus_and_a_users_choice_alone(monkeypatch, matmul_precision):
    assert enable_tf32(torch.device("cpu")) is False
    assert torch.get_float32_matmul_precision() == "highest"  # CPU runs stay bit-exact
    torch.set_float32_matmul_precision("medium")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 6))
    assert enable_tf32(torch.device("cuda", 0)) is True
    assert torch.get_float32_matmul_precision() == "medium"


def test_compile_without_options_compiles_with_torchs_defaults():
    # torch.compile wraps at once and compiles at the first call, so this costs nothing.
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32, n_positions=16, bos_token_id=0, eos_token_id=0))
    speed_up(model, torch.device("cpu"), tf32=False, compile=False)
    assert not is_compiled(compile_target(model))
    speed_up(model, torch.device("cpu"), tf32=False, compile=True)  # --model.compile true, no compile_options
    assert is_compiled(compile_target(model))
