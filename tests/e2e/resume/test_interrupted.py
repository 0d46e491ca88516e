"""Interrupted runs: one killed with SIGKILL mid-epoch and resumed matches the uninterrupted run; one stopped
by a signal saves a resumable checkpoint, exits cleanly and resumes from it.

The killed run is a subprocess, because kill -9 is the point; the uninterrupted and the resumed runs are
driven in this process (each subprocess costs the Lightning import, ~5 s).
"""

from __future__ import annotations

import json
import signal
import time

import pytest
import torch
import yaml

from tests.helpers import run_cli, scalars, start_cli

N = 12  # checkpoint and kill after step N of 2N; the resumed half crosses an epoch end


def _config(tmp, model_dir, corpus, record: str, pause_at_step: int = 0) -> str:
    cfg = {
        "seed_everything": 1234,
        "model": {"model_name_or_path": str(model_dir), "warmup_steps": 3, "learning_rate": 3e-3,
                  "lora": {"dropout": 0.1}},  # dropout on everywhere: the RNG state must be restored
        "data": {"train_files": str(corpus), "block_size": 32, "batch_size": 4, "val_fraction": 0.1,
                 "shuffle": True, "cache_dir": str(tmp / "hf-cache")},
        "trainer": {
            "max_steps": 2 * N, "log_every_n_steps": 1, "enable_progress_bar": False,
            "enable_model_summary": False, "num_sanity_val_steps": 2,
            "callbacks": [{"class_path": "tests.helpers.RecordBatches",
                           "init_args": {"path": record, "pause_at_step": pause_at_step,
                                         "marker": str(tmp / "paused")}}],
        },
        "checkpoint": {"every_n_train_steps": N // 2},
    }
    path = tmp / f"cfg-{pause_at_step}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _records(path) -> list[dict]:
    return [json.loads(line) for line in open(path)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shakespeare):
    # About 18 steps per epoch at 32-token blocks and batch 4: step N is mid-epoch, step 2N in the next.
    text = shakespeare.read_text()[:3_500]
    path = tmp_path_factory.mktemp("resume-corpus") / "c.txt"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def stopped(tmp_path_factory, tiny_model_dir, corpus, shakespeare):
    """The two stopped runs, started at once as processes while the uninterrupted one runs here (each
    process's start-up is mostly imports, which the two cores do side by side): `cut`, killed with SIGKILL
    before batch N+1 (after the step-N checkpoint), and `signalled`, sent SIGINT while it waits at step 5.
    Their resumes run in the tests, in this process."""
    root = tmp_path_factory.mktemp("interrupted")
    full, cut, signalled = root / "full", root / "cut", root / "signalled"
    full.mkdir(), cut.mkdir(), signalled.mkdir()
    procs = {"cut": start_cli(cut, "fit", "--config", _config(cut, tiny_model_dir, corpus, str(cut / "rec.jsonl"), N)),
             "signalled": start_cli(signalled, "fit", "--config", _signal_config(signalled, tiny_model_dir,
                                                                                  shakespeare))}
    try:
        run_cli(["fit", "--config", _config(full, tiny_model_dir, corpus, str(full / "rec.jsonl"))], cwd=full)
        for name, signum in (("signalled", signal.SIGINT), ("cut", signal.SIGKILL)):
            proc, folder = procs[name], root / name
            while not (folder / "paused").exists():
                assert proc.poll() is None, proc.stdout.read()[-3000:]
                time.sleep(0.1)
            proc.send_signal(signum)
        out, _ = procs["signalled"].communicate(timeout=120)
        procs["cut"].wait()
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return {"full": full, "cut": cut, "signalled": signalled, "code": procs["signalled"].returncode, "out": out}


@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume_matches_uninterrupted_run(stopped, tiny_model_dir, corpus, capsys):
    full, cut = stopped["full"], stopped["cut"]
    run = cut / "lightning_logs" / "lit_lora" / "version_0"
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == N and ckpt["epoch"] == 0  # saved mid-epoch
    capsys.readouterr()
    run_cli(["fit", "--config", _config(cut, tiny_model_dir, corpus, str(cut / "rec.jsonl")), "--ckpt_path", "last"],
            cwd=cut)
    assert "resuming from" in capsys.readouterr().err

    # The same batches: the first resumed batch is the one the uninterrupted run saw at step N.
    full_rec, cut_rec = _records(full / "rec.jsonl"), _records(cut / "rec.jsonl")
    assert [r["step"] for r in cut_rec] == list(range(2 * N))
    assert cut_rec[N] == full_rec[N]
    assert cut_rec == full_rec
    assert full_rec[-1]["epoch"] == 1, "the run must cross an epoch boundary after the resume"

    # The same per-step losses (dropout masks included) and the same final LoRA weights.
    loss_full = dict(scalars(str(full / "lightning_logs"), "train_loss"))
    loss_cut = dict(scalars(str(cut / "lightning_logs"), "train_loss"))
    assert sorted(loss_full) == sorted(loss_cut) and len(loss_full) == 2 * N
    for step, value in loss_full.items():
        assert abs(loss_cut[step] - value) <= 1e-6, (step, value, loss_cut[step])
    w_full = torch.load(full / "lightning_logs/lit_lora/version_0/checkpoints/last.ckpt", weights_only=True)
    w_cut = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert w_full["global_step"] == w_cut["global_step"] == 2 * N
    for key, value in w_full["state_dict"].items():
        assert (value - w_cut["state_dict"][key]).abs().max() <= 1e-6, key
    # Resumed in the same run folder, not a new version_1.
    assert not (cut / "lightning_logs" / "lit_lora" / "version_1").exists()


def _signal_config(tmp, model_dir, corpus) -> str:
    cfg = {
        "model": {"model_name_or_path": str(model_dir), "warmup_steps": 2},
        "data": {"train_files": str(corpus), "block_size": 32, "batch_size": 4, "cache_dir": str(tmp / "c")},
        "trainer": {"max_steps": 40, "log_every_n_steps": 1, "enable_progress_bar": False,
                    "enable_model_summary": False,
                    "callbacks": [{"class_path": "tests.helpers.RecordBatches",
                                   "init_args": {"path": str(tmp / "rec.jsonl"), "pause_at_step": 5,
                                                 "marker": str(tmp / "paused"), "until_signal": True}}]},
    }
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.mark.slow
# Ctrl-C (SIGINT, our handler), as on a desk's one GPU; SIGTERM (Lightning's handler, then the same stop)
# is what test_multi_process.py sends every process of a real run, as a cluster preempts (one real run less).
def test_signal_saves_resumable_checkpoint_and_exits_cleanly(stopped):
    tmp_path, out = stopped["signalled"], stopped["out"]
    assert stopped["code"] == 0, out[-3000:]
    assert "lit_lora: received SIGINT; stopping after the current batch" in out  # at once
    assert "lit_lora: received SIGINT; saved" in out and "at step 6" in out
    # Stopped after that batch: no validation ran after the signal (it would have saved a best checkpoint).
    assert sorted(p.name for p in (tmp_path / "lightning_logs/lit_lora/version_0/checkpoints").iterdir()) == \
        ["last.ckpt"]
    ckpt = torch.load(tmp_path / "lightning_logs/lit_lora/version_0/checkpoints/last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 6 and ckpt["LitLoraData"]["batches_done"] == 6
    assert "exported" not in out  # an interrupted run is not exported as if it had finished
    assert "weights_only" not in out  # Lightning's "`weights_only` was not set" line (a quiet run)
    # and it resumes from there
    cfg = yaml.safe_load(open(tmp_path / "cfg.yaml"))
    cfg["trainer"]["max_steps"] = 8
    cfg["trainer"]["callbacks"] = []
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    run_cli(["fit", "--config", str(tmp_path / "cfg.yaml"), "--ckpt_path", "last"], cwd=tmp_path)  # here: cheaper
    ckpt = torch.load(tmp_path / "lightning_logs/lit_lora/version_0/checkpoints/last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 8
