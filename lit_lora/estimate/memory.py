"""Peak training memory of a LoRA run, before running it.

    python -m lit_lora.cli summary --config conf/gpt2/lora.yaml

Two parts. The *static* part is exact, in bytes, from the model as built: every parameter and buffer
(at the dtype the precision setting leaves them in), one gradient per trainable parameter, and AdamW's
state (exp_avg, exp_avg_sq and a float32 `step` per trainable tensor). The *activation* part comes from a
dry run (estimate/dry_run.py): one forward and backward of this batch and block on fake tensors, whose peak
torch's MemTracker reports; the activations are that peak less the weights and gradients. It holds for
every family as its own code runs (RoPE, grouped-query attention, gated MLPs, RMSNorm, tied or untied
heads) and for gradient checkpointing and the precision's casts. Allocator rounding, fragmentation and the
CUDA context (a few hundred MB) are not included; compare it with `torch.cuda.max_memory_allocated`, not
with nvidia-smi.

A preference objective's step is counted as it runs (`Objective.step_shape`): a batch of B pairs trains 2B
sequences (chosen and rejected in one forward), and the reference pass, B pairs' 2B sequences without
gradients, runs while their activations are held; KTO trains B completions and runs its KL and reference
passes without gradients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lit_lora.constants import MB
from lit_lora.estimate.dry_run import CONVERTED, fake_step
from lit_lora.objectives.base import StepShape
from lit_lora.pretrained.quantization import dequantized_bytes, is_quantized_weight, quantized_weight_bytes


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int  # bytes: parameters and buffers
    gradients: int  # bytes: one gradient per trainable parameter
    optimizer: int  # bytes: AdamW exp_avg + exp_avg_sq + step
    activations: int  # bytes, from the dry run: saved for backward at the peak, the loss's buffers, temporaries
    batch_size: int
    block_size: int
    precision: str
    gradient_checkpointing: bool
    shape: StepShape = StepShape()  # what a step runs per batch row

    @property
    def static(self) -> int:
        return self.weights + self.gradients + self.optimizer

    @property
    def total(self) -> int:
        return self.static + self.activations

    def lines(self) -> list[str]:
        gc = "on" if self.gradient_checkpointing else "off"
        return [
            f"peak training memory, estimated: {self.total / MB:,.1f} MB "
            f"(batch {self.batch_size} x block {self.block_size}, {self.precision}, gradient checkpointing {gc}"
            + (f"; {self.shape.description})" if self.shape.description else ")"),
            f"  weights {self.weights / MB:,.1f} MB + LoRA gradients {self.gradients / MB:,.1f} MB + "
            f"AdamW state {self.optimizer / MB:,.1f} MB (exact) + activations {self.activations / MB:,.1f} MB",
        ]


def _unique(tensors: Any) -> list[torch.Tensor]:
    seen: set[int] = set()
    out = []
    for t in tensors:
        if id(t) not in seen:  # tied weights (GPT-2's lm_head is wte) are held once
            seen.add(id(t))
            out.append(t)
    return out


def _bytes(t: torch.Tensor, precision: str) -> int:
    dtype = CONVERTED.get(precision, t.dtype) if t.is_floating_point() else t.dtype
    return t.numel() * dtype.itemsize


def static_bytes(model: Any, precision: str = "32-true") -> tuple[int, int, int]:
    """(weights, gradients, optimizer state) in bytes, exactly as training with AdamW will hold them; a
    quantized weight counts its packed values and quantization state."""
    params = _unique(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    weights = sum(quantized_weight_bytes(t) if is_quantized_weight(t) else _bytes(t, precision)
                  for t in params + _unique(model.buffers()))
    grads = sum(_bytes(p, precision) for p in trainable)
    # AdamW: exp_avg and exp_avg_sq like the parameter, and a scalar `step` (float64 only if that is the default).
    step = 8 if torch.get_default_dtype() == torch.float64 else 4
    optimizer = 2 * grads + step * len(trainable)
    return weights, grads, optimizer


def estimate_training_memory(
    model: Any,
    batch_size: int,
    block_size: int,
    precision: str = "32-true",
    gradient_checkpointing: bool = False,
    device_type: str = "cuda",
    shape: StepShape = StepShape(),
) -> MemoryEstimate:
    """Estimate peak memory of one training step of `model` (the PEFT-wrapped model, as LitLora builds it);
    `shape`: what the objective runs per batch row (`Objective.step_shape()`), SFT's by default."""
    precision = str(precision)
    weights, grads, optimizer = static_bytes(model, precision)
    step = fake_step(model, batch_size, block_size, precision, gradient_checkpointing, device_type, shape=shape)
    # A quantized model's copy is full precision: its activations are the same, and each quantized layer
    # holds its weight dequantized while it multiplies (one layer at a time).
    activations = max(0, step.peak_bytes - step.weight_bytes - grads) + dequantized_bytes(model)
    return MemoryEstimate(
        weights, grads, optimizer, activations, batch_size, block_size, precision, gradient_checkpointing, shape
    )
