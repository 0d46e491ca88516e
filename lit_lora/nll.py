"""The next-token negative log-likelihood of a causal LM: the loss training and evaluation compute
(model/loss.py) and the one the memory estimate's dry run replays (measure/dry_run.py), so both run the
same kernels.

The (batch x block x vocab) logits are never held whole. The output head and the cross-entropy run on
`LOSS_CHUNK_TOKENS` positions at a time, each chunk under activation checkpointing, so its logits are
recomputed in the backward pass instead of kept (GPT-2 small at 8 x 512: 4,096 x 50,257 logits are 823 MB
in float32, and the loss holds three such tensors). The idea is litgpt's chunked cross-entropy and
torchtune's chunked output loss; the code is ours because neither ships as a function of an `nn.Module`
head. On CUDA, Liger-Kernel's fused linear cross-entropy does the same in one kernel when it is installed
(`pip install "lit-lora[liger]"`) and the head is a plain linear layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from lit_lora.constants import IGNORE_INDEX

# Positions per chunk of the output head and loss; the memory estimate's dry run runs the same chunks.
# 256: a chunk's logits, their float32 copy and its gradient are 150 MB at Qwen's 152k vocabulary.
LOSS_CHUNK_TOKENS = 256

# Families whose logits are `head(last hidden state)`, soft-capped by `final_logit_softcapping` if set
# (read in their modeling code). Others get the full head: one that scales its logits, say, would
# otherwise train on a different loss.
CHUNKED_HEAD_FAMILIES = frozenset(
    {"gpt2", "gpt_neo", "gpt_neox", "opt", "llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma2"}
)

# Families whose forward turns per-document `position_ids` into a block-diagonal mask when no attention_mask
# is given (transformers' `find_packed_sequence_indices`); tests/test_packing.py checks each one.
POSITION_MASK_FAMILIES = frozenset(
    {"gpt2", "gpt_neo", "gpt_neox", "llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma2"}
)


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token negative log-likelihood and the number of predicted tokens, from full logits.

    logits: (B, T, V); labels: (B, T), -100 where nothing is predicted (prompt, padding).
    """
    targets = next_token_targets(labels)
    nll = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX,
                          reduction="sum")
    return nll, (targets != IGNORE_INDEX).sum()


def next_token_targets(labels: torch.Tensor) -> torch.Tensor:
    # Shift the labels, not the logits: slicing (B, T, V) logits copies them, and their gradient, on every
    # step. Position t predicts labels[:, t + 1]; the last position predicts nothing (-100).
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)


@dataclass(frozen=True)
class OutputHead:
    """A causal LM split where the loss needs it: hidden states from `backbone`, logits from `head`."""

    backbone: Any  # the transformers base model (GPT2Model, LlamaModel, ...), LoRA layers inside
    head: Any  # the output embedding module, as the model calls it (PEFT's wrapper if lm_head trains)
    softcap: Optional[float]  # Gemma 2's final logit soft-capping, None for the others


