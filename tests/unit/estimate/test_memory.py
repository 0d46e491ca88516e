"""Static estimates on a real tiny model: FLOPs per token against torch's FlopCounter, static memory to the
byte, and the activation estimate's direction."""

from __future__ import annotations

import pytest
import torch

from lit_lora.estimate.flops import training_flops_per_token
from lit_lora.estimate.memory import estimate_training_memory, static_bytes
from lit_lora.lora import LoraSettings
from lit_lora.training.module import LitLora


@pytest.mark.parametrize(
    "lora",
    [LoraSettings(), LoraSettings(target_modules=["c_fc"]), LoraSettings(modules_to_save=["lm_head"])],
    ids=["default", "c_fc-only", "lm_head-trained"],  # c_fc only: layer 0's attention needs no backward
)
def test_flops_per_token_match_flop_counter_on_a_real_step(tiny_model_dir, lora):
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    # Eager attention: the counter has no formula for the CPU's fused attention kernel.
    model = LitLora(model_name_or_path=str(tiny_model_dir), lora=lora, gradient_checkpointing=False, block_size=32,
                    attn_implementation="eager")
    model.train()
    optimizer = model.configure_optimizers()["optimizer"]
    batch = torch.randint(0, 512, (4, 32), generator=torch.Generator().manual_seed(0))
    counter = FlopCounterMode(display=False)
    with counter:  # one training step: forward, loss, backward, AdamW
        nll, n = model.objective.nll(model.model, {"input_ids": batch, "labels": batch})
        (nll / n).backward()
        optimizer.step()
    measured = counter.get_total_flops() / batch.numel()
    assert training_flops_per_token(model.model, seq_len=32).model == pytest.approx(measured, rel=0.02)


def _unique_bytes(tensors):
    seen, total = set(), 0
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


@pytest.mark.parametrize("base_dtype", [None, "bfloat16"])
def test_static_memory_is_exact_in_bytes(tiny_model_dir, base_dtype):
    model = LitLora(model_name_or_path=str(tiny_model_dir), block_size=32, base_dtype=base_dtype)
    weights, grads, opt_bytes = static_bytes(model.model, "32-true")
    assert weights == _unique_bytes(list(model.model.parameters()) + list(model.model.buffers()))
    optimizer = model.configure_optimizers()["optimizer"]
    batch = torch.randint(0, 512, (2, 32))
    nll, n = model.objective.nll(model.model, {"input_ids": batch, "labels": batch})
    (nll / n).backward()
    optimizer.step()
    assert grads == sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    state = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
    assert opt_bytes == sum(t.numel() * t.element_size() for t in state)
    estimate = estimate_training_memory(model.model, 2, 32, "32-true", False)
    assert estimate.static == weights + grads + opt_bytes and estimate.total == estimate.static + estimate.activations


def test_static_memory_follows_precisions_that_convert_the_module(tiny_model_dir):
    model = LitLora(model_name_or_path=str(tiny_model_dir), block_size=32)
    n_params = sum(p.numel() for p in set(model.model.parameters()))
    n_trainable = sum(p.numel() for p in model.model.parameters() if p.requires_grad)
    weights, grads, _ = static_bytes(model.model, "bf16-true")  # Lightning casts everything, LoRA included
    assert weights == 2 * n_params and grads == 2 * n_trainable
    assert static_bytes(model.model, "bf16-mixed") == static_bytes(model.model, "32-true")  # autocast casts copies


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_activation_estimate_grows_with_batch_and_block_and_shrinks_with_checkpointing(tiny_model_dir, precision):
    model = LitLora(model_name_or_path=str(tiny_model_dir), block_size=128)

    def act(batch, block, gc):
        return estimate_training_memory(model.model, batch, block, precision, gc).activations

    for gc in (False, True):
        by_batch = [act(b, 64, gc) for b in (1, 2, 8)]
        by_block = [act(4, t, gc) for t in (16, 64, 128)]
        assert by_batch == sorted(set(by_batch)) and by_block == sorted(set(by_block)), gc
    for batch, block in ((1, 16), (8, 128)):
        assert act(batch, block, True) < act(batch, block, False)
