"""The training loss (lit_lora/objectives/nll.py) against a hand-written shifted cross-entropy, and its
normalisation over the tokens of a whole optimizer step across micro-batches and processes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lit_lora.objectives.nll import CHUNKED_HEAD_FAMILIES
from lit_lora.objectives.nll import step_loss, token_nll


def make_batch(seed, batch=3, t=7, vocab=11, masked=((0, 0), (0, 1), (1, 4), (2, 6), (2, 5))):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, t, vocab, generator=g)
    labels = torch.randint(0, vocab, (batch, t), generator=g)
    for b, i in masked:
        labels[b, i] = -100
    return logits, labels


def reference_nll(logits, labels):
    """The usual causal-LM loss: position t predicts token t + 1, -100 predicts nothing; summed."""
    shift_logits = logits[:, :-1, :].reshape(-1, logits.shape[-1])
    shift_labels = labels[:, 1:].reshape(-1)
    keep = shift_labels != -100
    logp = torch.log_softmax(shift_logits.double(), dim=-1)
    nll = -logp[keep].gather(1, shift_labels[keep].unsqueeze(1)).sum()
    return nll, int(keep.sum())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_token_nll_equals_shifted_cross_entropy(seed):
    logits, labels = make_batch(seed)
    nll, n = token_nll(logits, labels)
    ref, ref_n = reference_nll(logits, labels)
    # 3 rows x 6 predicted positions, minus the -100 targets at (0, 1), (1, 4), (2, 6), (2, 5); (0, 0) is no target.
    assert ref_n == 18 - 4
    assert int(n) == ref_n
    # token_nll sums in float32 (a sum near 40 has a float32 spacing of 4e-6): 1e-6 relative on the sum,
    # 1e-6 absolute on the per-token mean.
    assert float(nll) == pytest.approx(float(ref), rel=1e-6, abs=0)
    assert float(nll) / int(n) == pytest.approx(float(ref) / ref_n, abs=1e-6, rel=0)
    # torch's own shifted cross-entropy, too
    torch_ce = F.cross_entropy(logits[:, :-1].reshape(-1, 11).float(), labels[:, 1:].reshape(-1), reduction="sum")
    assert float(nll) == pytest.approx(float(torch_ce), abs=1e-4)


def test_token_nll_worked_example():
    # Uniform logits over V = 4: every predicted token costs log 4. One row, T = 4.
    logits = torch.zeros(1, 4, 4)
    labels = torch.tensor([[1, 2, -100, 3]])
    nll, n = token_nll(logits, labels)
    assert int(n) == 2  # targets 2 and 3; label 1 (position 0) is never predicted, -100 is skipped
    assert float(nll) == pytest.approx(2 * math.log(4), abs=1e-6)


def test_token_nll_is_float32_sum_for_half_logits():
    logits, labels = make_batch(3)
    nll, n = token_nll(logits.to(torch.bfloat16), labels)
    assert nll.dtype == torch.float32 and nll.ndim == 0
    ref, _ = reference_nll(logits.to(torch.bfloat16).double(), labels)
    assert float(nll) == pytest.approx(float(ref), abs=1e-4)


def test_masked_positions_contribute_nothing():
    logits, labels = make_batch(4)
    nll, n = token_nll(logits, labels)
    changed = logits.clone()
    # Positions whose next label is -100, and the last position (which predicts nothing).
    unused = [(b, t) for b in range(3) for t in range(7) if t == 6 or labels[b, t + 1] == -100]
    assert len(unused) == 3 + 4
    for b, t in unused:
        changed[b, t] = torch.randn(11) * 100
    nll2, n2 = token_nll(changed, labels)
    assert float(nll2) == float(nll) and int(n2) == int(n)
    # Label at position 0 is never a target: changing it changes nothing either.
    relabelled = labels.clone()
    relabelled[:, 0] = 3
    assert float(token_nll(logits, relabelled)[0]) == float(nll)
    # ...while a used position does change the loss.
    changed[0, 2, 0] += 5.0  # one logit (adding to all of them would not change the softmax)
    assert float(token_nll(changed, labels)[0]) != float(nll)


def test_masked_positions_get_no_gradient():
    logits, labels = make_batch(5)
    logits.requires_grad_(True)
    token_nll(logits, labels)[0].backward()
    for b in range(3):
        assert torch.all(logits.grad[b, 6] == 0)
        for t in range(6):
            is_target = labels[b, t + 1] != -100
            assert bool(logits.grad[b, t].abs().sum() > 0) == bool(is_target)


def test_all_masked_gives_zero():
    logits = torch.randn(2, 5, 7)
    labels = torch.full((2, 5), -100)
    nll, n = token_nll(logits, labels)
    assert float(nll) == 0.0 and int(n) == 0


# -- step_loss ------------------------------------------------------------------------------------------


def test_step_loss_without_step_tokens_is_the_micro_batch_mean():
    nll, n = torch.tensor(12.5), torch.tensor(5)
    assert float(step_loss(nll, n, None, accumulate=4, world=2)) == pytest.approx(2.5)
    logits, labels = make_batch(6)
    nll, n = token_nll(logits, labels)
    ref, ref_n = reference_nll(logits, labels)
    assert float(step_loss(nll, n, None, 1, 1)) == pytest.approx(float(ref) / ref_n, abs=1e-6)


def test_step_loss_with_no_tokens_does_not_divide_by_zero():
    loss = step_loss(torch.tensor(0.0), torch.tensor(0), None, 1, 1)
    assert torch.isfinite(loss) and float(loss) == 0.0
    loss = step_loss(torch.tensor(0.0), torch.tensor(0), 0, 2, 2)
    assert torch.isfinite(loss) and float(loss) == 0.0


def test_step_loss_with_step_tokens_scales_by_accumulate_and_world():
    nll = torch.tensor(30.0)
    # 30 * 4 * 2 / 120 = 2
    assert float(step_loss(nll, torch.tensor(10), 120, accumulate=4, world=2)) == pytest.approx(2.0)
    assert float(step_loss(nll, torch.tensor(10), 60, accumulate=1, world=1)) == pytest.approx(0.5)
    # n_tokens does not matter once the step's tokens are known
    assert float(step_loss(nll, torch.tensor(1), 60, 1, 1)) == float(step_loss(nll, torch.tensor(50), 60, 1, 1))


@pytest.mark.parametrize("accumulate,world", [(1, 1), (3, 1), (1, 2), (3, 2), (2, 4)])
def test_lightning_and_ddp_reduction_gives_the_step_token_mean(accumulate, world):
    """Each process backpropagates loss / accumulate for every micro-batch (Lightning) and DDP averages the
    gradients over processes: the result must be the mean NLL over all the step's target tokens."""
    micro = {}
    for rank in range(world):
        for k in range(accumulate):
            # Micro-batches with very different numbers of target tokens.
            t = 4 + 3 * ((rank + k) % 3)
            mask = tuple((b, i) for b in range(2) for i in range(1 + (rank * 7 + k) % (t - 1)))
            logits, labels = make_batch(100 * rank + k, batch=2, t=t, masked=mask)
            micro[rank, k] = (logits.requires_grad_(True), labels)
    counted = {key: token_nll(*v) for key, v in micro.items()}
    step_tokens = int(sum(int(n) for _, n in counted.values()))
    total_nll = sum(float(nll.detach()) for nll, _ in counted.values())
    assert len({int(n) for _, n in counted.values()}) > 1 or accumulate * world == 1

    per_rank = []
    for rank in range(world):
        per_rank.append(sum(step_loss(*counted[rank, k], step_tokens, accumulate, world) / accumulate
                            for k in range(accumulate)))
    reduced = sum(per_rank) / world
    assert float(reduced.detach()) == pytest.approx(total_nll / step_tokens, rel=1e-6)

    # Gradients, too: the whole step's token mean over every micro-batch's logits.
    reduced.backward()
    grads = [micro[key][0].grad.clone() for key in sorted(micro)]
    for v in micro.values():
        v[0].grad = None
    whole = sum(reference_nll(*micro[key])[0] for key in sorted(micro)) / step_tokens
    whole.backward()
    for g, key in zip(grads, sorted(micro)):
        torch.testing.assert_close(g, micro[key][0].grad, rtol=1e-5, atol=1e-7)


