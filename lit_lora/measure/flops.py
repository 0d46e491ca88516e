"""Training FLOPs per token of a LoRA-adapted GPT-2, for model FLOP utilisation (MFU).

Counted as `torch.utils.flop_counter.FlopCounterMode` counts one training step: matmuls only (2 FLOPs per
multiply-add), attention as full T x T products (no discount for the causal mask). What a frozen base
saves is counted exactly: a frozen weight gets no weight gradient, and a matmul whose input needs no
gradient (layer 0's `c_attn` when the embeddings are frozen) does no backward at all for its base weight.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from lit_lora.lora.layers import base_model, is_lora_layer


@dataclass(frozen=True)
class Matmul:
    """One projection: the base weight, and the active LoRA branch on it if any."""

    d_in: int
    d_out: int
    weight_trainable: bool = False
    lora_r: int = 0
    lora_trainable: bool = False

    def flops(self, input_needs_grad: bool) -> tuple[int, int, bool]:
        """(forward, backward, output needs grad), per token."""
        base = 2 * self.d_in * self.d_out
        fwd = base
        bwd = (base if input_needs_grad else 0) + (base if self.weight_trainable else 0)
        if self.lora_r:
            a, b = 2 * self.d_in * self.lora_r, 2 * self.lora_r * self.d_out
            fwd += a + b
            if self.lora_trainable:  # B: weight grad + input grad; A: weight grad (+ input grad)
                bwd += 2 * b + a + (a if input_needs_grad else 0)
            elif input_needs_grad:
                bwd += b + a
        return fwd, bwd, input_needs_grad or self.weight_trainable or (self.lora_r > 0 and self.lora_trainable)


@dataclass(frozen=True)
class Gpt2Layout:
    """What the FLOP count and the memory estimate need to know about a (PEFT-wrapped) GPT-2."""

    blocks: tuple[tuple[Matmul, Matmul, Matmul, Matmul], ...]  # c_attn, attn.c_proj, c_fc, mlp.c_proj
    lm_head: Matmul
    n_embd: int
    n_head: int
    n_inner: int
    vocab_size: int
    embeddings_need_grad: bool  # enable_input_require_grads (set with gradient checkpointing) or trained embeddings


def _matmul(module: Any) -> Matmul:
    """Describe a Conv1D / Linear, plain or wrapped by PEFT (LoRA layer or modules_to_save)."""
    r, lora_trainable = 0, False
    if is_lora_layer(module):
        for name in module.active_adapters:
            if name in module.lora_A:
                r += module.lora_A[name].out_features
                lora_trainable = lora_trainable or module.lora_A[name].weight.requires_grad
        module = module.get_base_layer()
    elif hasattr(module, "modules_to_save") and hasattr(module, "original_module"):
        active = [a for a in getattr(module, "active_adapters", []) if a in module.modules_to_save]
        if active and not getattr(module, "disable_adapters", False):
            module = module.modules_to_save[active[0]]
        else:
            module = module.original_module
    w = module.weight
    # Conv1D (GPT-2) stores (in, out); nn.Linear stores (out, in).
    d_in, d_out = (w.shape[0], w.shape[1]) if type(module).__name__ == "Conv1D" else (w.shape[1], w.shape[0])
    return Matmul(int(d_in), int(d_out), bool(w.requires_grad), r, lora_trainable)


def gpt2_layout(model: Any) -> Optional[Gpt2Layout]:
    """The layout of a GPT-2-style model, or None for other architectures."""
    base = base_model(model)
    blocks = getattr(getattr(base, "transformer", None), "h", None)
    config = getattr(base, "config", None)
    if blocks is None or config is None or not hasattr(base, "lm_head"):
        return None
    try:
        layout_blocks = tuple(
            (_matmul(b.attn.c_attn), _matmul(b.attn.c_proj), _matmul(b.mlp.c_fc), _matmul(b.mlp.c_proj)) for b in blocks
        )
    except AttributeError:
        return None
    emb = base.transformer
    embeddings_need_grad = getattr(base, "_require_grads_hook", None) is not None or any(
        p.requires_grad for m in (emb.wte, emb.wpe) for p in m.parameters()
    )
    return Gpt2Layout(
        blocks=layout_blocks,
        lm_head=_matmul(base.lm_head),
        n_embd=config.n_embd,
        n_head=config.n_head,
        n_inner=config.n_inner or 4 * config.n_embd,
        vocab_size=config.vocab_size,
        embeddings_need_grad=embeddings_need_grad,
    )


@dataclass(frozen=True)
class FlopsPerToken:
    forward: int
    backward: int
    recompute: int  # forward work gradient checkpointing repeats in the backward pass

    @property
    def model(self) -> int:
        """Forward + backward: what MFU counts (recomputation is overhead, not model work)."""
        return self.forward + self.backward

    @property
    def hardware(self) -> int:
        """Everything the device executes, recomputation included."""
        return self.forward + self.backward + self.recompute


def training_flops_per_token(model: Any, seq_len: int, gradient_checkpointing: bool = False) -> FlopsPerToken:
    """FLOPs of one training step divided by its tokens, for sequences of `seq_len` tokens."""
    layout = gpt2_layout(model)
    if layout is None:
        return _generic_flops_per_token(model, seq_len, gradient_checkpointing)
    attn_fwd = 4 * seq_len * layout.n_embd  # Q K^T and P V, full T x T
    fwd = bwd = recompute = 0
    needs_grad = layout.embeddings_need_grad
    for c_attn, attn_proj, c_fc, mlp_proj in layout.blocks:
        f1, b1, qkv_grad = c_attn.flops(needs_grad)
        f2, b2, attn_grad = attn_proj.flops(qkv_grad)
        attn_bwd = 2 * attn_fwd if qkv_grad else 0
        needs_grad = needs_grad or attn_grad  # residual stream
        f3, b3, fc_grad = c_fc.flops(needs_grad)
        f4, b4, mlp_grad = mlp_proj.flops(fc_grad)
        needs_grad = needs_grad or mlp_grad
        block_fwd = f1 + f2 + f3 + f4 + attn_fwd
        fwd += block_fwd
        bwd += b1 + b2 + b3 + b4 + attn_bwd
        if gradient_checkpointing and needs_grad:
            recompute += block_fwd
    f, b, _ = layout.lm_head.flops(needs_grad)
    return FlopsPerToken(fwd + f, bwd + b, recompute)


def _generic_flops_per_token(model: Any, seq_len: int, gradient_checkpointing: bool) -> FlopsPerToken:
    """Other architectures: every projection's input needs a gradient (exact for all but the first layer)."""
    base = base_model(model)
    lora_layers = [m for m in base.modules() if is_lora_layer(m)]
    inside_lora = {id(x) for m in lora_layers for x in m.modules() if x is not m}
    fwd = bwd = 0
    for module in base.modules():
        plain = isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"
        if id(module) not in inside_lora and (plain or module in lora_layers):
            f, b, _ = _matmul(module).flops(True)
            fwd, bwd = fwd + f, bwd + b
    config = getattr(base, "config", None)
    n_layer = getattr(config, "num_hidden_layers", 0) or 0
    hidden = getattr(config, "hidden_size", 0) or 0
    attn = 4 * seq_len * hidden * n_layer
    fwd, bwd = fwd + attn, bwd + 2 * attn
    return FlopsPerToken(fwd, bwd, fwd if gradient_checkpointing else 0)


def peak_flops(device: torch.device, precision: Any) -> Optional[float]:
    """The device's peak dense FLOP/s for the precision's matmul dtype (Lightning's table), None if unknown."""
    if device.type != "cuda":
        return None
    from lightning.fabric.utilities.throughput import get_available_flops

    flops = get_available_flops(device, compute_dtype(precision))
    return float(flops) if flops else None


def compute_dtype(precision: Any) -> torch.dtype:
    """The dtype matmuls run in under a Lightning precision setting ("bf16-mixed", "32-true", ...)."""
    p = str(precision)
    if p.startswith("bf16"):
        return torch.bfloat16
    if p.startswith("16"):
        return torch.float16
    if p.startswith("64"):
        return torch.float64
    return torch.float32
