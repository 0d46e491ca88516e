"""LoRA settings check themselves: a rank that is not positive, and a PEFT combination PEFT refuses, are one
clear error each."""

from __future__ import annotations

import pytest
import torch

from lit_lora.errors import LitLoraError
from lit_lora.lora import LoraSettings


def test_invalid_peft_combination_is_a_clear_error(tiny_model_dir):
    with pytest.raises(LitLoraError, match="invalid LoRA settings.*layers_to_transform"):
        LoraSettings(target_modules="all-linear", extra={"layers_to_transform": [0]}).to_peft_config(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("bad", [0, -1])
def test_bad_rank_is_a_clear_error(bad):
    with pytest.raises(LitLoraError, match=f"model.lora.r must be a positive integer, got {bad}"):
        LoraSettings(r=bad)
