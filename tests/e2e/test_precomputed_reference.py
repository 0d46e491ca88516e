"""`--reference.precompute_ref_log_probs`: a DPO run whose reference log-probabilities were computed before
training logs the losses and metrics of a run that computes them each step, and a second run reuses them."""

from __future__ import annotations

import pytest

from tests.conftest import QUICKSTART, save_tiny_gpt2
from tests.e2e.test_preference_run import DPO, _flags, _pairs
from tests.helpers import fit_in_process, scalars

TAGS = ("train_loss", "train_rewards/margins", "train_logps/chosen", "val_loss", "val_rewards/margins",
        "val_rewards/accuracies")
PRECOMPUTE = ["--reference.precompute_ref_log_probs", "true"]


def test_precomputed_reference_gives_the_same_losses_and_is_reused(tmp_path):
    # No dropout in the base: a reference run each step in training mode then equals the precomputed one.
    model = save_tiny_gpt2(tmp_path / "model", QUICKSTART / "tokenizer", resid_pdrop=0.0, embd_pdrop=0.0,
                           attn_pdrop=0.0)
    flags = [*_flags(tmp_path, model, _pairs(tmp_path / "pairs.jsonl")), *DPO, "--trainer.max_steps", "2",
             "--trainer.val_check_interval", "2"]
    runs = {}
    for name, extra in (("each_step", []), ("precomputed", PRECOMPUTE), ("reused", PRECOMPUTE)):
        code, _, err = fit_in_process(tmp_path / name, *flags, *extra)
        assert code == 0, err[-3000:]
        runs[name] = (err, {tag: dict(scalars(str(tmp_path / name / "lightning_logs"), tag)) for tag in TAGS})
    assert "reference log-probs: computed for 12 train / 4 val pairs in " in runs["precomputed"][0]
    assert "reference log-probs: reused from cache for 12 train / 4 val pairs (cached in " in runs["reused"][0]
    assert "reference log-probs" not in runs["each_step"][0]
    for name in ("precomputed", "reused"):
        for tag in TAGS:
            want, got = runs["each_step"][1][tag], runs[name][1][tag]
            assert want and sorted(got) == sorted(want), tag
            assert max(abs(got[s] - want[s]) for s in want) <= 1e-6, (name, tag)
    val_loss = runs["precomputed"][1]["val_loss"]
    assert val_loss[max(val_loss)] < val_loss[0] - 1e-3  # it learned: the check compares a moving run
