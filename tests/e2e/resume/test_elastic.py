"""Elastic resume on one process: a checkpoint continued with another batch size trains each sample of its
epoch once, in the epoch's global order, and with the same global batch ends with the uninterrupted weights.

(Two processes -> one is in test_multi_process.py.) In-process runs of a 2-layer GPT-2 with dropout off: 32 blocks,
batch 4, 8 steps per epoch, 2 epochs, a checkpoint after every step.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml

from lit_lora.data.samplers import ResumableSampler
from tests.conftest import QUICKSTART, save_tiny_gpt2
from tests.helpers import checkpoint_file, fit_in_process, lora_state, max_diff

N_TRAIN, STEPS_PER_EPOCH = 32, 8


def _order(epoch: int) -> list[int]:
    return ResumableSampler(N_TRAIN, seed=42).epoch_order(epoch)


def _ids(run, epoch: int) -> list[int]:
    records = [json.loads(line) for line in (run / "rank0.jsonl").read_text().splitlines()]
    return [i for r in records if r["epoch"] == epoch for i in r["ids"]]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """`full`: batch 4 from scratch; `halves`: from full's step 2 (mid-epoch 0), batch 2 accumulating 2 (the
    same global batch); `after-last`: from full's step 8 (written at epoch 0's last batch), batch 2."""
    root = tmp_path_factory.mktemp("elastic")
    model = save_tiny_gpt2(root / "model", QUICKSTART / "tokenizer", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    (root / "train.txt").write_text((QUICKSTART / "train.txt").read_text()[:4_100])  # 32 blocks of 32 tokens
    cfg = {
        "seed_everything": 1234,
        "model": {"model_name_or_path": str(model), "warmup_steps": 2, "learning_rate": 3e-3, "lora": {"dropout": 0.0}},
        "data": {"train_files": str(root / "train.txt"), "val_fraction": 0.0, "block_size": 32,
                 "cache_dir": str(root / "cache")},
        "trainer": {"max_epochs": 2, "log_every_n_steps": 1, "enable_progress_bar": False,
                    "enable_model_summary": False, "num_sanity_val_steps": 0,
                    "callbacks": [{"class_path": "tests.helpers.RecordRanks", "init_args": {"prefix": "rank"}}]},
        "checkpoint": {"monitor": None, "save_top_k": -1, "every_n_train_steps": 1, "filename": "step{step:06d}"},
        "samples": {"prompts": []},
    }
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    flags = ("--config", str(root / "cfg.yaml"))
    out = {"full": fit_in_process(root / "full", *flags, "--data.batch_size", "4")}
    for name, step, extra in (("halves", 2, ("--trainer.accumulate_grad_batches", "2")), ("after-last", 8, ())):
        (root / name).mkdir()
        shutil.copy(checkpoint_file(root / "full", f"step{step:06d}.ckpt"), root / name / "start.ckpt")
        out[name] = fit_in_process(root / name, *flags, "--data.batch_size", "2", "--ckpt_path", "start.ckpt", *extra)
    for name, (code, _, err) in out.items():
        assert code == 0, (name, err[-3000:])
    return {name: root / name for name in out} | {"out": out}


def test_a_mid_epoch_checkpoint_continues_with_another_batch_size_at_the_same_sample(runs):
    full, halves = runs["full"], runs["halves"]
    assert _ids(full, 0) == _order(0) and _ids(full, 1) == _order(1)
    assert ("lit_lora: resuming epoch 0 at sample 8 of 32 with 1 device(s) x 2 (the checkpoint ran 1 x 4)"
            in runs["out"]["halves"][2].splitlines())
    # The rest of epoch 0 from sample 8, then all of epoch 1 (a fresh loader: 16 batches of 2, not 14).
    assert _ids(halves, 0) == _order(0)[8:] and _ids(halves, 1) == _order(1)
    # Batch 2 x 2 accumulated is the same global batch as 4: the same optimizer steps, learning rates
    # included (the schedule counts the resumed epoch's steps), and the same final weights.
    last = f"step{2 * STEPS_PER_EPOCH:06d}.ckpt"
    assert torch.load(checkpoint_file(halves, last), weights_only=True)["global_step"] == 2 * STEPS_PER_EPOCH
    a, b = lora_state(checkpoint_file(full, last)), lora_state(checkpoint_file(halves, last))
    assert max_diff(a, b) <= 1e-5
    assert max(v.abs().max().item() for k, v in a.items() if "lora_B" in k) > 1e-3  # they did train


def test_a_checkpoint_at_an_epochs_last_batch_continues_with_a_whole_next_epoch(runs):
    # Lightning moves on to epoch 1 with its batch counter at 8; this run has 16 batches per epoch, and all
    # of them come (not the last 8 only), then training ends after epoch 1.
    run = runs["after-last"]
    assert _ids(run, 0) == [] and _ids(run, 1) == _order(1)
    steps = [json.loads(line)["step"] for line in (run / "rank0.jsonl").read_text().splitlines()]
    assert steps == list(range(8, 24))
