"""Parameter counts and the one-line model summary printed at the start of `fit`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ParamCounts:
    base: int  # parameters of the model before LoRA (tied weights counted once)
    trainable: int
    total: int

    @property
    def frozen(self) -> int:
        return self.total - self.trainable

    @property
    def trainable_pct(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0


def count_parameters(model: Any) -> ParamCounts:
    """Counts of a PEFT-wrapped model; `parameters()` yields a tied tensor once, as GPT-2's lm_head is."""
    total = trainable = adapter = 0
    for name, p in model.named_parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
        if "lora_" in name or "modules_to_save" in name:
            adapter += p.numel()
    return ParamCounts(base=total - adapter, trainable=trainable, total=total)


def format_counts(c: ParamCounts) -> str:
    return (
        f"{c.base:,} base, {c.trainable:,} trainable, {c.total:,} total, "
        f"{c.trainable_pct:.4f}% trainable"
    )
