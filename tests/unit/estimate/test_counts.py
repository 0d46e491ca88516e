"""Numbers about a built model (lit_lora/estimate/): exact static training memory, parameter counts, FLOPs
per token (checked by hand and against torch's FlopCounterMode) and the compute dtype, on a tiny randomly
initialised GPT-2 wrapped by PEFT (no download)."""

from __future__ import annotations

import pytest
import torch

from lit_lora.estimate.flops import compute_dtype, training_flops_per_token
from lit_lora.estimate.memory import static_bytes
from lit_lora.estimate.model_summary import count_parameters
from lit_lora.lora import LoraSettings
from lit_lora.lora.wrap import apply_lora
from lit_lora.pretrained.hub import load_base_model

V, P, D, L, R = 100, 64, 32, 2, 4  # vocab, positions, width, layers, LoRA rank
CONFIG = dict(vocab_size=V, n_positions=P, n_embd=D, n_layer=L, n_head=2, bos_token_id=0, eos_token_id=0)

# GPT-2 by hand: wte V*D + wpe P*D; per block ln_1 2D, c_attn D*3D + 3D, attn.c_proj D*D + D, ln_2 2D,
# c_fc D*4D + 4D, mlp.c_proj 4D*D + D (= 12 D^2 + 13 D); ln_f 2D; lm_head is wte (tied), not counted again.
BASE_PARAMS = V * D + P * D + L * (12 * D * D + 13 * D) + 2 * D
# LoRA on c_attn and both c_proj: A is r x d_in, B is d_out x r.
LORA_PARAMS = L * (R * (D + 3 * D) + R * (D + D) + R * (4 * D + D))  # = L * 11 * R * D
LORA_TENSORS = L * 3 * 2


def build(**lora):
    base = load_base_model("unused-when-model_config-is-given", model_config=CONFIG)
    base_count = sum(p.numel() for p in base.parameters())
    settings = LoraSettings(r=R, alpha=2 * R, dropout=0.0, **lora)
    return apply_lora(base, settings), base_count


@pytest.fixture(scope="module")
def peft_model():
    return build()[0]


def test_hand_counts_match_the_tiny_model():
    base = load_base_model("x", model_config=CONFIG)
    assert base.lm_head.weight is base.transformer.wte.weight  # tied
    assert BASE_PARAMS == 30_720 and LORA_PARAMS == 2_816
    assert sum(p.numel() for p in base.parameters()) == BASE_PARAMS
    assert not list(base.buffers())


@pytest.mark.parametrize("precision,size", [("32-true", 4), ("16-mixed", 4), ("bf16-mixed", 4), ("bf16-true", 2), ("16-true", 2)])
def test_static_bytes_equals_hand_count(peft_model, precision, size):
    weights, grads, optimizer = static_bytes(peft_model, precision)
    assert weights == size * (BASE_PARAMS + LORA_PARAMS)
    assert grads == size * LORA_PARAMS
    assert optimizer == 2 * grads + 4 * LORA_TENSORS  # exp_avg + exp_avg_sq, and a float32 step per tensor


def test_static_bytes_counts_tied_weights_and_buffers_once():
    model, _ = build()
    base = model.get_base_model()
    shared = torch.zeros(6)  # a float buffer held by two modules: one tensor
    base.transformer.ln_f.register_buffer("shared", shared)
    base.transformer.h[0].ln_1.register_buffer("shared_too", shared)
    base.transformer.register_buffer("steps", torch.zeros(10, dtype=torch.int64))  # not floating: keeps its dtype
    weights, _, _ = static_bytes(model, "32-true")
    assert weights == 4 * (BASE_PARAMS + LORA_PARAMS) + 4 * 6 + 8 * 10
    weights16, _, _ = static_bytes(model, "bf16-true")
    assert weights16 == 2 * (BASE_PARAMS + LORA_PARAMS) + 2 * 6 + 8 * 10


def test_static_bytes_with_a_trained_copy_of_lm_head():
    model, _ = build(modules_to_save=["lm_head"])
    weights, grads, optimizer = static_bytes(model, "32-true")
    # modules_to_save holds a trainable copy of lm_head (V x D); the original stays tied to wte.
    assert grads == 4 * (LORA_PARAMS + V * D)
    assert weights == 4 * (BASE_PARAMS + LORA_PARAMS + V * D)
    assert optimizer == 2 * grads + 4 * (LORA_TENSORS + 1)


@pytest.mark.parametrize("lora", [{}, {"target_modules": ["c_fc"]}, {"modules_to_save": ["lm_head"]}],
                         ids=["default", "c_fc", "modules_to_save"])
def test_count_parameters_equals_sums_of_numel(lora):
    model, base_count = build(**lora)
    counts = count_parameters(model)
    assert counts.total == sum(p.numel() for p in model.parameters())
    assert counts.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert counts.base == base_count == BASE_PARAMS
    assert counts.frozen == counts.total - counts.trainable
    assert counts.trainable_pct == pytest.approx(100 * counts.trainable / counts.total)


