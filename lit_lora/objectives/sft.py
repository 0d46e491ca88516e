"""`SupervisedNll`: supervised fine-tuning's objective, the default. The loss is the next-token NLL summed
over the target tokens (labels other than -100) and divided by the target tokens of the whole optimizer
step, every micro-batch of every process (`step_target_tokens`, carried by each batch); evaluation is the
token-weighted mean over the whole split and its perplexity."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torchmetrics import SumMetric

from lit_lora.objectives.base import Objective, StepLayout
from lit_lora.objectives.nll import model_nll, step_loss


class SupervisedNll(Objective):
    """Next-token NLL on `labels`: what `fit` trains unless another objective is chosen."""

    batch_keys = ("input_ids", "labels")

    def __init__(self) -> None:
        super().__init__()
        self.eval_nll = SumMetric()
        self.eval_tokens = SumMetric()
        self._step_nll: Optional[torch.Tensor] = None  # this process's NLL and target count of the step so far
        self._step_n: Optional[torch.Tensor] = None

    def nll(self, model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed NLL, target tokens) of a batch."""
        return model_nll(model, batch["input_ids"], batch.get("attention_mask"), batch["labels"],
                         position_ids=batch.get("position_ids"))

    def training_loss(self, model: Any, batch: dict[str, Any], first_of_step: bool,
                      layout: StepLayout) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        nll, n = self.nll(model, batch)
        step_tokens = batch.get("step_target_tokens")
        split = layout.accumulate > 1 or layout.world > 1
        loss = step_loss(nll, n, step_tokens if split else None, *layout)
        # Logged: this process's token mean over the step's micro-batches so far (all of them at the last
        # one, which is the value Lightning logs).
        if first_of_step or self._step_nll is None:
            self._step_nll, self._step_n = nll.detach(), n
        else:
            self._step_nll, self._step_n = self._step_nll + nll.detach(), self._step_n + n
        return loss, {"loss": self._step_nll / self._step_n.clamp(min=1)}

    def update_eval(self, model: Any, batch: dict[str, Any]) -> None:
        nll, n = self.nll(model, batch)
        self.eval_nll.update(nll)
        self.eval_tokens.update(n)

    def compute_eval(self) -> dict[str, torch.Tensor]:
        # Token-weighted: exp(total NLL / total tokens), not a mean of per-batch values.
        nll, n = self.eval_nll.compute(), self.eval_tokens.compute()
        self.eval_nll.reset()
        self.eval_tokens.reset()
        if n == 0:
            return {}
        loss = nll / n
        return {"loss": loss, "ppl": torch.exp(loss)}
