"""Running sums for objectives whose metrics are means over rows (pairs, examples) or tokens: one set for the
micro-batches of the current optimizer step (what `train_<name>` logs) and one for a whole evaluation split
(torchmetrics `SumMetric`s, summed across processes), so a metric is the weighted mean over everything
counted, never a mean of per-batch means."""

from __future__ import annotations

from typing import Optional

import torch
from torchmetrics import SumMetric


class StepSums:
    """Sums over the micro-batches of one optimizer step on this process, restarted at its first one."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}

    def add(self, values: dict[str, torch.Tensor], first_of_step: bool) -> dict[str, torch.Tensor]:
        if first_of_step:
            self.sums = {}
        for name, value in values.items():
            value = value.detach()
            self.sums[name] = value if name not in self.sums else self.sums[name] + value
        return self.sums


class SplitSums(torch.nn.Module):
    """Sums over every batch of an evaluation split, named by the keys given to `update`."""

    def __init__(self, names: tuple[str, ...]) -> None:
        super().__init__()
        # ModuleDict keys cannot hold "/" or ".": the metric names are kept apart from the module names.
        self.names = names
        self.metrics = torch.nn.ModuleDict({f"m{i}": SumMetric() for i in range(len(names))})

    def update(self, values: dict[str, torch.Tensor]) -> None:
        for i, name in enumerate(self.names):
            self.metrics[f"m{i}"].update(values[name].detach().float())

    def compute(self) -> Optional[dict[str, torch.Tensor]]:
        """The sums, and reset; None when nothing counted (the first name is the count of rows)."""
        sums = {name: self.metrics[f"m{i}"].compute() for i, name in enumerate(self.names)}
        for metric in self.metrics.values():
            metric.reset()
        return None if float(sums[self.names[0]]) == 0 else sums


def mean_or_nan(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """total / count, NaN where nothing was counted (no host sync: training logs it every step)."""
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, float("nan")))
