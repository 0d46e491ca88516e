"""Quantization without a run: the install command when bitsandbytes is missing, and a layer repacked for CPU
inference before fit refused in one line. Whole QLoRA runs are in tests/e2e/test_qlora.py."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import packed_for_cpu_inference

pytest.importorskip("bitsandbytes")  # in the dev extras; a checkout without them skips, saying so


def test_without_bitsandbytes_the_error_names_the_install_command(monkeypatch):
    import sys

    from lit_lora.errors import LitLoraError
    from lit_lora.pretrained.quantization import bnb_config, check_device

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if it were not installed
    with pytest.raises(LitLoraError, match=r"needs bitsandbytes, which is not installed: pip install -e "
                                           r"\"\.\[qlora\]\""):
        bnb_config("nf4", None, None)
    with pytest.raises(LitLoraError, match="model.quantization='int8' runs on cpu, cuda, xpu devices with "
                                           "bitsandbytes, not on 'mps'"):
        check_device("int8", "mps")
    with pytest.raises(LitLoraError, match="model.quantization='nf4' does not work with FSDP here; use "
                                           "--trainer.strategy ddp"):
        check_device("nf4", "cuda", sharded=True)


def test_a_model_repacked_for_cpu_inference_before_fit_is_one_line(monkeypatch):
    """Through the Python API a model may run in eval mode before training; its repacked weights cannot be
    restored exactly, so `fit` refuses them. While held, bitsandbytes does not repack."""
    import bitsandbytes as bnb
    import bitsandbytes.nn.modules as bnb_modules

    from lit_lora.errors import LitLoraError
    from lit_lora.pretrained.quantization import check_training_layout, hold_training_layout, release_training_layout

    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: True)
    model = torch.nn.Sequential(bnb.nn.Linear4bit(64, 32, compute_dtype=torch.float32, quant_type="nf4")).cpu().eval()
    x = torch.randn(2, 64)
    held = hold_training_layout(model)
    with torch.no_grad():
        model(x)
    assert held == [model[0]] and not packed_for_cpu_inference(model[0])
    check_training_layout(model)
    release_training_layout(held)
    with torch.no_grad():
        model(x)
    assert packed_for_cpu_inference(model[0])
    with pytest.raises(LitLoraError, match=r"^bitsandbytes repacked 1 of the model's 1 4-bit layers for CPU inference"):
        check_training_layout(model)