def test_mean_of_micro_batch_means_is_not_the_step_mean():
    """Why step_tokens exists: with unequal token counts the micro-batch means weigh tokens unequally."""
    a, b = (torch.tensor(10.0), torch.tensor(10)), (torch.tensor(1.0), torch.tensor(1))
    mean_of_means = (step_loss(*a, None, 2, 1) + step_loss(*b, None, 2, 1)) / 2
    step_mean = (step_loss(*a, 11, 2, 1) + step_loss(*b, 11, 2, 1)) / 2
    assert float(mean_of_means) == pytest.approx(1.0)
    assert float(step_mean) == pytest.approx(1.0)  # equal per-token losses: both 1
    c = (torch.tensor(20.0), torch.tensor(10))  # 2 per token on 10 tokens, 1 per token on 1 token
    assert float((step_loss(*c, None, 2, 1) + step_loss(*b, None, 2, 1)) / 2) == pytest.approx(1.5)
    assert float((step_loss(*c, 11, 2, 1) + step_loss(*b, 11, 2, 1)) / 2) == pytest.approx(21 / 11)


# -- the chunked output head (lit_lora/objectives/nll.py) --------------------------------------------------------------


def _head_case(seed, dtype, batch=2, t=4, width=6, vocab=11):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, t, width, generator=g).to(dtype).requires_grad_(True)
    head = torch.nn.Linear(width, vocab, bias=True).to(dtype)
    labels = torch.randint(0, vocab, (batch, t), generator=g)
    labels[0, 1], labels[1, 3] = -100, -100
    return hidden, head, labels


