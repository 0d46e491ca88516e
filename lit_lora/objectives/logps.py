"""Per-sequence log-probabilities for the preference objectives (objectives/preference.py, objectives/kto.py),
from the same chunked output head as the SFT loss (objectives/nll.py): the float32 logits of a batch are never
held whole, whatever its length and vocabulary.

A sequence's log-probability is the sum, over its completion tokens (labels other than -100), of the
log-probability the model gives each token after the tokens before it. The reference policy is the same
network with the LoRA adapter switched off, or switched to a frozen adapter named "ref" when there is one
(TRL's name for the copy of the adapter a run starts from): never a second copy of the base weights.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, NamedTuple, Optional

import torch
import torch.nn.functional as F

from lit_lora.constants import IGNORE_INDEX
from lit_lora.errors import LitLoraError
from lit_lora.objectives.nll import head_token_nll, next_token_targets, output_head

# The adapter a reference pass switches to when the model holds one under this name (TRL's convention).
REFERENCE_ADAPTER = "ref"


class SequenceLogps(NamedTuple):
    """What one forward gives, one value per row (B,): the completion's summed log-probability and its
    token count, and the summed NLL and count of every attended token (prompt included: ORPO's NLL term)."""

    logps: torch.Tensor
    tokens: torch.Tensor
    all_nll: torch.Tensor
    all_tokens: torch.Tensor


def sequence_logps(model: Any, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor],
                   labels: torch.Tensor) -> SequenceLogps:
    """Each row's completion log-probability (labels other than -100 count) and the NLL of all its attended
    tokens, from one forward. input_ids, attention_mask, labels: (B, T), right-padded."""
    attended = input_ids if attention_mask is None else input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
    nll = token_nll_values(model, input_ids, attention_mask, attended)  # (B, T) float32, 0 where nothing counts
    completion = next_token_targets(labels) != IGNORE_INDEX
    counted = next_token_targets(attended) != IGNORE_INDEX
    return SequenceLogps(-(nll * completion).sum(-1), completion.sum(-1), (nll * counted).sum(-1), counted.sum(-1))


def token_nll_values(model: Any, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor],
                     labels: torch.Tensor) -> torch.Tensor:
    """The next-token NLL at each position, (B, T) float32, 0 where the next label is -100: the chunked head
    where the model's family allows (`output_head`), else the full logits."""
    parts = output_head(model)[0]
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
    if parts is None:
        logits = model(**inputs).logits
        targets = next_token_targets(labels)
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX,
                               reduction="none").view(labels.shape)
    hidden = parts.backbone(**inputs)[0]
    return head_token_nll(hidden, parts.head, labels, parts.softcap)


def concatenated(batch: dict[str, Any], first: str, second: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """input_ids, attention_mask, labels of the `first` rows then the `second` rows ("chosen", "rejected"),
    right-padded to the longer: both run in one forward, as TRL runs them."""
    length = max(batch[f"{first}_input_ids"].shape[1], batch[f"{second}_input_ids"].shape[1])

    def joined(key: str, fill: int) -> torch.Tensor:
        parts = [batch[f"{side}_{key}"] for side in (first, second)]
        return torch.cat([F.pad(p, (0, length - p.shape[1]), value=fill) for p in parts])

    ids, labels = joined("input_ids", 0), joined("labels", IGNORE_INDEX)
    mask = torch.cat([_mask(batch, side, length) for side in (first, second)])
    return ids, mask, labels


def _mask(batch: dict[str, Any], side: str, length: int) -> torch.Tensor:
    ids = batch[f"{side}_input_ids"]
    mask = batch.get(f"{side}_attention_mask")
    mask = torch.ones_like(ids) if mask is None else mask
    return F.pad(mask, (0, length - mask.shape[1]), value=0)


@contextmanager
def reference_policy(model: Any) -> Iterator[None]:
    """Run the reference policy inside: no gradients, the LoRA adapter off (or the "ref" adapter on)."""
    peft_config = getattr(model, "peft_config", None)
    if peft_config is None or not hasattr(model, "disable_adapter"):
        raise LitLoraError(f"the reference policy needs a PEFT model whose adapter can be switched off; got "
                           f"{type(model).__name__} (or give the batches precomputed ref_*_logps)")
    with torch.no_grad():
        if REFERENCE_ADAPTER in peft_config:
            # PEFT's set_adapter marks the adapter it activates trainable and the others frozen: put back
            # exactly which weights train, so the optimizer's parameters are the same after the pass.
            previous, trainable = model.active_adapter, {id(p) for p in model.parameters() if p.requires_grad}
            model.set_adapter(REFERENCE_ADAPTER)
            try:
                yield
            finally:
                model.set_adapter(previous)
                for p in model.parameters():
                    if p.requires_grad != (id(p) in trainable):
                        p.requires_grad_(id(p) in trainable)
        else:
            with model.disable_adapter():
                yield


def reference_columns(model: Any, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The reference's summed log-probabilities of a batch's completions, (B,) each, under the names the
    objectives read them by when a batch carries them: `ref_chosen_logps` and `ref_rejected_logps` of a
    paired batch (one forward, as `Preference` runs them), `ref_logps` of an unpaired one. KTO's mismatched
    `kl_*` pairs are left out: a batch builds them from its own rows, so they change with every batch."""
    with reference_policy(model):
        if "chosen_input_ids" in batch:
            chosen, rejected = sequence_logps(model, *concatenated(batch, "chosen", "rejected")).logps.chunk(2)
            return {"ref_chosen_logps": chosen, "ref_rejected_logps": rejected}
        logps = sequence_logps(model, batch["completion_input_ids"], batch.get("completion_attention_mask"),
                               batch["completion_labels"]).logps
        return {"ref_logps": logps}


def world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """`value` summed over the processes of a distributed run (itself otherwise)."""
    if world_size() > 1:
        value = value.clone()
        torch.distributed.all_reduce(value)
    return value
