"""Resume across process counts: a DDP run (2 processes on CPU, gloo) resumed on two processes, on one,
and from one process to two, continues with the same batches and ends with the uninterrupted run's LoRA
weights; a signal to every process saves once and resumes exactly; a DPO run moves from two processes to
one. The runs are the session's `ddp_runs` (tests/e2e/conftest.py), which tests/e2e/test_ddp.py compares
with one process."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import EPOCHS, STEPS_PER_EPOCH, TOL, checkpoint_file, lora_state, max_diff, records, scalars


@pytest.mark.slow
def test_ddp_run_resumes_mid_epoch_on_two_processes(ddp_runs):
    # From step 2 (mid-epoch 0) across the end of epoch 0 to the SIGTERM at step 5: the same batches, and at
    # step 4 the same weights, as without the stop (the rest of the run is checked after the signal, below).
    run = ddp_runs["ddp-resumed"]
    assert ddp_runs["out"]["ddp-resumed"][1].count("lit_lora: resuming from ") == 1  # rank 0 only
    for r in (0, 1):
        again, full = records(run / f"rank{r}.jsonl"), records(ddp_runs["ddp"] / f"rank{r}.jsonl")
        assert again[0]["step"] == 2 and again == full[2:5] and again[-1]["epoch"] == 1
    step4 = f"step{STEPS_PER_EPOCH:06d}.ckpt"
    full = lora_state(checkpoint_file(ddp_runs["ddp"], step4))
    assert max_diff(lora_state(checkpoint_file(run, step4)), full) <= 1e-6


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
def test_signal_to_every_process_saves_once_and_resumes_exactly(ddp_runs):
    """SIGTERM to the process group (`kill -TERM -PGID`, as a cluster preempts a job; Lightning's launcher
    sends rank 1 a second one) of the run resumed on two processes above: all ranks stop after the same batch,
    last.ckpt is written once, exit 0, and resuming from it on one process with the same global batch ends with
    the uninterrupted run's weights (to float32 summation order). Ctrl-C (SIGINT, our handler, then the same
    stop) is what tests/e2e/resume/test_interrupted.py sends a one-process run."""
    out = ddp_runs["out"]["ddp-resumed"][1]
    assert out.count("lit_lora: received SIGTERM; saved ") == 1 and "at step 5." in out
    assert torch.load(checkpoint_file(ddp_runs["ddp-resumed"], "last.ckpt"), weights_only=True)["global_step"] == 5
    code, _, err = ddp_runs["out"]["signal-to-one"]
    assert code == 0, err[-3000:]
    run = ddp_runs["signal-to-one"]
    assert records(run / "rank0.jsonl") == records(ddp_runs["single"] / "rank0.jsonl")[5:]
    last = f"step{STEPS_PER_EPOCH * EPOCHS:06d}.ckpt"
    assert max_diff(lora_state(checkpoint_file(run, last)), lora_state(checkpoint_file(ddp_runs["ddp"], last))) <= TOL


@pytest.mark.slow
def test_a_mid_epoch_dpo_checkpoint_of_two_processes_continues_on_one_with_the_same_losses(ddp_runs):
    """Elastic resume of a preference run (DPO on a 4-bit base): the DDP run's step-2 checkpoint (2 processes
    x 2 pairs, mid-epoch 0 of 3 steps) continued by one process x 4 pairs logs the uninterrupted one-process
    run's losses and rewards from there on, into a reshuffled second epoch, and ends with its weights."""
    pytest.importorskip("bitsandbytes")
    code, _, err = ddp_runs["out"]["dpo-ddp-to-one"]
    assert code == 0, err[-3000:]
    assert ("lit_lora: resuming epoch 0 at sample 8 of 12 with 1 device(s) x 4 (the checkpoint ran 2 x 2)"
            in err.splitlines())
    run, single = ddp_runs["dpo-ddp-to-one"], ddp_runs["dpo-single"]
    for tag in ("train_loss", "train_rewards/margins", "train_logps/rejected"):
        again = dict(scalars(str(run / "lightning_logs"), tag))
        full = dict(scalars(str(single / "lightning_logs"), tag))
        assert sorted(again) == [s for s in sorted(full) if s >= 2] and len(again) == 4, (tag, again, full)
        assert max(abs(full[s] - again[s]) for s in again) <= TOL, (tag, again, full)
    last = lora_state(checkpoint_file(run, "step000006.ckpt"))
    assert max_diff(last, lora_state(checkpoint_file(single, "step000006.ckpt"))) <= TOL