def _full_head(hidden, head, softcap):
    logits = head(hidden)
    return torch.tanh(logits / softcap) * softcap if softcap else logits


# float32: the chunks' sums and gradients differ from one matmul over all positions by summation order only.
# bfloat16: the chunks' gradients are rounded to bfloat16 before the loss's scale is applied, the full head's
# after: a unit in the last place (2^-8 relative) per op, carried back through the layers (seen: 0.002 of
# the largest gradient for a linear head, 0.02 for Gemma 2's LoRA weights).
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 4e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk, softcap", [(1, None), (5, None), (8, 30.0), (3, 2.0), (64, None)])
def test_chunked_head_gives_the_full_heads_loss_count_and_gradients(chunk, softcap, dtype):
    from lit_lora.objectives.nll import chunked_head_nll

    hidden, head, labels = _head_case(0, dtype)  # 8 positions: chunks of 1, 5 + 3, 8, 3 + 3 + 2, all
    ref, ref_n = token_nll(_full_head(hidden, head, softcap), labels)
    ref_grads = torch.autograd.grad(ref / ref_n, [hidden, head.weight, head.bias])
    nll, n = chunked_head_nll(hidden, head, labels, softcap, chunk=chunk)
    grads = torch.autograd.grad(nll / n, [hidden, head.weight, head.bias])
    assert int(n) == int(ref_n) == 8 - 2 - 2  # the last position of each row predicts nothing
    assert nll.dtype == torch.float32 and [g.dtype for g in grads] == [dtype] * 3
    assert float(nll.detach()) == pytest.approx(float(ref.detach()), abs=1e-5)
    tol = TOLERANCE[dtype]
    assert all((a - b).abs().max() <= tol * max(1.0, b.abs().max()) for a, b in zip(grads, ref_grads))
    assert all(g[0, 3].abs().max() == 0 for g in (grads[0], ref_grads[0]))  # predicts nothing: no gradient


