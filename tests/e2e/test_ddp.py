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

import math
import os

import pytest
import torch

from tests.helpers import (BATCH, EPOCHS, N_TRAIN, STEPS_PER_EPOCH, TOL, checkpoint_file, epoch_order, lora_state,
                           max_diff, records, scalars)


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
def test_on_a_4bit_base_a_dpo_run_on_two_processes_trains_the_one_process_adapter_until_a_nan_stops_both(ddp_runs):
    """QLoRA and DPO under DDP: each process loads the base quantized by bitsandbytes' CPU library and runs the
    policy and the reference (the adapter off) on its half of the pairs; the two train the adapter one process
    trains on the same global batch (steps 2), and validate the same pair-weighted loss and rewards. Then rank
    1's loss turns NaN at step 4 while rank 0's is still finite: both stop (no rank left waiting in an
    all-reduce), before the step-4 checkpoint, and the step-2 checkpoint is intact. (One real DDP run for all
    of it: the suite's time. Its elastic resume is in tests/e2e/resume/test_multi_process.py.)"""
    pytest.importorskip("bitsandbytes")
    run, single = ddp_runs["dpo-ddp"], ddp_runs["dpo-single"]
    code, out, _ = ddp_runs["out"]["dpo-ddp"]
    assert code == 2, out[-3000:]
    assert ddp_runs["out"]["dpo-single"][0] == 0, ddp_runs["out"]["dpo-single"][2][-3000:]
    assert "linear layers nf4 (bitsandbytes" in out
    assert out.count("lit_lora: global batch = 2 devices x 2 x 1 accumulation = 4 samples") == 1
    assert "lit_lora: error: non-finite training loss" in out and "noticed after step 4" in out
    last = torch.load(checkpoint_file(run, "last.ckpt"), weights_only=True)
    assert last["global_step"] == 2 and all(torch.isfinite(v).all() for v in last["state_dict"].values())
    a = lora_state(checkpoint_file(single, "step000002.ckpt"))
    assert max_diff(last["state_dict"], a) <= TOL
    assert max(v.abs().max().item() for k, v in a.items() if "lora_B" in k) > 100 * TOL  # lora_B starts at 0
    assert not checkpoint_file(run, "step000004.ckpt").exists()
    # Validation (4 pairs, split across the ranks and summed) before any update, where the policy is the
    # reference (the loss log 2), and after step 2 (logged at 1): the one-process numbers.
    val_loss = dict(scalars(str(run / "lightning_logs"), "val_loss"))
    assert sorted(val_loss) == [0, 1] and abs(val_loss[0] - math.log(2)) <= 1e-5
    for tag in ("val_loss", "val_rewards/margins", "val_rewards/accuracies", "val_logps/chosen"):
        two, one = (dict(scalars(str(r / "lightning_logs"), tag)) for r in (run, single))
        assert 1 in two and all(abs(two[s] - one[s]) <= TOL for s in two), (tag, two, one)
