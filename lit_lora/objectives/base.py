"""`Objective`: the contract between a batch and the loss a step backpropagates.

`LitLora` owns the model, the optimizer and the checkpoint; the objective owns the arithmetic of one step.
It reads only its batch (the keys it names in `batch_keys`) and the step's layout (`StepLayout`), never the
data module, so a new objective plugs in without touching the training loop or the SFT path.
"""

from __future__ import annotations

import inspect
from typing import Any, NamedTuple

import torch

from lit_lora.errors import LitLoraError


class StepLayout(NamedTuple):
    """How one optimizer step is split: micro-batches accumulated per process, and processes."""

    accumulate: int
    world: int


class StepShape(NamedTuple):
    """What one training step runs per batch row, as the memory estimate counts it: the sequences of the
    forward that trains (their activations are held until the backward), and those of the largest forward
    without gradients that runs while they are held (the reference pass; its logits chunk and hidden states
    come and go, nothing is stored). SFT's: one sequence, nothing else."""

    sequences: int = 1
    no_grad_sequences: int = 0
    description: str = ""  # how the estimate's line says it ("DPO: 2 sequences per row + reference pass")


class Objective(torch.nn.Module):
    """What a step computes from a batch. A subclass sets `batch_keys` and implements the three methods.

    It is an `nn.Module` so its metric states move to the model's device and sum across processes
    (torchmetrics); it holds no weights of its own, and checkpoints keep none of its state.
    """

    batch_keys: tuple[str, ...] = ()

    @property
    def needs_reference(self) -> bool:
        """Whether the loss compares the policy with a reference policy (the model training starts from).
        When it does and training starts from an adapter, `LitLora` keeps a frozen copy of that adapter."""
        return False

    def check_batch(self, batch: dict[str, Any]) -> None:
        """One line naming the keys this objective needs that a batch lacks."""
        missing = [k for k in self.batch_keys if k not in batch]
        if missing:
            raise LitLoraError(f"the {type(self).__name__} objective needs batches with {', '.join(missing)}; the data "
                               f"gave {', '.join(sorted(batch))}")

    def batch_size(self, batch: dict[str, Any]) -> int:
        """The rows of a batch, the weight of its logged training metrics: those of the first batch key."""
        return batch[self.batch_keys[0]].shape[0]

    def step_shape(self, reference_logps: bool = False) -> StepShape:
        """What a training step runs per batch row (`StepShape`), for the memory estimate.
        `reference_logps`: the batches carry the reference's log-probabilities, so no reference pass runs."""
        return StepShape()

    def training_loss(self, model: Any, batch: dict[str, Any], first_of_step: bool,
                      layout: StepLayout) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(the loss to backpropagate for this micro-batch, metrics to log as `train_<name>`).
        `first_of_step`: the first micro-batch of an optimizer step on this process."""
        raise NotImplementedError

    def update_eval(self, model: Any, batch: dict[str, Any]) -> None:
        """Add a validation or test batch to the running sums."""
        raise NotImplementedError

    def compute_eval(self) -> dict[str, torch.Tensor]:
        """The metrics over every batch since the last call (`loss` first, logged as `val_loss`, ...), and
        reset; empty when no batch counted."""
        raise NotImplementedError

    def init_args(self) -> dict[str, Any]:
        """The constructor's arguments, as plain values, read from the attributes of the same names: how a
        checkpoint records this objective. Override it when an argument is kept under another name."""
        names = inspect.signature(type(self).__init__).parameters
        return {name: getattr(self, name) for name in names if name != "self" and hasattr(self, name)}