def test_chunked_head_costs_the_full_heads_flops_not_a_second_pass():
    """Each chunk's gradients are taken in the forward: the step runs the head's three matmuls once
    (logits, hidden-state and weight gradients), as the full head does; nothing is recomputed."""
    from torch.utils.flop_counter import FlopCounterMode

    from lit_lora.objectives.nll import chunked_head_nll

    batch, t, width, vocab = 2, 64, 8, 300
    head = torch.nn.Linear(width, vocab, bias=False)
    labels = torch.randint(0, vocab, (batch, t))
    counts = []
    for chunk in (None, 32):  # None: the full head; 32: four chunks
        hidden = torch.randn(batch, t, width, requires_grad=True)
        with FlopCounterMode(display=False) as counter:
            nll, n = token_nll(head(hidden), labels) if chunk is None else chunked_head_nll(hidden, head, labels,
                                                                                          chunk=chunk)
            (nll / n).backward()
        counts.append(counter.get_total_flops())
    assert counts[1] == counts[0] == 3 * 2 * batch * t * width * vocab


@pytest.mark.parametrize("softcap", [None, 2.0])
def test_per_position_nll_gives_each_positions_loss_and_its_gradient_under_any_weights(softcap):
    from lit_lora.errors import LitLoraError
    from lit_lora.objectives.nll import chunked_head_nll, head_token_nll

    hidden, head, labels = _head_case(1, torch.float32, batch=3, t=5)
    head.requires_grad_(False)  # a frozen head, as LoRA leaves it
    ref = F.cross_entropy(_full_head(hidden, head, softcap).flatten(0, 1), labels.roll(-1, 1).flatten(),
                          ignore_index=-100, reduction="none").view(3, 5)
    ref[:, -1] = 0  # the last position predicts nothing (roll wrapped the first label round)
    weights = torch.randn(3, 5)  # per-sequence and per-position weights, as preference losses put on them
    ref_grad, = torch.autograd.grad((ref * weights).sum(), hidden)
    values = head_token_nll(hidden, head, labels, softcap, chunk=4)  # 15 positions: 4 + 4 + 4 + 3
    grad, = torch.autograd.grad((values * weights).sum(), hidden)
    assert values.shape == (3, 5) and values.dtype == torch.float32
    assert (values[0, 0] == 0) and (values[1, 2] == 0) and (values[:, -1] == 0).all()  # their targets are -100
    assert (values.detach() - ref.detach()).abs().max() <= 1e-5
    assert (grad - ref_grad).abs().max() <= 1e-5
    with torch.no_grad():  # evaluation: the same values, no graph
        assert (head_token_nll(hidden, head, labels, softcap, chunk=4) - ref).abs().max() <= 1e-5
    assert float(values.sum()) == pytest.approx(float(chunked_head_nll(hidden, head, labels, softcap)[0]), abs=1e-5)
    head.requires_grad_(True)
    with pytest.raises(LitLoraError, match="per-position losses cannot train the output head"):
        head_token_nll(hidden, head, labels)


def test_chunked_loss_never_holds_the_full_float32_logits():
    from lit_lora.estimate.dry_run import Watch
    from lit_lora.objectives.nll import chunked_head_nll

    batch, t, width, vocab = 4, 64, 8, 4_000
    head = torch.nn.Linear(width, vocab, bias=False)
    labels = torch.randint(0, vocab, (batch, t))
    peaks = []
    for chunk in (None, 32):  # None: the full head, as token_nll computes it
        hidden = torch.randn(batch, t, width, requires_grad=True)
        watch = Watch()
        with watch:
            nll, n = token_nll(head(hidden), labels) if chunk is None else chunked_head_nll(hidden, head, labels,
                                                                                          chunk=chunk)
            (nll / n).backward()
        peaks.append(watch.peak)
    full_logits_fp32 = batch * t * vocab * 4
    assert peaks[0] > 2 * full_logits_fp32  # the full head holds the logits, their softmax and its gradient
    assert peaks[1] < full_logits_fp32 / 2  # 32 of 256 positions at a time


