"""`KTO`: unpaired preference tuning (Kahneman-Tversky Optimization) with TRL's KTOTrainer's names.

    --model.objective lit_lora.objectives.kto.KTO --model.objective.init_args.beta 0.1

Each row is a prompt with one completion and a `label` (True: desirable). With r = log p(y|x) - log p_ref(y|x)
(summed over the completion; the reference is the adapter switched off, the frozen "ref" adapter of a
run started from an adapter, or the batch's `ref_logps`) and z the
KL estimate, a row's loss is desirable_weight (1 - σ(beta (r - z))) when desirable and undesirable_weight
(1 - σ(beta (z - r))) when not, and the batch's loss is their mean over rows. z is TRL's: the mean over the
batch of log p(y'|x) - log p_ref(y'|x) on mismatched pairs (`kl_*`: each prompt with another row's
completion), without gradient, averaged over the processes in training, clamped at 0; 0 when the batch has no `kl_*`.
Like TRL's, z is estimated per micro-batch, so under accumulation it is not the whole step's.

Metrics, TRL's names: rewards/chosen and rewards/rejected (beta r, over the desirable and the undesirable rows),
rewards/margins (their difference), logps/chosen, logps/rejected, kl (z). Training divides by the optimizer
step's rows (`step_target_tokens` counts them), so accumulation and DDP weigh every row alike.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from lit_lora.errors import LitLoraError
from lit_lora.objectives.base import Objective, StepLayout, StepShape
from lit_lora.objectives.logps import all_reduce_sum, reference_policy, sequence_logps, world_size
from lit_lora.objectives.nll import step_loss
from lit_lora.objectives.sums import SplitSums, StepSums, mean_or_nan

# Sums kept per step and per split: the desirable ("chosen") and undesirable ("rejected") rows apart.
SUMS = ("rows", "loss", "chosen", "rejected", "rewards/chosen", "rewards/rejected", "logps/chosen",
        "logps/rejected", "kl")


class KTO(Objective):
    """KTO's loss on completions labelled desirable or undesirable (TRL's KTOTrainer, loss_type "kto")."""

    batch_keys = ("completion_input_ids", "completion_labels", "label")

    def __init__(self, beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> None:
        """
        Args:
            beta: How far the policy may move from the reference: higher, less far (TRL's KTOConfig.beta).
            desirable_weight: The weight of a desirable row's loss, to balance a set with fewer of them.
            undesirable_weight: The weight of an undesirable row's loss.
        """
        super().__init__()
        if not beta > 0:
            raise LitLoraError(f"beta={beta} must be positive")
        if desirable_weight < 0 or undesirable_weight < 0:
            raise LitLoraError(f"desirable_weight={desirable_weight} and undesirable_weight={undesirable_weight} "
                               "must not be negative")
        self.beta, self.desirable_weight, self.undesirable_weight = beta, desirable_weight, undesirable_weight
        self.step_sums = StepSums()
        self.eval_sums = SplitSums(SUMS)

    @property
    def needs_reference(self) -> bool:
        return True

    def step_shape(self, reference_logps: bool = False) -> StepShape:
        # The completions train; the KL rows' policy pass and the reference passes run without gradients,
        # one after another, each as many rows as the batch (with precomputed reference log-probabilities the
        # KL rows' policy and reference passes still run: a batch pairs its own rows).
        passes = "KL and KL-reference passes" if reference_logps else "KL and reference passes"
        return StepShape(1, 1, f"KTO: 1 sequence per row + {passes}")

    def row_values(self, model: Any, batch: dict[str, Any], training: bool) -> dict[str, torch.Tensor]:
        """Per row (B,): `losses`, rewards and log-probabilities; `kl`: the batch's z."""
        ids, mask, labels = (batch["completion_input_ids"], batch.get("completion_attention_mask"),
                             batch["completion_labels"])
        logps = sequence_logps(model, ids, mask, labels).logps
        kl = self.kl_estimate(model, batch, across_processes=training)
        if "ref_logps" in batch:
            ref = batch["ref_logps"].float()
        else:
            with reference_policy(model):
                ref = sequence_logps(model, ids, mask, labels).logps
        ratio = logps - ref
        desirable = batch["label"].bool()
        losses = torch.where(desirable, self.desirable_weight * (1 - torch.sigmoid(self.beta * (ratio - kl))),
                             self.undesirable_weight * (1 - torch.sigmoid(self.beta * (kl - ratio))))
        return {"losses": losses, "desirable": desirable, "rewards": self.beta * ratio.detach(),
                "logps": logps.detach(), "kl": kl}

    def kl_estimate(self, model: Any, batch: dict[str, Any], across_processes: bool) -> torch.Tensor:
        """z: the batch's mean policy-to-reference log-ratio on the mismatched pairs, >= 0, no gradient.
        `across_processes`: averaged over the processes of a distributed run, as TRL's training does. Only
        in training: validation splits its rows across the processes without padding, so one process may
        hold a batch more than another, and a collective in each batch would wait forever."""
        if "kl_input_ids" not in batch:
            return torch.zeros((), device=batch["completion_input_ids"].device)
        ids, mask, labels = batch["kl_input_ids"], batch.get("kl_attention_mask"), batch["kl_labels"]
        with torch.no_grad():
            policy = sequence_logps(model, ids, mask, labels).logps
        ref: Optional[torch.Tensor] = batch.get("ref_kl_logps")
        if ref is None:
            with reference_policy(model):
                ref = sequence_logps(model, ids, mask, labels).logps
        kl = (policy - ref.float()).mean()
        return (all_reduce_sum(kl) / world_size() if across_processes else kl).clamp(min=0)

    def sums(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        desirable, rows = values["desirable"], values["losses"].shape[0]
        both = {"rows": torch.tensor(rows, device=desirable.device), "loss": values["losses"].sum(),
                "chosen": desirable.sum(), "rejected": (~desirable).sum(), "kl": values["kl"] * rows}
        for name, side in (("chosen", desirable), ("rejected", ~desirable)):
            both[f"rewards/{name}"] = values["rewards"][side].sum()
            both[f"logps/{name}"] = values["logps"][side].sum()
        return both

    def training_loss(self, model: Any, batch: dict[str, Any], first_of_step: bool,
                      layout: StepLayout) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        values = self.row_values(model, batch, training=True)
        sums = self.sums(values)
        split = layout.accumulate > 1 or layout.world > 1
        loss = step_loss(values["losses"].sum(), sums["rows"], batch.get("step_target_tokens") if split else None,
                         *layout)
        # Logged: this process's means over the step's micro-batches so far; NaN for a side it has no row of.
        return loss, self.metrics(self.step_sums.add(sums, first_of_step))

    def metrics(self, sums: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        rows = sums["rows"].clamp(min=1)
        out = {"loss": sums["loss"] / rows}
        for name in ("chosen", "rejected"):
            out[f"rewards/{name}"] = mean_or_nan(sums[f"rewards/{name}"], sums[name])
            out[f"logps/{name}"] = mean_or_nan(sums[f"logps/{name}"], sums[name])
        out["rewards/margins"] = out["rewards/chosen"] - out["rewards/rejected"]
        out["kl"] = sums["kl"] / rows
        return out

    def update_eval(self, model: Any, batch: dict[str, Any]) -> None:
        self.eval_sums.update(self.sums(self.row_values(model, batch, training=False)))

    def compute_eval(self) -> dict[str, torch.Tensor]:
        # Row-weighted over the whole split; TRL's evaluation loss is a mean of per-batch means instead.
        sums = self.eval_sums.compute()
        if sums is None:
            return {}
        metrics = self.metrics(sums)
        # A side with no row over the whole split has no value (rather than NaN in the logs).
        return {k: v for k, v in metrics.items() if not torch.isnan(v)}