def output_head(model: Any) -> tuple[Optional[OutputHead], Optional[str]]:
    """`model`'s backbone and head for the chunked loss, or (None, why) when its head is not one we know."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    model_type = getattr(base.config, "model_type", None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    backbone = getattr(base, getattr(base, "base_model_prefix", ""), None)
    if model_type not in CHUNKED_HEAD_FAMILIES or head is None or not isinstance(backbone, torch.nn.Module):
        return None, (f"lit_lora: the loss computes the full logits for model type {model_type!r} (the "
                      "chunked output head is checked for gpt2, llama and the README's other families only)")
    return OutputHead(backbone, head, getattr(base.config, "final_logit_softcapping", None)), None


def document_inputs(model: Any, position_ids: Optional[torch.Tensor]) -> dict[str, torch.Tensor]:
    """What a packed batch passes the model so its documents attend only to themselves: `position_ids`
    (restarting at 0 per document) for the families whose forward builds the block-diagonal mask from them,
    and for the others a 4D additive mask of our own as well (OPT builds its mask without them)."""
    if position_ids is None:
        return {}
    if getattr(getattr(model, "config", None), "model_type", None) in POSITION_MASK_FAMILIES:
        return {"position_ids": position_ids}
    document = (torch.diff(position_ids, dim=-1, prepend=position_ids[:, :1] - 1) != 1).cumsum(-1)
    t = position_ids.shape[-1]
    causal = torch.ones(t, t, dtype=torch.bool, device=position_ids.device).tril()
    allowed = (document[:, :, None] == document[:, None, :]) & causal
    weight = model.get_input_embeddings().weight
    dtype = torch.get_autocast_dtype(weight.device.type) if torch.is_autocast_enabled(weight.device.type) else weight.dtype
    mask = torch.zeros(allowed.shape, dtype=dtype, device=position_ids.device).masked_fill(~allowed, torch.finfo(dtype).min)
    return {"position_ids": position_ids, "attention_mask": mask[:, None]}


def model_nll(model: Any, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor], labels: torch.Tensor,
              chunked: bool = True, fused: bool = True, position_ids: Optional[torch.Tensor] = None,
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token NLL of `model` (a causal LM, PEFT-wrapped or not) on a batch, and its target count.

    Chunked when `model`'s head allows (`output_head`); `chunked=False` computes the full logits (the FLOP
    count does: recomputing a chunk is overhead, not model work). `fused=False` never uses Liger's kernel
    (the dry run: Triton cannot run on fake tensors). `position_ids`: a packed batch's (`document_inputs`).
    """
    parts = output_head(model)[0] if chunked else None
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, **document_inputs(model, position_ids)}
    if parts is None:
        return token_nll(model(**inputs, use_cache=False).logits, labels)
    hidden = parts.backbone(**inputs, use_cache=False)[0]
    return chunked_head_nll(hidden, parts.head, labels, parts.softcap, fused=fused)


def chunked_head_nll(hidden: torch.Tensor, head: Any, labels: torch.Tensor, softcap: Optional[float] = None,
                     chunk: Optional[int] = None, fused: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """`token_nll(head(hidden), labels)` without the full logits. hidden: (B, T, H); labels: (B, T).

    Each chunk of `chunk` positions (default `LOSS_CHUNK_TOKENS`) is recomputed in the backward pass.
    """
    chunk = chunk or LOSS_CHUNK_TOKENS
    targets = next_token_targets(labels).flatten()
    flat = hidden.flatten(0, 1)
    nll = _liger(flat, head, targets, softcap) if fused else None
    if nll is not None:
        return nll, (targets != IGNORE_INDEX).sum()
    # One chunk holds what the full head would: nothing to recompute.
    recompute = torch.is_grad_enabled() and flat.shape[0] > chunk
    total = flat.new_zeros((), dtype=torch.float32)
    for start in range(0, flat.shape[0], chunk):
        args = (flat[start:start + chunk], targets[start:start + chunk], head, softcap)
        # Non-reentrant: keeps the autocast state and works inside the model's own checkpointing.
        total = total + (checkpoint(_chunk_nll, *args, use_reentrant=False) if recompute else _chunk_nll(*args))
    return total, (targets != IGNORE_INDEX).sum()


def _chunk_nll(hidden: torch.Tensor, targets: torch.Tensor, head: Any, softcap: Optional[float]) -> torch.Tensor:
    logits = head(hidden)
    if softcap is not None:  # as Gemma 2's forward does it, in the logits' dtype
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")


def _liger(hidden: torch.Tensor, head: Any, targets: torch.Tensor, softcap: Optional[float]) -> Optional[torch.Tensor]:
    """Liger-Kernel's fused linear cross-entropy (summed), or None where it does not apply: not CUDA, not
    installed, or a head that is not a plain `nn.Linear` (a LoRA- or PEFT-wrapped head runs its own code)."""
    if hidden.device.type != "cuda" or type(head) is not torch.nn.Linear:
        return None
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
    except ImportError:
        return None
    weight, bias = head.weight, head.bias
    if torch.is_autocast_enabled("cuda"):  # the kernel takes one dtype; autocast would cast the head's matmul
        dtype = torch.get_autocast_dtype("cuda")
        hidden, weight = hidden.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    else:
        hidden = hidden.to(weight.dtype)
    return liger_fused_linear_cross_entropy(hidden, weight, targets, bias, ignore_index=IGNORE_INDEX,
                                            reduction="sum", softcap=softcap).float()
