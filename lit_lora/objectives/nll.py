"""The next-token negative log-likelihood of a causal LM: the loss the SFT objective trains and evaluates
(objectives/sft.py), the per-token values other objectives build on, and the one the memory estimate's dry
run replays (estimate/dry_run.py), so all run the same kernels.

The (batch x block x vocab) logits are never held whole. The output head and the cross-entropy run on
`LOSS_CHUNK_TOKENS` positions at a time (GPT-2 small at 8 x 512: 4,096 x 50,257 logits are 823 MB in
float32, and the full head's loss holds three such tensors). When training, each chunk's gradient with
respect to its hidden states (and to the head's weights, when the head trains) is taken right after its
loss, in the forward pass; the loss keeps only those gradients, hidden-sized and head-sized, and the
backward pass scales them by the loss's gradient. So one chunk of logits is alive at a time and nothing is
computed twice: a step costs the full head's FLOPs. The idea is Liger-Kernel's fused linear cross-entropy
and Apple's Cut Cross-Entropy; the code is ours because theirs take a weight matrix, not an `nn.Module`
head (a PEFT-wrapped head runs its own code). On CUDA, Liger's kernel runs instead when it is installed
(`pip install "lit-lora[liger]"`) and the head is a plain linear layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from lit_lora.constants import IGNORE_INDEX
from lit_lora.errors import LitLoraError

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
# is given (transformers' `find_packed_sequence_indices`); tests/unit/data/test_packing.py checks each one.
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
    count does, to keep the head's backward in the backward pass). `fused=False` never uses Liger's kernel
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

    `chunk` positions at a time (default `LOSS_CHUNK_TOKENS`), each chunk's gradients taken in the forward.
    """
    targets = next_token_targets(labels).flatten()
    flat = hidden.flatten(0, 1)
    nll = _liger(flat, head, targets, softcap) if fused else None
    if nll is None:
        nll = _head_nll(flat, head, targets, softcap, chunk or LOSS_CHUNK_TOKENS, per_token=False)
    return nll, (targets != IGNORE_INDEX).sum()


def head_token_nll(hidden: torch.Tensor, head: Any, labels: torch.Tensor, softcap: Optional[float] = None,
                   chunk: Optional[int] = None) -> torch.Tensor:
    """The next-token NLL of each position, (B, T) float32, from the same chunks: 0 where nothing is
    predicted (-100 and each row's last position), so `-head_token_nll(...).sum(-1)` is each sequence's
    log-probability. Differentiable with respect to `hidden`, with any weight per position; a head that
    trains gets one gradient per step, not per position, so it is refused here."""
    flat = hidden.flatten(0, 1)
    targets = next_token_targets(labels).flatten()
    return _head_nll(flat, head, targets, softcap, chunk or LOSS_CHUNK_TOKENS, per_token=True).view(labels.shape)


def _head_nll(flat: torch.Tensor, head: Any, targets: torch.Tensor, softcap: Optional[float], chunk: int,
              per_token: bool) -> torch.Tensor:
    """Summed NLL of (N, H) hidden states at (N,) targets, or the (N,) per-position values."""
    params = [p for p in head.parameters() if p.requires_grad] if torch.is_grad_enabled() else []
    if per_token and params:
        raise LitLoraError("per-position losses cannot train the output head (lm_head in modules_to_save or "
                           "the LoRA targets); leave it frozen")
    if torch.is_grad_enabled() and (flat.requires_grad or params):
        return _ChunkedHeadNll.apply(flat, targets, head, softcap, chunk, per_token, *params)
    # Evaluation: no graph to build, nothing to keep.
    with torch.no_grad():
        values = [_chunk_nll(flat[s:s + chunk], targets[s:s + chunk], head, softcap, per_token)
                  for s in range(0, flat.shape[0], chunk)]
    return _joined(values, per_token, flat)


def _joined(values: list[torch.Tensor], per_token: bool, flat: torch.Tensor) -> torch.Tensor:
    """The chunks' values as one (N,) tensor, or their float32 sum."""
    if not values:  # no positions at all
        return flat.new_zeros((0,) if per_token else (), dtype=torch.float32)
    return torch.cat(values) if per_token else torch.stack(values).sum()


