"""Two processes on CPU (DDP over gloo) train the same adapter as one process with the same global batch.

    python -m lit_lora.cli fit --config CFG --trainer.accelerator cpu --trainer.devices 2 --trainer.strategy ddp

DDP ddp_runs go through a subprocess: in-process, Lightning's launcher would start pytest again as rank 1.
Single-process ddp_runs are driven in-process (cheaper). Everything is deterministic: dropout is 0 in LoRA
and in the GPT-2 config, so the two-process and the one-process run differ only in float summation order.

Data: 32 blocks of 32 tokens, 4 validation blocks. DDP: 2 ranks x 4 samples per step; one process: 8 per
step. Rank r reads order[r::2] of the seeded epoch order, so at step s the two ranks together see
order[8s : 8s+8], exactly the one-process batch: 4 steps per epoch, 2 epochs, a checkpoint every 2 steps.
The runs are the session's `ddp_runs` (tests/e2e/conftest.py); their resumes are checked in tests/e2e/resume/.
"""

from __future__ import annotations

import os
import signal
import subprocess

import pytest
import torch

from tests.helpers import (BATCH, EPOCHS, N_TRAIN, STEPS_PER_EPOCH, TOL, checkpoint_file, epoch_order, fit_in_process,
                           lora_state, max_diff, records, scalars, start_ddp)


@pytest.mark.slow
def test_two_processes_split_the_data_and_train_the_one_process_adapter(ddp_runs):
    ddp, single = ddp_runs["ddp"], ddp_runs["single"]
    out = ddp_runs["out"]["ddp"][1]
    assert out.count("lit_lora: global batch = 2 devices x 4 x 1 accumulation = 8 samples") == 1  # rank 0 only
    assert "lit_lora: global batch = 1 device x 8 x 1 accumulation = 8 samples" in ddp_runs["out"]["single"][2]

    # World size 2; each rank saw half of every epoch, the two halves disjoint; the sampler's documented split.
    ranks = [records(ddp / f"rank{r}.jsonl") for r in (0, 1)]
    one = records(single / "rank0.jsonl")
    assert not (ddp / "rank2.jsonl").exists() and not (single / "rank1.jsonl").exists()
    assert len(one) == len(ranks[0]) == len(ranks[1]) == STEPS_PER_EPOCH * EPOCHS
    for r, recs in enumerate(ranks):
        assert all(x["rank"] == r and x["world_size"] == 2 and len(x["ids"]) == BATCH for x in recs)
    for epoch in range(EPOCHS):
        order = epoch_order(epoch)
        seen = [[i for x in recs if x["epoch"] == epoch for i in x["ids"]] for recs in ranks]
        assert len(seen[0]) == len(seen[1]) == N_TRAIN // 2
        assert sorted(seen[0] + seen[1]) == list(range(N_TRAIN))  # all 32 blocks: the corpus size is as planned
        assert seen[0] == order[0::2] and seen[1] == order[1::2]
    # Per step, both ranks together hold exactly the one-process batch: order[8s : 8s+8].
    for s, x in enumerate(one):
        epoch, k = divmod(s, STEPS_PER_EPOCH)
        assert x["step"] == s and x["epoch"] == epoch
        assert x["ids"] == epoch_order(epoch)[k * 2 * BATCH : (k + 1) * 2 * BATCH]
        assert sorted(ranks[0][s]["ids"] + ranks[1][s]["ids"]) == sorted(x["ids"])

    # The same LoRA weights at every checkpoint, and they moved far more than the tolerance.
    for step in range(2, STEPS_PER_EPOCH * EPOCHS + 1, 2):
        name = f"step{step:06d}.ckpt"
        a, b = lora_state(checkpoint_file(ddp, name)), lora_state(checkpoint_file(single, name))
        assert max_diff(a, b) <= TOL, (name, max_diff(a, b))
    assert max(v.abs().max().item() for k, v in a.items() if "lora_B" in k) > 100 * TOL  # lora_B starts at 0

    # Validation is split across ranks and summed: the same token-weighted val_loss as one process.
    val_ddp = scalars(str(ddp / "lightning_logs"), "val_loss")
    val_one = scalars(str(single / "lightning_logs"), "val_loss")
    assert [s for s, _ in val_ddp] == [s for s, _ in val_one] == [3, 7]
    for (_, x), (_, y) in zip(val_ddp, val_one):
        assert abs(x - y) <= TOL

    # Rank 0 alone writes: one "saved" line per file written, the same files as one process, one log folder,
    # one TensorBoard event file, one exported adapter.
    saved = [line.split()[2] for line in out.splitlines() if line.startswith("lit_lora: saved ")]
    out_one = ddp_runs["out"]["single"][2]
    saved_one = [line.split()[2] for line in out_one.splitlines() if line.startswith("lit_lora: saved ")]
    assert sorted(saved) == sorted(saved_one)
    steps = [f"step{s:06d}.ckpt" for s in range(2, STEPS_PER_EPOCH * EPOCHS + 1, 2)]
    assert sorted(os.path.basename(p) for p in saved) == sorted(steps + ["last.ckpt"] * len(steps))
    assert sorted(p.name for p in checkpoint_file(ddp, "").iterdir()) == sorted(steps + ["last.ckpt"])
    assert sorted(p.name for p in (ddp / "lightning_logs" / "lit_lora").iterdir()) == ["version_0"]
    assert len(list((ddp / "lightning_logs").rglob("events.out.tfevents.*"))) == 1
    assert out.count("lit_lora: exported ") == 1
    assert (ddp / "lightning_logs" / "lit_lora" / "version_0" / "adapter" / "adapter_model.safetensors").is_file()
    # --eval_tasks ran on rank 0 alone, once per validation, logged where val_loss is; the weights above equal
    # those of the one-process run, which evaluated nothing.
    assert out.count("lit_lora: eval_tasks at step ") == 2
    assert [s for s, _ in scalars(str(ddp / "lightning_logs"), "eval/lit_lora_quickstart_places/acc")] == [3, 7]


