"""Peak training memory of a LoRA run, before running it.

    python -m lit_lora.cli summary --config conf/gpt2.yaml

Two parts. The *static* part is exact, in bytes, from the model as built: every parameter and buffer
(at the dtype the precision setting leaves them in), one gradient per trainable parameter, and AdamW's
state (exp_avg, exp_avg_sq and a float32 `step` per trainable tensor). The *activation* part is an
estimate: what autograd keeps for the backward pass of a GPT-2 block, counted tensor by tensor for
our loss and PEFT's LoRA layers, times the layers (or, with gradient checkpointing, one saved block
input per layer plus one block recomputed at a time), plus the logits and cross-entropy buffers.
Allocator rounding, fragmentation and the CUDA context (a few hundred MB) are not included; compare
it with `torch.cuda.max_memory_allocated`, not with nvidia-smi.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lit_lora.constants import MB
from lit_lora.lora.layers import base_model
from lit_lora.measure.flops import Gpt2Layout, compute_dtype, gpt2_layout

# Precisions under which Lightning converts the whole module (LoRA weights included) to another dtype.
_CONVERTED = {"16-true": torch.float16, "bf16-true": torch.bfloat16, "64-true": torch.float64}


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int  # bytes: parameters and buffers
    gradients: int  # bytes: one gradient per trainable parameter
    optimizer: int  # bytes: AdamW exp_avg + exp_avg_sq + step
    activations: int  # bytes, estimated: saved for backward at the peak, plus the loss's buffers
    batch_size: int
    block_size: int
    precision: str
    gradient_checkpointing: bool

    @property
    def static(self) -> int:
        return self.weights + self.gradients + self.optimizer

    @property
    def total(self) -> int:
        return self.static + self.activations

    def lines(self) -> list[str]:
        gc = "on" if self.gradient_checkpointing else "off"
        return [
            f"peak training memory, estimated: {self.total / MB:,.1f} MB "
            f"(batch {self.batch_size} x block {self.block_size}, {self.precision}, gradient checkpointing {gc})",
            f"  weights {self.weights / MB:,.1f} MB + LoRA gradients {self.gradients / MB:,.1f} MB + "
            f"AdamW state {self.optimizer / MB:,.1f} MB (exact) + activations {self.activations / MB:,.1f} MB",
        ]


def _unique(tensors: Any) -> list[torch.Tensor]:
    seen: set[int] = set()
    out = []
    for t in tensors:
        if id(t) not in seen:  # tied weights (GPT-2's lm_head is wte) are held once
            seen.add(id(t))
            out.append(t)
    return out


def _bytes(t: torch.Tensor, precision: str) -> int:
    dtype = _CONVERTED.get(precision, t.dtype) if t.is_floating_point() else t.dtype
    return t.numel() * dtype.itemsize


def static_bytes(model: Any, precision: str = "32-true") -> tuple[int, int, int]:
    """(weights, gradients, optimizer state) in bytes, exactly as training with AdamW will hold them."""
    params = _unique(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    weights = sum(_bytes(t, precision) for t in params + _unique(model.buffers()))
    grads = sum(_bytes(p, precision) for p in trainable)
    # AdamW: exp_avg and exp_avg_sq like the parameter, and a scalar `step` (float64 only if that is the default).
    step = 8 if torch.get_default_dtype() == torch.float64 else 4
    optimizer = 2 * grads + step * len(trainable)
    return weights, grads, optimizer


def estimate_training_memory(
    model: Any,
    batch_size: int,
    block_size: int,
    precision: str = "32-true",
    gradient_checkpointing: bool = False,
    device_type: str = "cuda",
) -> MemoryEstimate:
    """Estimate peak memory of one training step of `model` (the PEFT-wrapped model, as LitLora builds it)."""
    precision = str(precision)
    weights, grads, optimizer = static_bytes(model, precision)
    layout = gpt2_layout(model)
    if layout is None:
        activations = _generic_activations(model, batch_size, block_size, precision, gradient_checkpointing)
    else:
        activations = _gpt2_activations(
            layout, model, batch_size, block_size, precision, gradient_checkpointing, device_type
        )
    return MemoryEstimate(
        weights, grads, optimizer, int(activations), batch_size, block_size, precision, gradient_checkpointing
    )


def _element_sizes(model: Any, precision: str) -> tuple[int, int]:
    """(a, s): bytes per element of matmul outputs and of the residual stream (the frozen weights' dtype)."""
    if precision in _CONVERTED:
        size = _CONVERTED[precision].itemsize
        return size, size
    frozen = next((p for p in model.parameters() if not p.requires_grad), None)
    base = frozen.dtype.itemsize if frozen is not None else 4
    if "mixed" in precision:  # autocast: matmuls in 16 bits; layer norms and the residual sum stay as they were
        return compute_dtype(precision).itemsize, base
    return base, base


def _gpt2_activations(
    layout: Gpt2Layout, model: Any, batch: int, block: int, precision: str, checkpointing: bool, device_type: str
) -> float:
    base = base_model(model)
    cfg = base.config
    a, s = _element_sizes(model, precision)
    d, ff, nh, vocab = layout.n_embd, layout.n_inner, layout.n_head, layout.vocab_size
    tokens = batch * block
    # Dropout masks: CUDA keeps one bool byte per element, the CPU kernel a mask in the activations' dtype.
    mask = 1 if device_type == "cuda" else a
    lora_mask = mask if _lora_dropout(model) > 0 else 0
    resid_mask = mask if cfg.resid_pdrop > 0 else 0
    attn_mask = mask if cfg.attn_pdrop > 0 else 0
    gelu_saved = 4 if cfg.activation_function == "gelu_new" else 1  # tanh GELU in Python keeps 4 tensors
    scores = cfg._attn_implementation == "eager" or (device_type != "cuda" and cfg.attn_pdrop > 0)
    # Autocast does not cache 16-bit copies of *frozen* weights: each matmul keeps its own for backward.
    weight_copies = "mixed" in precision and s > a

    def lora_input(mm: Any, width: int) -> int:
        # PEFT: lora_B(lora_A(dropout(x))): A keeps its input, B keeps A's output; the frozen base keeps nothing.
        return (lora_mask * width + a * width + a * mm.lora_r) if mm.lora_r else 0

    def layer_bytes(c_attn: Any, attn_proj: Any, c_fc: Any, mlp_proj: Any) -> int:
        per_token = (
            s * d + 8  # ln_1 input, mean and rstd
            + lora_input(c_attn, d)
            + 3 * a * d  # q, k, v
            + a * d + 4 * nh  # attention output and log-sum-exp
            + lora_input(attn_proj, d)
            + resid_mask * d
            + s * d + 8  # ln_2
            + lora_input(c_fc, d)
            + gelu_saved * a * ff
            + lora_input(mlp_proj, ff)
            + resid_mask * d
        )
        if scores:  # the math path materialises the (T x T) scores: softmax output, dropout mask and dropped copy
            per_token += nh * block * (2 * a + attn_mask)
        copies = a * sum(mm.d_in * mm.d_out for mm in (c_attn, attn_proj, c_fc, mlp_proj)) if weight_copies else 0
        return tokens * per_token + copies

    layers = [layer_bytes(*mms) for mms in layout.blocks]
    # Logits (and, in 16 bits, their float32 copy for the loss), the log-softmax output and its gradient.
    head_per_token = (a + (4 if a < 4 else 0) + 8) * vocab + s * d + 8
    head = tokens * head_per_token + (a * vocab * d if weight_copies else 0)
    if checkpointing:
        # Each block keeps only its input; its insides are recomputed one block at a time in the backward
        # pass, next to the residual stream's gradient in and out of it.
        saved = len(layers) * tokens * s * d
        return saved + max(head, max(layers, default=0) + 2 * tokens * s * d)
    return sum(layers) + head


def _lora_dropout(model: Any) -> float:
    config = getattr(model, "peft_config", {}).get("default")
    return float(getattr(config, "lora_dropout", 0.0) or 0.0)


def _generic_activations(model: Any, batch: int, block: int, precision: str, checkpointing: bool) -> float:
    """Other architectures: the common ~18 hidden-sized tensors per layer and token, plus the logits."""
    base = base_model(model)
    cfg = base.config
    a, s = _element_sizes(model, precision)
    d = getattr(cfg, "hidden_size", 0)
    n_layer = getattr(cfg, "num_hidden_layers", 0)
    vocab = getattr(cfg, "vocab_size", 0)
    tokens = batch * block
    per_layer = tokens * 18 * a * d
    head = tokens * (a + (4 if a < 4 else 0) + 8) * vocab
    if checkpointing:
        return n_layer * tokens * s * d + max(head, per_layer)
    return n_layer * per_layer + head
