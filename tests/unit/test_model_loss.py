"""The training loss (lit_lora/model/loss.py) against a hand-written shifted cross-entropy, and its
normalisation over the tokens of a whole optimizer step across micro-batches and processes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lit_lora.model.loss import step_loss, token_nll


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


# -- the chunked output head (lit_lora/nll.py) --------------------------------------------------------------


@pytest.mark.parametrize("chunk, softcap", [(1, None), (5, None), (8, 30.0), (64, None)])
def test_chunked_head_gives_the_full_heads_loss_count_and_gradients(chunk, softcap):
    from lit_lora.nll import chunked_head_nll

    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 4, 6, generator=g, requires_grad=True)  # 8 positions: chunks of 1, 5 + 3, 8, all
    head = torch.nn.Linear(6, 11, bias=True)
    labels = torch.randint(0, 11, (2, 4), generator=g)
    labels[0, 1], labels[1, 3] = -100, -100
    logits = head(hidden)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    ref, ref_n = token_nll(logits, labels)
    ref_grads = torch.autograd.grad(ref, [hidden, head.weight, head.bias])
    nll, n = chunked_head_nll(hidden, head, labels, softcap, chunk=chunk)
    grads = torch.autograd.grad(nll, [hidden, head.weight, head.bias])
    assert int(n) == int(ref_n) == 8 - 2 - 2  # the last position of each row predicts nothing
    assert float(nll.detach()) == pytest.approx(float(ref.detach()), abs=1e-5)
    assert all((a - b).abs().max() <= 1e-5 for a, b in zip(grads, ref_grads))


def test_chunked_loss_never_holds_the_full_float32_logits():
    from lit_lora.measure.dry_run import Watch
    from lit_lora.nll import chunked_head_nll

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


@pytest.mark.parametrize("modules_to_save", [None, ["lm_head"]])
def test_chunked_loss_of_a_lora_gpt2_matches_the_full_head_with_a_trained_head(modules_to_save, monkeypatch):
    from transformers import GPT2Config, GPT2LMHeadModel

    from lit_lora.lora.settings import LoraSettings
    from lit_lora.lora.wrap import apply_lora
    from lit_lora.nll import model_nll, output_head

    torch.manual_seed(0)
    base = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, n_positions=32, vocab_size=50, bos_token_id=0,
                                      eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    model = apply_lora(base, LoraSettings(target_modules=["c_attn"], modules_to_save=modules_to_save)).train()
    for p in model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.1)  # lora_B starts at zero: give every trained tensor a gradient path
    head = output_head(model)[0].head
    assert (type(head).__name__ == "ModulesToSaveWrapper") == bool(modules_to_save)
    ids = torch.randint(0, 50, (2, 12))
    labels = ids.clone()
    labels[1, :4] = -100
    monkeypatch.setattr("lit_lora.nll.LOSS_CHUNK_TOKENS", 7)
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
    assert max((grads[k] - full_grads[k]).abs().max().item() for k in grads) <= 1e-5