@pytest.mark.slow
def test_on_a_4bit_base_two_processes_train_the_one_process_adapter_until_a_nan_stops_both(ddp_workdir):
    """QLoRA under DDP: each process loads the base quantized by bitsandbytes' CPU library, and the two
    train the adapter one process trains on the same global batch (step 2). Then rank 1's loss turns NaN at
    step 4 while rank 0's is still finite: both stop (no rank left waiting in an all-reduce), before the
    step-4 checkpoint, and the step-2 checkpoint is intact. (One real DDP run for both: the suite's time.)"""
    pytest.importorskip("bitsandbytes")
    run, single = ddp_workdir / "nan-on-rank-1", ddp_workdir / "qlora-single"
    flags = ("--config", str(ddp_workdir / "cfg.yaml"), "--model.quantization", "nf4", "--trainer.max_epochs", "1")
    proc = start_ddp(run, *flags, "--data.batch_size", str(BATCH), "--data.cache_dir", str(ddp_workdir / "cache-nan"),
                      "--trainer.callbacks+=tests.helpers.Poison", "--trainer.callbacks.at_step", "3",
                      "--trainer.callbacks.rank", "1")
    try:
        code, _, err = fit_in_process(single, *flags, "--data.batch_size", str(2 * BATCH), "--trainer.max_steps", "2",
                               "--data.cache_dir", str(ddp_workdir / "cache-qlora-single"))
        assert code == 0, err[-3000:]
        out, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"a rank hung after the non-finite loss:\n{proc.communicate()[0][-3000:]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 2, out[-3000:]
    assert "linear layers nf4 (bitsandbytes" in out
    assert "lit_lora: error: non-finite training loss" in out and "noticed after step 4" in out
    last = torch.load(checkpoint_file(run, "last.ckpt"), weights_only=True)
    assert last["global_step"] == 2 and all(torch.isfinite(v).all() for v in last["state_dict"].values())
    assert max_diff(last["state_dict"], lora_state(checkpoint_file(single, "step000002.ckpt"))) <= TOL
    assert not checkpoint_file(run, "step000004.ckpt").exists()