@pytest.mark.parametrize("modules_to_save, lora_head", [(None, False), (["lm_head"], False), (None, True)])
def test_chunked_loss_of_a_lora_gpt2_matches_the_full_head_with_a_trained_head(modules_to_save, lora_head,
                                                                               monkeypatch):
    from transformers import GPT2Config, GPT2LMHeadModel

    from lit_lora.lora.settings import LoraSettings
    from lit_lora.lora.wrap import apply_lora
    from lit_lora.objectives.nll import model_nll, output_head

    torch.manual_seed(0)
    base = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, n_positions=32, vocab_size=50, bos_token_id=0,
                                      eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    targets = ["c_attn", "lm_head"] if lora_head else ["c_attn"]  # LoRA on the head: PEFT's LoRA layer runs it
    model = apply_lora(base, LoraSettings(target_modules=targets, modules_to_save=modules_to_save)).train()
    for p in model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.1)  # lora_B starts at zero: give every trained tensor a gradient path
    head = output_head(model)[0].head
    assert (type(head).__name__ == "ModulesToSaveWrapper") == bool(modules_to_save)
    ids = torch.randint(0, 50, (2, 12))
    labels = ids.clone()
    labels[1, :4] = -100
    monkeypatch.setattr("lit_lora.objectives.nll.LOSS_CHUNK_TOKENS", 7)
    results = []
    for chunked in (False, True):
        model.zero_grad()
        torch.manual_seed(1)  # the same LoRA dropout masks
        nll, n = model_nll(model, ids, None, labels, chunked=chunked)
        nll.backward()
        results.append((float(nll.detach()), int(n), {k: p.grad.clone() for k, p in model.named_parameters()
                                                       if p.requires_grad}))
    (full, full_n, full_grads), (nll, n, grads) = results
    assert n == full_n == 22 - 3 and nll == pytest.approx(full, abs=1e-5)
    assert any("modules_to_save" in k for k in grads) == bool(modules_to_save)
    assert any("lm_head.lora_A" in k for k in grads) == lora_head
    assert max((grads[k] - full_grads[k]).abs().max().item() for k in grads) <= 1e-5


def _family_model(model_type, dtype):
    """A tiny random model of `model_type` with LoRA on its default targets and its output head trained
    (modules_to_save), every trained tensor non-zero so each has a gradient path."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from lit_lora.lora.settings import LoraSettings
    from lit_lora.lora.wrap import apply_lora
    from tests.helpers import FAMILIES, GQA, VOCAB

    fields = FAMILIES[model_type][0] if model_type in FAMILIES else dict(GQA, head_dim=8)  # gemma: not fitted there
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, vocab_size=VOCAB, **fields), dtype=dtype)
    head = base.get_output_embeddings()
    name = next(n for n, m in base.named_modules() if m is head)
    model = apply_lora(base, LoraSettings(modules_to_save=[name])).train()
    for p in model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.1)
    return model


@pytest.mark.parametrize("model_type", sorted(CHUNKED_HEAD_FAMILIES))
def test_every_chunked_family_gives_the_full_heads_loss_and_gradients_in_float32_and_bf16(model_type, monkeypatch):
    """LoRA and a trained head (PEFT's wrapper), prompt-masked and padded rows, chunks of 5 over 24 positions
    (a partial last one), float32 and bf16-mixed over a bfloat16 base; Gemma 2 soft-caps its logits."""
    from lit_lora.objectives.nll import model_nll, output_head

    ids = torch.randint(3, 500, (2, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[0, :4] = -100
    monkeypatch.setattr("lit_lora.objectives.nll.LOSS_CHUNK_TOKENS", 5)
    for dtype in (torch.float32, torch.bfloat16):
        model = _family_model(model_type, dtype)
        parts = output_head(model)[0]
        assert type(parts.head).__name__ == "ModulesToSaveWrapper"
        assert (parts.softcap is not None) == (model_type == "gemma2")
        results = []
        for chunked in (False, True):
            model.zero_grad()
            torch.manual_seed(1)  # the same dropout masks
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                nll, n = model_nll(model, ids, mask, labels, chunked=chunked)
            (nll / n).backward()
            results.append((float(nll.detach() / n), int(n),
                            {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}))
        (full_loss, full_n, full), (loss, n, grads) = results
        assert n == full_n == 2 * 11 - 3 - 3 and loss == pytest.approx(full_loss, abs=1e-5)
        assert any("modules_to_save" in k for k in grads) and any("lora_A" in k for k in grads)
        tol = TOLERANCE[dtype]
        assert all((grads[k] - full[k]).abs().max() <= tol * max(1.0, full[k].abs().max()) for k in grads), model_type
