"""Training FLOPs per token of a LoRA-adapted model of any family, for model FLOP utilisation (MFU).

Counted on a dry run (estimate/dry_run.py) with torch's FlopCounterMode formulas: matmuls and attention as
the model's own kernels run them, 2 FLOPs per multiply-add, attention as full T x T products (no discount
for the causal mask). A frozen base saves what it saves: no weight gradient for frozen weights, no backward
at all for a matmul whose input needs no gradient. Per token, the count is a + b * T for sequences of T
tokens (b: attention), so one short dry run gives it for every length. Recomputation under gradient
checkpointing is overhead, not model work: MFU leaves it out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from lit_lora.estimate.dry_run import fake_step

_PROBE = 4  # tokens of the dry run FLOPs are read from


@dataclass(frozen=True)
class FlopsPerToken:
    forward: int
    backward: int

    @property
    def model(self) -> int:
        """Forward + backward: what MFU counts."""
        return self.forward + self.backward


def training_flops_per_token(model: Any, seq_len: int) -> FlopsPerToken:
    """FLOPs of one training step (no recomputation) divided by its tokens, for sequences of `seq_len`."""
    # The full head: the same FLOPs as the chunked loss, whose forward also runs the head's backward.
    step = fake_step(model, 1, _PROBE, chunked_loss=False)

    def per_token(linear: int, attention: int) -> int:
        return linear // _PROBE + attention * seq_len // _PROBE**2

    return FlopsPerToken(per_token(*step.forward), per_token(*step.backward))


def peak_flops(device: torch.device, precision: Any) -> Optional[float]:
    """The device's peak dense FLOP/s for the precision's matmul dtype (Lightning's table), None if unknown."""
    if device.type != "cuda":
        return None
    from lightning.fabric.utilities.throughput import get_available_flops

    flops = get_available_flops(device, compute_dtype(precision))
    return float(flops) if flops else None


def compute_dtype(precision: Any) -> torch.dtype:
    """The dtype matmuls run in under a Lightning precision setting ("bf16-mixed", "32-true", ...)."""
    p = str(precision)
    if p.startswith("bf16"):
        return torch.bfloat16
    if p.startswith("16"):
        return torch.float16
    if p.startswith("64"):
        return torch.float64
    return torch.float32