def test_count_parameters_by_hand(peft_model):
    counts = count_parameters(peft_model)
    assert (counts.base, counts.trainable, counts.total) == (BASE_PARAMS, LORA_PARAMS, BASE_PARAMS + LORA_PARAMS)
    model, _ = build(target_modules=["c_fc"])  # c_fc: A r x D, B 4D x r
    assert count_parameters(model).trainable == L * R * (D + 4 * D)


# -- FLOPs ----------------------------------------------------------------------------------------------

def test_training_flops_of_the_tiny_model_by_hand(peft_model):
    # 2 FLOPs per multiply-add. A LoRA'd projection d_in -> d_out with rank r: forward W + A + B =
    # 2*d_in*d_out + 2*d_in*r + 2*r*d_out; backward with W frozen and A, B trained: dB + the gradient into
    # A's output (2*r*d_out each) + dA (2*d_in*r), plus dx through W and A when the input needs a gradient.
    # Per block (D = 32, r = 4; c_fc has no LoRA): forward
    #   c_attn 6144 + 256 + 768 = 7168 + attn.c_proj 2*32*32 + 2*32*4 + 2*4*32 = 2560 + c_fc 2*32*128 = 8192
    #   + mlp.c_proj 2*128*32 + 2*128*4 + 2*4*32 = 9472  = 27392; lm_head 2*32*100 = 6400.
    # Backward: block 0's c_attn input (the frozen embeddings) needs no grad: 768 + 768 + 256 = 1792; block
    #   1's does: + 6144 + 256 = 8192; attn.c_proj 2048 + (2*256 + 256 + 256) = 3072; c_fc 8192 (dx only);
    #   mlp.c_proj 8192 + (2*256 + 1024 + 1024) = 10752; lm_head dx 6400. At seq_len 0 no attention term.
    f = training_flops_per_token(peft_model, 0)
    assert f.forward == 2 * 27392 + 6400
    assert f.backward == (1792 + 3072 + 8192 + 10752) + (8192 + 3072 + 8192 + 10752) + 6400
    # Attention adds 4 * T * D forward per block (QK^T and PV) and twice that backward.
    g = training_flops_per_token(peft_model, 16)
    assert g.forward - f.forward == L * 4 * 16 * D
    assert g.backward - f.backward == L * 8 * 16 * D


@pytest.mark.parametrize("seq_len", [1, 16, 100])
def test_training_flops_linear_in_seq_len(peft_model, seq_len):
    f0, f1, f2 = (training_flops_per_token(peft_model, n) for n in (0, seq_len, 2 * seq_len))
    for attr in ("forward", "backward", "model"):
        a, b, c = getattr(f0, attr), getattr(f1, attr), getattr(f2, attr)
        assert c - b == b - a > 0, attr
    assert f1.model == f1.forward + f1.backward


def test_training_flops_match_torch_flop_counter(peft_model):
    """One forward + backward of the real model, counted by torch's FlopCounterMode, per token."""
    from torch.utils.flop_counter import FlopCounterMode

    seq, batch = 16, 2
    ids = torch.randint(0, V, (batch, seq), generator=torch.Generator().manual_seed(0))
    peft_model.train()
    with FlopCounterMode(display=False) as counter:
        out = peft_model(input_ids=ids)
        out.logits.float().sum().backward()
    peft_model.zero_grad(set_to_none=True)
    expected = training_flops_per_token(peft_model, seq)
    assert counter.get_total_flops() == expected.model * batch * seq


@pytest.mark.parametrize("precision,dtype", [
    ("bf16-mixed", torch.bfloat16), ("bf16-true", torch.bfloat16), ("bf16", torch.bfloat16),
    ("16-mixed", torch.float16), ("16-true", torch.float16), (16, torch.float16),
    ("32-true", torch.float32), ("32", torch.float32), (32, torch.float32),
    ("64-true", torch.float64),
])
def test_compute_dtype(precision, dtype):
    assert compute_dtype(precision) is dtype


@pytest.mark.parametrize("model_config, period", [
    ({"n_layer": 12, "n_embd": 32, "n_head": 2, "n_positions": 64, "vocab_size": 300}, 1),
    ({"model_type": "gemma2", "num_hidden_layers": 12, "hidden_size": 32, "intermediate_size": 64,
      "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "sliding_window": 8, "vocab_size": 300}, 2),
])
def test_a_deep_model_is_counted_from_two_short_copies_exactly_as_in_full(model_config, period):
    from lit_lora.estimate import dry_run

    model = apply_lora(load_base_model("unused", model_config=model_config), LoraSettings())
    config = model.get_base_model().config
    assert dry_run._depth(config) == (12, period)
    for gc in (False, True) if period == 1 else (True,):  # Gemma 2's 12 full layers: one run is enough
        full = dry_run._step(model, 2, 40, "bf16-mixed", gc, "cuda", True, config)
        assert dry_run.fake_step(model, 2, 40, "bf16-mixed", gc, "cuda") == full  # bytes and FLOPs, exactly
