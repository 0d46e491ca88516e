"""Resume across process counts: a DDP run (2 processes on CPU, gloo) resumed on two processes, on one,
and from one process to two, continues with the same batches and ends with the uninterrupted run's LoRA
weights; a signal to every process saves once and resumes exactly. The runs are the session's `ddp_runs`
(tests/e2e/conftest.py), which tests/e2e/test_ddp.py compares with one process."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch

from tests.helpers import (BATCH, EPOCHS, STEPS_PER_EPOCH, TOL, checkpoint_file, finish_ddp, fit_in_process, lora_state,
                           max_diff, records, start_ddp)


@pytest.mark.slow
def test_ddp_run_resumes_mid_epoch_on_two_processes(ddp_runs):
    # From step 2 (mid-epoch 0) to the end: the same batches and the same final weights as without the stop.
    run = ddp_runs["ddp-resumed"]
    assert ddp_runs["out"]["ddp-resumed"][1].count("lit_lora: resuming from ") == 1  # rank 0 only
    for r in (0, 1):
        again, full = records(run / f"rank{r}.jsonl"), records(ddp_runs["ddp"] / f"rank{r}.jsonl")
        assert again[0]["step"] == 2 and again == full[2:]
    last = f"step{STEPS_PER_EPOCH * EPOCHS:06d}.ckpt"
    assert max_diff(lora_state(checkpoint_file(run, last)), lora_state(checkpoint_file(ddp_runs["ddp"], last))) <= 1e-6


@pytest.mark.slow
def test_end_of_epoch_checkpoints_move_between_one_and_two_processes(ddp_runs):
    last = f"step{STEPS_PER_EPOCH * EPOCHS:06d}.ckpt"
    # Two processes -> one: epoch 1 from the DDP run's end-of-epoch-0 checkpoint, as the one-process run did it.
    code, _, err = ddp_runs["out"]["ddp-to-one"]
    assert code == 0, err[-3000:]
    run = ddp_runs["ddp-to-one"]
    assert records(run / "rank0.jsonl") == records(ddp_runs["single"] / "rank0.jsonl")[STEPS_PER_EPOCH:]
    single = lora_state(checkpoint_file(ddp_runs["single"], last))
    assert max_diff(lora_state(checkpoint_file(run, last)), single) <= TOL

    # One process -> two (launched by torchrun): epoch 1 from the one-process run's end-of-epoch-0 checkpoint.
    run = ddp_runs["one-to-ddp"]
    for r in (0, 1):
        assert records(run / f"rank{r}.jsonl") == records(ddp_runs["ddp"] / f"rank{r}.jsonl")[STEPS_PER_EPOCH:]
    assert max_diff(lora_state(checkpoint_file(run, last)), lora_state(checkpoint_file(ddp_runs["ddp"], last))) <= TOL


@pytest.mark.slow
def test_a_mid_epoch_checkpoint_continues_on_one_process_at_the_same_sample(ddp_runs):
    """Elastic resume: the DDP run's step-2 checkpoint (2 processes x 4, mid-epoch 0) continued by one process
    x 8, the same global batch, trains the one-process run's batches from step 2 and ends with its weights."""
    code, _, err = ddp_runs["out"]["ddp-mid-epoch-to-one"]
    assert code == 0, err[-3000:]
    assert ("lit_lora: resuming epoch 0 at sample 16 of 32 with 1 device(s) x 8 (the checkpoint ran 2 x 4)"
            in err.splitlines())
    run = ddp_runs["ddp-mid-epoch-to-one"]
    assert records(run / "rank0.jsonl") == records(ddp_runs["single"] / "rank0.jsonl")[2:]
    last = f"step{STEPS_PER_EPOCH * EPOCHS:06d}.ckpt"
    single = lora_state(checkpoint_file(ddp_runs["single"], last))
    assert max_diff(lora_state(checkpoint_file(run, last)), single) <= TOL


@pytest.mark.slow
# SIGTERM, as a cluster preempts a job; Ctrl-C (SIGINT, our handler, then the same stop) is what
# tests/e2e/resume/test_interrupted.py sends a one-process run (one real DDP run less: the suite's 12 minutes).
@pytest.mark.parametrize("signum", [signal.SIGTERM], ids=["SIGTERM"])
def test_signal_to_every_process_saves_once_and_resumes_exactly(ddp_runs, ddp_workdir, signum):
    """`kill -TERM -PGID` reaches every rank (and Lightning's launcher sends rank 1 a second SIGTERM): all
    ranks stop after the same batch, last.ckpt is written once, exit 0, and resuming from it ends with the
    uninterrupted run's weights (on one process, to float32 summation order)."""
    name = signal.Signals(signum).name
    run = ddp_workdir / f"signal-{name}"
    flags = ("--config", str(ddp_workdir / "cfg.yaml"), "--data.batch_size", str(BATCH),
             "--data.cache_dir", str(ddp_workdir / f"cache-{name}"))
    proc = start_ddp(run, *flags, "--trainer.callbacks+=tests.helpers.RecordBatches",
                      "--trainer.callbacks.path", str(run / "rec.jsonl"), "--trainer.callbacks.pause_at_step", "4",
                      "--trainer.callbacks.marker", str(run / "paused"), "--trainer.callbacks.until_signal", "true")
    while not (run / "paused").exists():  # both ranks wait before step 5 for the signal (no checkpoint due)
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.1)
    os.killpg(proc.pid, signum)
    out = finish_ddp(proc)
    assert out.count(f"lit_lora: received {name}; saved ") == 1 and "at step 5." in out
    assert torch.load(checkpoint_file(run, "last.ckpt"), weights_only=True)["global_step"] == 5
    # Resumed on one process, the same global batch (test_ddp_run_resumes_mid_epoch_on_two_processes: on two).
    code, _, err = fit_in_process(run, "--config", str(ddp_workdir / "cfg.yaml"), "--data.batch_size", str(2 * BATCH),
                           "--data.cache_dir", str(ddp_workdir / f"cache-{name}-one"), "--ckpt_path", "last")
    assert code == 0, err[-3000:]
    last = f"step{STEPS_PER_EPOCH * EPOCHS:06d}.ckpt"
    assert max_diff(lora_state(checkpoint_file(run, last)), lora_state(checkpoint_file(ddp_runs["ddp"], last))) <= TOL
