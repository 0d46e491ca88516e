"""`Preference`: paired preference tuning (DPO and its relatives) with TRL's names for losses, settings and
metrics, so a TRL recipe carries over.

    --model.objective lit_lora.objectives.preference.Preference --model.objective.init_args.beta 0.1

Each row of a batch is a prompt with a chosen and a rejected completion (the keys of `batch_keys`; labels are
-100 on the prompt and the padding). Chosen and rejected run in one forward, padded to the longer. The
losses, with c and r a pair's chosen and rejected completions, log p their summed log-probabilities under
the policy, log p_ref under the reference (the adapter switched off, the frozen "ref" adapter of a run
started from an adapter, or the batch's `ref_chosen_logps` / `ref_rejected_logps`), |c| their token counts, and d = (log p(c) - log p_ref(c)) - (log p(r) - log p_ref(r)):

- "sigmoid" (DPO): -(1 - label_smoothing) log σ(beta d) - label_smoothing log σ(-beta d). With label_smoothing
  > 0 this is conservative DPO, as TRL's DPOTrainer computed it before 1.0 and its CPOTrainer still does (TRL
  1.16's DPOTrainer ignores label_smoothing for "sigmoid").
- "ipo": (d_c / |c| - d_r / |r| - 1 / (2 beta))², each log-ratio divided by its completion's tokens, as TRL.
- "hinge": max(0, 1 - beta d).
- "orpo" (TRL's ORPOTrainer; its `beta` is the paper's lambda): the chosen row's NLL (a token mean over the
  prompt and the completion, as TRL) - beta log σ(log odds(c) - log odds(r)), with the token-mean
  log-probabilities a(c) = log p(c) / |c| and log odds(c) = a(c) - log(1 - exp(a(c))). No reference.
- "simpo" (TRL's CPOTrainer with loss_type="simpo"): the sigmoid loss on beta (a(c) - a(r)) - simpo_gamma, plus
  cpo_alpha times the chosen completions' token-mean NLL (0 here by default: SimPO proper; TRL's CPOConfig
  defaults to 1.0, which is CPO's). No reference.

Metrics, TRL's names: rewards/chosen and rewards/rejected (beta times the log-ratio; for orpo and simpo beta
times a), rewards/accuracies (the share of pairs whose chosen reward is higher), rewards/margins, logps/chosen
and logps/rejected (summed, or a for orpo and simpo). Training divides by the optimizer step's pairs
(`step_target_tokens` counts pairs), so accumulation and DDP give one big batch's gradient. ORPO's and
SimPO's NLL term is a token mean within each micro-batch, as TRL's; with equal micro-batches it is the step's.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F

from lit_lora.errors import LitLoraError
from lit_lora.objectives.base import Objective, StepLayout, StepShape
from lit_lora.objectives.logps import concatenated, reference_policy, sequence_logps
from lit_lora.objectives.nll import step_loss
from lit_lora.objectives.sums import SplitSums, StepSums

LOSS_TYPES = ("sigmoid", "ipo", "hinge", "orpo", "simpo")
REFERENCE_LOSSES = frozenset({"sigmoid", "ipo", "hinge"})
NAMES = {"sigmoid": "DPO", "ipo": "IPO", "hinge": "hinge", "orpo": "ORPO", "simpo": "SimPO"}
METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
           "logps/rejected")


class Preference(Objective):
    """Paired preference loss on chosen and rejected completions; `loss_type` picks it (TRL's names)."""

    batch_keys = ("chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels")

    def __init__(self, loss_type: Literal["sigmoid", "ipo", "hinge", "orpo", "simpo"] = "sigmoid",
                 beta: float = 0.1, label_smoothing: float = 0.0, simpo_gamma: float = 0.5,
                 cpo_alpha: float = 0.0) -> None:
        """
        Args:
            loss_type: "sigmoid" (DPO), "ipo", "hinge", "orpo" or "simpo".
            beta: TRL's beta: DPO's temperature (IPO's tau), ORPO's lambda, SimPO's beta.
            label_smoothing: For "sigmoid" and "simpo": the assumed probability that a pair's labels are
                flipped (conservative DPO), in [0, 0.5).
            simpo_gamma: SimPO's target reward margin (TRL's CPOConfig name).
            cpo_alpha: For "simpo": the weight of the chosen completions' NLL (TRL's CPOConfig name).
        """
        super().__init__()
        if loss_type not in LOSS_TYPES:
            raise LitLoraError(f"loss_type={loss_type!r} is not a preference loss (expected one of "
                               f"{', '.join(LOSS_TYPES)})")
        if not beta > 0:
            raise LitLoraError(f"beta={beta} must be positive")
        if not 0 <= label_smoothing < 0.5:
            raise LitLoraError(f"label_smoothing={label_smoothing} must lie in [0, 0.5)")
        self.loss_type, self.beta, self.label_smoothing = loss_type, beta, label_smoothing
        self.simpo_gamma, self.cpo_alpha = simpo_gamma, cpo_alpha
        # The weight of the chosen rows' token-mean NLL in the loss.
        self.nll_weight = {"orpo": 1.0, "simpo": cpo_alpha}.get(loss_type, 0.0)
        self.step_sums = StepSums()
        self.eval_sums = SplitSums(("pairs", "loss", "nll", "nll_tokens", *METRICS))

    @property
    def needs_reference(self) -> bool:
        return self.loss_type in REFERENCE_LOSSES

    def step_shape(self, reference_logps: bool = False) -> StepShape:
        # Chosen and rejected in one forward; the reference's forward of the same rows runs without gradients
        # while the policy's activations wait for the backward.
        reference = self.needs_reference and not reference_logps
        return StepShape(2, 2 if reference else 0, f"{NAMES[self.loss_type]}: 2 sequences per row"
                         + (" + reference pass" if reference else ", no reference pass"))

    def pair_values(self, model: Any, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Per pair (B,): `losses` and the metrics; per batch: the chosen NLL term's `nll` and `nll_tokens`."""
        ids, mask, labels = concatenated(batch, "chosen", "rejected")
        out = sequence_logps(model, ids, mask, labels)
        b = batch["chosen_input_ids"].shape[0]
        logps_c, logps_r = out.logps[:b], out.logps[b:]
        n_c, n_r = out.tokens[:b].clamp(min=1), out.tokens[b:].clamp(min=1)
        nll, nll_tokens = out.logps.new_zeros(()), out.tokens.new_zeros(())
        if self.loss_type in REFERENCE_LOSSES:
            ref_c, ref_r = self.reference_logps(model, batch, ids, mask, labels)
            ratio_c, ratio_r = logps_c - ref_c, logps_r - ref_r
            delta = ratio_c - ratio_r
            if self.loss_type == "sigmoid":
                losses = self.smoothed_sigmoid(self.beta * delta)
            elif self.loss_type == "hinge":
                losses = torch.relu(1 - self.beta * delta)
            else:  # ipo
                losses = (ratio_c / n_c - ratio_r / n_r - 1 / (2 * self.beta)) ** 2
            reward_c, reward_r, shown_c, shown_r = self.beta * ratio_c, self.beta * ratio_r, logps_c, logps_r
        else:
            mean_c, mean_r = logps_c / n_c, logps_r / n_r
            if self.loss_type == "orpo":
                log_odds = (mean_c - mean_r) - (log1mexp(mean_c) - log1mexp(mean_r))
                losses = -self.beta * F.logsigmoid(log_odds)
                nll, nll_tokens = out.all_nll[:b].sum(), out.all_tokens[:b].sum()  # prompt included, as TRL
            else:  # simpo
                losses = self.smoothed_sigmoid(self.beta * (mean_c - mean_r) - self.simpo_gamma)
                nll, nll_tokens = -logps_c.sum(), out.tokens[:b].sum()
            reward_c, reward_r, shown_c, shown_r = self.beta * mean_c, self.beta * mean_r, mean_c, mean_r
        reward_c, reward_r = reward_c.detach(), reward_r.detach()
        return {"losses": losses, "nll": nll, "nll_tokens": nll_tokens,
                "rewards/chosen": reward_c, "rewards/rejected": reward_r,
                "rewards/accuracies": (reward_c > reward_r).float(), "rewards/margins": reward_c - reward_r,
                "logps/chosen": shown_c.detach(), "logps/rejected": shown_r.detach()}

    def smoothed_sigmoid(self, x: torch.Tensor) -> torch.Tensor:
        return -(1 - self.label_smoothing) * F.logsigmoid(x) - self.label_smoothing * F.logsigmoid(-x)

    def reference_logps(self, model: Any, batch: dict[str, Any], ids: torch.Tensor, mask: torch.Tensor,
                        labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference's summed log-probabilities of the chosen and rejected completions: the batch's
        precomputed ones, else one no-grad forward with the adapter off."""
        if "ref_chosen_logps" in batch and "ref_rejected_logps" in batch:
            return batch["ref_chosen_logps"].float(), batch["ref_rejected_logps"].float()
        with reference_policy(model):
            logps = sequence_logps(model, ids, mask, labels).logps
        return logps.chunk(2)

    def totals(self, values: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(the batch's summed loss, its pairs): the pair losses plus the NLL term's token mean once per pair."""
        pairs = torch.tensor(values["losses"].shape[0], device=values["losses"].device)
        total = values["losses"].sum()
        if self.nll_weight:
            total = total + self.nll_weight * values["nll"] / values["nll_tokens"].clamp(min=1) * pairs
        return total, pairs

    def training_loss(self, model: Any, batch: dict[str, Any], first_of_step: bool,
                      layout: StepLayout) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        values = self.pair_values(model, batch)
        total, pairs = self.totals(values)
        split = layout.accumulate > 1 or layout.world > 1
        loss = step_loss(total, pairs, batch.get("step_target_tokens") if split else None, *layout)
        # Logged: this process's pair means over the step's micro-batches so far.
        sums = self.step_sums.add({"pairs": pairs, "loss": total, **{m: values[m].sum() for m in METRICS}},
                                  first_of_step)
        n = sums["pairs"].clamp(min=1)
        return loss, {"loss": sums["loss"] / n, **{m: sums[m] / n for m in METRICS}}

    def update_eval(self, model: Any, batch: dict[str, Any]) -> None:
        values = self.pair_values(model, batch)
        pairs = torch.tensor(values["losses"].shape[0], device=values["losses"].device)
        self.eval_sums.update({"pairs": pairs, "loss": values["losses"].sum(), "nll": values["nll"],
                               "nll_tokens": values["nll_tokens"], **{m: values[m].sum() for m in METRICS}})

    def compute_eval(self) -> dict[str, torch.Tensor]:
        # Pair-weighted over the whole split (the NLL term token-weighted). TRL's evaluation loss is a mean of
        # per-batch means instead, which moves with the batch size when the last batch is short.
        sums = self.eval_sums.compute()
        if sums is None:
            return {}
        n = sums["pairs"]
        loss = sums["loss"] / n
        if self.nll_weight:
            loss = loss + self.nll_weight * sums["nll"] / sums["nll_tokens"].clamp(min=1)
        return {"loss": loss, **{m: sums[m] / n for m in METRICS}}


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stable on both sides of -log 2 (as TRL's ORPO computes it)."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))