class _ChunkedHeadNll(torch.autograd.Function):
    """The chunked loss, differentiated chunk by chunk in the forward pass.

    `torch.autograd.grad` over each chunk (a detached copy of its hidden states, and the head's trainable
    parameters) runs the head's own backward, whatever module it is: a linear layer, GPT-2's tied head,
    PEFT's wrapper of a trained or LoRA-adapted head. A position's loss depends on its own hidden state
    only, so the stored hidden-state gradients can be weighed per position (`per_token`); the head's are
    summed over positions, so they serve the summed loss only.
    """

    @staticmethod
    def forward(ctx: Any, flat: torch.Tensor, targets: torch.Tensor, head: Any, softcap: Optional[float],
                chunk: int, per_token: bool, *params: torch.Tensor) -> torch.Tensor:
        wants_hidden = ctx.needs_input_grad[0]
        grad_hidden = torch.empty_like(flat) if wants_hidden else None
        grad_params: list[Optional[torch.Tensor]] = [None] * len(params)
        values = []
        for start in range(0, flat.shape[0], chunk):
            value, grads = _chunk_grads(flat[start:start + chunk], targets[start:start + chunk], head, softcap,
                                        per_token, wants_hidden, params)
            values.append(value)
            if wants_hidden:
                grad_hidden[start:start + chunk] = grads[0]
            for k, g in enumerate(grads[wants_hidden:]):
                if g is not None:  # summed in float32 over chunks, as one matmul over all positions would
                    grad_params[k] = g.float() if grad_params[k] is None else grad_params[k].add_(g)
        ctx.per_token = per_token
        ctx.save_for_backward(grad_hidden, *(g if g is None else g.to(p.dtype) for g, p in zip(grad_params, params)))
        return _joined(values, per_token, flat)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
        grad_hidden, *grad_params = ctx.saved_tensors
        # In place: the stored gradients become the returned ones, no second copy at the backward's peak.
        if grad_hidden is not None:
            grad_hidden.mul_(grad_output[:, None] if ctx.per_token else grad_output)
        grad_params = [g if g is None else g.mul_(grad_output) for g in grad_params]
        return (grad_hidden, None, None, None, None, None, *grad_params)


def _chunk_grads(hidden: torch.Tensor, targets: torch.Tensor, head: Any, softcap: Optional[float], per_token: bool,
                 wants_hidden: bool, params: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, tuple[Any, ...]]:
    """One chunk's loss (detached) and its gradients with respect to its hidden states (if `wants_hidden`)
    and `params`; the chunk's logits die on return."""
    piece = hidden.detach().requires_grad_(wants_hidden)
    with torch.enable_grad():
        # The head gets a view of the leaf: torch's module trackers (FlopCounterMode, MemTracker) hook a
        # module's inputs, and a hook on a leaf cannot run inside `autograd.grad`.
        nll = _chunk_nll(piece.view_as(piece), targets, head, softcap, per_token)
        inputs = ([piece] if wants_hidden else []) + list(params)
        grads = torch.autograd.grad(nll.sum() if per_token else nll, inputs, allow_unused=True)
    return nll.detach(), grads


def _chunk_nll(hidden: torch.Tensor, targets: torch.Tensor, head: Any, softcap: Optional[float],
               per_token: bool = False) -> torch.Tensor:
    logits = head(hidden)
    if softcap is not None:  # as Gemma 2's forward does it, in the logits' dtype
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX,
                           reduction="none" if per_token else "sum")


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


def step_loss(
    nll: torch.Tensor, n_tokens: torch.Tensor, step_tokens: Optional[torch.Tensor], accumulate: int, world: int
) -> torch.Tensor:
    """The loss to backpropagate for one micro-batch whose summed NLL over `n_tokens` targets is `nll`.

    Without `step_tokens`: the mean over this micro-batch's target tokens. With it (the target tokens of the
    whole optimizer step, every micro-batch of every process): the micro-batch's share of the step's token
    mean, not a mean of micro-batch means, which would weigh a short example's tokens more. Lightning
    divides each micro-batch's loss by `accumulate` and DDP averages the gradients over the processes, so
    this scales back by both.
    """
    if step_tokens is None:
        return nll / n_tokens.clamp(min=1)
    # The factor in float64, rounded once to the loss's dtype; kept on the device (no host sync).
    step_tokens = torch.as_tensor(step_tokens, device=nll.device)
    return nll * (accumulate * world / step_tokens.clamp(min=1).double()).to(nll.dtype)
