"""Two processes on CPU (DDP over gloo) train the same adapter as one process with the same global batch.

    python -m lit_lora.cli fit --config CFG --trainer.accelerator cpu --trainer.devices 2 --trainer.strategy ddp

DDP runs go through a subprocess: in-process, Lightning's launcher would start pytest again as rank 1.
Single-process runs are driven in-process (cheaper). Everything is deterministic: dropout is 0 in LoRA
and in the GPT-2 config, so the two-process and the one-process run differ only in float summation order.

Data: 32 blocks of 32 tokens, 4 validation blocks. DDP: 2 ranks x 4 samples per step; one process: 8 per
step. Rank r reads order[r::2] of the seeded epoch order, so at step s the two ranks together see
order[8s : 8s+8], exactly the one-process batch: 4 steps per epoch, 2 epochs, a checkpoint every 2 steps.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from lit_lora.cli import main
from lit_lora.data.samplers import ResumableSampler
from tests.conftest import QUICKSTART, REPO, save_tiny_gpt2
from tests.helpers import scalars

N_TRAIN, BATCH, STEPS_PER_EPOCH, EPOCHS = 32, 4, 4, 2  # BATCH per rank; one process uses 2 * BATCH
DATA_SEED = 42  # LitLoraData's default seed
TOL = 1e-5  # max abs difference of LoRA weights, DDP vs one process (float32 summation order)
DDP_FLAGS = ("--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    model = save_tiny_gpt2(root / "model", QUICKSTART / "tokenizer", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    # 4,100 characters of the quickstart corpus are 32 blocks of 32 tokens with its tokenizer (checked below).
    (root / "train.txt").write_text((QUICKSTART / "train.txt").read_text()[:4_100])
    (root / "val.txt").write_text((QUICKSTART / "val.txt").read_text()[:600])
    cfg = {
        "seed_everything": 1234,
        "model": {"model_name_or_path": str(model), "warmup_steps": 2, "learning_rate": 3e-3,
                  "gradient_checkpointing": True, "lora": {"dropout": 0.0}},
        "data": {"train_files": str(root / "train.txt"), "val_files": str(root / "val.txt"), "block_size": 32},
        "trainer": {"accelerator": "cpu", "max_epochs": EPOCHS, "log_every_n_steps": 1, "enable_progress_bar": False,
                    "enable_model_summary": False, "num_sanity_val_steps": 0,
                    "callbacks": [{"class_path": "tests.helpers.RecordRanks", "init_args": {"prefix": "rank"}}]},
        "checkpoint": {"monitor": None, "save_top_k": -1, "every_n_train_steps": 2, "filename": "step{step:06d}"},
        "samples": {"prompts": []},  # no text generation at validation: rank 1 would only wait for it
    }
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return root


def _start_ddp(cwd: Path, *args: str, torchrun: bool = False) -> subprocess.Popen:
    """`fit` with 2 processes, started in the background: Lightning's launcher starts rank 1 itself, or
    torchrun starts both (the multi-node launch of the README, on one machine)."""
    cwd.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    env.pop("PL_GLOBAL_SEED", None)
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"] if torchrun else [
        sys.executable]
    return subprocess.Popen([*launch, "-m", "lit_lora.cli", "fit", *args, *DDP_FLAGS], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _finish(proc: subprocess.Popen) -> str:
    """What both ranks printed; fails on a nonzero exit or a hang."""
    try:
        out, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # rank 1 too: it is in the same session
        out, _ = proc.communicate()
        pytest.fail(f"the DDP run hung:\n{out[-3000:]}")
    assert proc.returncode == 0, out[-4000:]
    return out


def _single(cwd: Path, *args: str) -> tuple[int, str, str]:
    """`fit` in this process, on one device, while DDP subprocesses use the other core: (exit code, stdout,
    stderr). Module-scoped fixtures cannot use capsys, so the output is captured by hand."""
    cwd.mkdir(exist_ok=True)
    mp = pytest.MonkeyPatch()
    out, err = io.StringIO(), io.StringIO()
    try:
        mp.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["fit", *args])
    finally:
        mp.undo()
    return code, out.getvalue(), err.getvalue()


def _ckpt(run: Path, name: str) -> Path:
    return run / "lightning_logs" / "lit_lora" / "version_0" / "checkpoints" / name


def _lora(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert sorted(a) == sorted(b)
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _order(epoch: int) -> list[int]:
    return ResumableSampler(N_TRAIN, seed=DATA_SEED).epoch_order(epoch)


@pytest.fixture(scope="module")
def runs(workdir):
    """Every run of this module, overlapped so that both cores stay busy (a DDP run's ranks start one after
    the other). Resumed runs start from a copy of a checkpoint in a folder of their own.

    - `ddp`: 2 processes from scratch, `--data.batch_size 4` (Lightning's launcher starts rank 1);
    - `single`: 1 process (in this one) from scratch, `--data.batch_size 8`;
    - `one-to-ddp`: 2 processes, under torchrun, from `single`'s step 4 (end of epoch 0);
    - `ddp-resumed`: 2 processes from `ddp`'s step 2 (mid-epoch 0), found by `--ckpt_path last`;
    - `ddp-to-one`: 1 process from `ddp`'s step 4 (end of epoch 0);
    - `ddp-mid-epoch-to-one`: 1 process from `ddp`'s step 2 (mid-epoch 0), elastic resume.
    The 2-process and 1-process runs use separate datasets caches, so no two runs write the same cache.
    """
    cfg = str(workdir / "cfg.yaml")
    two = ("--config", cfg, "--data.batch_size", str(BATCH), "--data.cache_dir", str(workdir / "cache-ddp"))
    one = ("--config", cfg, "--data.batch_size", str(2 * BATCH), "--data.cache_dir", str(workdir / "cache-single"))
    resume = ("--ckpt_path", "start.ckpt")
    dirs = {name: workdir / name for name in ("ddp", "single", "one-to-ddp", "ddp-resumed", "ddp-to-one",
                                                "ddp-mid-epoch-to-one")}

    def start_from(name: str, source: str, step: int) -> None:
        dirs[name].mkdir()
        shutil.copy(_ckpt(dirs[source], f"step{step:06d}.ckpt"), dirs[name] / "start.ckpt")

    out: dict[str, tuple[int, str, str]] = {}
    started: list[subprocess.Popen] = []
    try:
        started.append(ddp := _start_ddp(dirs["ddp"], *two))
        out["single"] = _single(dirs["single"], *one)
        assert out["single"][0] == 0, out["single"][2][-3000:]
        start_from("one-to-ddp", "single", STEPS_PER_EPOCH)
        started.append(one_to_ddp := _start_ddp(dirs["one-to-ddp"], *two, *resume, torchrun=True))
        out["ddp"] = (0, _finish(ddp), "")
        # As a user resumes: `--ckpt_path last`, which every rank looks up for itself.
        last = _ckpt(dirs["ddp-resumed"], "last.ckpt")
        last.parent.mkdir(parents=True)
        shutil.copy(_ckpt(dirs["ddp"], "step000002.ckpt"), last)
        started.append(ddp_resumed := _start_ddp(dirs["ddp-resumed"], *two, "--ckpt_path", "last"))
        for name, step in (("ddp-to-one", STEPS_PER_EPOCH), ("ddp-mid-epoch-to-one", 2)):
            start_from(name, "ddp", step)
            out[name] = _single(dirs[name], *one, *resume)
        out["one-to-ddp"] = (0, _finish(one_to_ddp), "")
        out["ddp-resumed"] = (0, _finish(ddp_resumed), "")
    finally:
        for proc in started:  # a failure above must not leave ranks running
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
    return dirs | {"out": out}


@pytest.mark.slow
def test_two_processes_split_the_data_and_train_the_one_process_adapter(runs):
    ddp, single = runs["ddp"], runs["single"]
    out = runs["out"]["ddp"][1]
    assert out.count("lit_lora: global batch = 2 devices x 4 x 1 accumulation = 8 samples") == 1  # rank 0 only
    assert "lit_lora: global batch = 1 device x 8 x 1 accumulation = 8 samples" in runs["out"]["single"][2]

    # World size 2; each rank saw half of every epoch, the two halves disjoint; the sampler's documented split.
    ranks = [_records(ddp / f"rank{r}.jsonl") for r in (0, 1)]
    one = _records(single / "rank0.jsonl")
    assert not (ddp / "rank2.jsonl").exists() and not (single / "rank1.jsonl").exists()
    assert len(one) == len(ranks[0]) == len(ranks[1]) == STEPS_PER_EPOCH * EPOCHS
    for r, recs in enumerate(ranks):
        assert all(x["rank"] == r and x["world_size"] == 2 and len(x["ids"]) == BATCH for x in recs)
    for epoch in range(EPOCHS):
        order = _order(epoch)
        seen = [[i for x in recs if x["epoch"] == epoch for i in x["ids"]] for recs in ranks]
        assert len(seen[0]) == len(seen[1]) == N_TRAIN // 2
        assert sorted(seen[0] + seen[1]) == list(range(N_TRAIN))  # all 32 blocks: the corpus size is as planned
        assert seen[0] == order[0::2] and seen[1] == order[1::2]
    # Per step, both ranks together hold exactly the one-process batch: order[8s : 8s+8].
    for s, x in enumerate(one):
        epoch, k = divmod(s, STEPS_PER_EPOCH)
        assert x["step"] == s and x["epoch"] == epoch
        assert x["ids"] == _order(epoch)[k * 2 * BATCH : (k + 1) * 2 * BATCH]
        assert sorted(ranks[0][s]["ids"] + ranks[1][s]["ids"]) == sorted(x["ids"])

    # The same LoRA weights at every checkpoint, and they moved far more than the tolerance.
    for step in range(2, STEPS_PER_EPOCH * EPOCHS + 1, 2):
        name = f"step{step:06d}.ckpt"
        a, b = _lora(_ckpt(ddp, name)), _lora(_ckpt(single, name))
        assert _max_diff(a, b) <= TOL, (name, _max_diff(a, b))
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
    out_one = runs["out"]["single"][2]
    saved_one = [line.split()[2] for line in out_one.splitlines() if line.startswith("lit_lora: saved ")]
    assert sorted(saved) == sorted(saved_one)
    steps = [f"step{s:06d}.ckpt" for s in range(2, STEPS_PER_EPOCH * EPOCHS + 1, 2)]
    assert sorted(os.path.basename(p) for p in saved) == sorted(steps + ["last.ckpt"] * len(steps))
    assert sorted(p.name for p in _ckpt(ddp, "").iterdir()) == sorted(steps + ["last.ckpt"])
    assert sorted(p.name for p in (ddp / "lightning_logs" / "lit_lora").iterdir()) == ["version_0"]
    assert len(list((ddp / "lightning_logs").rglob("events.out.tfevents.*"))) == 1
    assert out.count("lit_lora: exported ") == 1
    assert (ddp / "lightning_logs" / "lit_lora" / "version_0" / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_ddp_run_resumes_mid_epoch_on_two_processes(runs):
    # From step 2 (mid-epoch 0) to the end: the same batches and the same final weights as without the stop.
    run = runs["ddp-resumed"]
    assert runs["out"]["ddp-resumed"][1].count("lit_lora: resuming from ") == 1  # rank 0 only
    for r in (0, 1):
        again, full = _records(run / f"rank{r}.jsonl"), _records(runs["ddp"] / f"rank{r}.jsonl")
        assert again[0]["step"] == 2 and again == full[2:]
    last = f"step{STEPS_PER_EPOCH * EPOCHS:06d}.ckpt"
    assert _max_diff(_lora(_ckpt(run, last)), _lora(_ckpt(runs["ddp"], last))) <= 1e-6


@pytest.mark.slow
def test_end_of_epoch_checkpoints_move_between_one_and_two_processes(runs):
    last = f"step{STEPS_PER_EPOCH * EPOCHS:06d}.ckpt"
    # Two processes -> one: epoch 1 from the DDP run's end-of-epoch-0 checkpoint, as the one-process run did it.
    code, _, err = runs["out"]["ddp-to-one"]
    assert code == 0, err[-3000:]
    run = runs["ddp-to-one"]
    assert _records(run / "rank0.jsonl") == _records(runs["single"] / "rank0.jsonl")[STEPS_PER_EPOCH:]
    assert _max_diff(_lora(_ckpt(run, last)), _lora(_ckpt(runs["single"], last))) <= TOL

    # One process -> two (launched by torchrun): epoch 1 from the one-process run's end-of-epoch-0 checkpoint.
    run = runs["one-to-ddp"]
    for r in (0, 1):
        assert _records(run / f"rank{r}.jsonl") == _records(runs["ddp"] / f"rank{r}.jsonl")[STEPS_PER_EPOCH:]
    assert _max_diff(_lora(_ckpt(run, last)), _lora(_ckpt(runs["ddp"], last))) <= TOL


@pytest.mark.slow
def test_a_mid_epoch_checkpoint_continues_on_one_process_at_the_same_sample(runs):
    """Elastic resume: the DDP run's step-2 checkpoint (2 processes x 4, mid-epoch 0) continued by one process
    x 8, the same global batch, trains the one-process run's batches from step 2 and ends with its weights."""
    code, _, err = runs["out"]["ddp-mid-epoch-to-one"]
    assert code == 0, err[-3000:]
    assert ("lit_lora: resuming epoch 0 at sample 16 of 32 with 1 device(s) x 8 (the checkpoint ran 2 x 4)"
            in err.splitlines())
    run = runs["ddp-mid-epoch-to-one"]
    assert _records(run / "rank0.jsonl") == _records(runs["single"] / "rank0.jsonl")[2:]
    last = f"step{STEPS_PER_EPOCH * EPOCHS:06d}.ckpt"
    assert _max_diff(_lora(_ckpt(run, last)), _lora(_ckpt(runs["single"], last))) <= TOL


@pytest.mark.slow
# SIGTERM, as a cluster preempts a job; Ctrl-C (SIGINT, our handler, then the same stop) is what
# tests/test_faults.py sends a one-process run (one real DDP run less: the suite's 12 minutes).
@pytest.mark.parametrize("signum", [signal.SIGTERM], ids=["SIGTERM"])
def test_signal_to_every_process_saves_once_and_resumes_exactly(runs, workdir, signum):
    """`kill -TERM -PGID` reaches every rank (and Lightning's launcher sends rank 1 a second SIGTERM): all
    ranks stop after the same batch, last.ckpt is written once, exit 0, and resuming from it ends with the
    uninterrupted run's weights (on one process, to float32 summation order)."""
    name = signal.Signals(signum).name
    run = workdir / f"signal-{name}"
    flags = ("--config", str(workdir / "cfg.yaml"), "--data.batch_size", str(BATCH),
             "--data.cache_dir", str(workdir / f"cache-{name}"))
    proc = _start_ddp(run, *flags, "--trainer.callbacks+=tests.helpers.RecordBatches",
                      "--trainer.callbacks.path", str(run / "rec.jsonl"), "--trainer.callbacks.pause_at_step", "4",
                      "--trainer.callbacks.marker", str(run / "paused"), "--trainer.callbacks.until_signal", "true")
    while not (run / "paused").exists():  # both ranks wait before step 5 for the signal (no checkpoint due)
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.1)
    os.killpg(proc.pid, signum)
    out = _finish(proc)
    assert out.count(f"lit_lora: received {name}; saved ") == 1 and "at step 5." in out
    assert torch.load(_ckpt(run, "last.ckpt"), weights_only=True)["global_step"] == 5
    # Resumed on one process, the same global batch (test_ddp_run_resumes_mid_epoch_on_two_processes: on two).
    code, _, err = _single(run, "--config", str(workdir / "cfg.yaml"), "--data.batch_size", str(2 * BATCH),
                           "--data.cache_dir", str(workdir / f"cache-{name}-one"), "--ckpt_path", "last")
    assert code == 0, err[-3000:]
    last = f"step{STEPS_PER_EPOCH * EPOCHS:06d}.ckpt"
    assert _max_diff(_lora(_ckpt(run, last)), _lora(_ckpt(runs["ddp"], last))) <= TOL


@pytest.mark.slow
def test_on_a_4bit_base_two_processes_train_the_one_process_adapter_until_a_nan_stops_both(workdir):
    """QLoRA under DDP: each process loads the base quantized by bitsandbytes' CPU library, and the two
    train the adapter one process trains on the same global batch (step 2). Then rank 1's loss turns NaN at
    step 4 while rank 0's is still finite: both stop (no rank left waiting in an all-reduce), before the
    step-4 checkpoint, and the step-2 checkpoint is intact. (One real DDP run for both: the suite's time.)"""
    pytest.importorskip("bitsandbytes")
    run, single = workdir / "nan-on-rank-1", workdir / "qlora-single"
    flags = ("--config", str(workdir / "cfg.yaml"), "--model.quantization", "nf4", "--trainer.max_epochs", "1")
    proc = _start_ddp(run, *flags, "--data.batch_size", str(BATCH), "--data.cache_dir", str(workdir / "cache-nan"),
                      "--trainer.callbacks+=tests.helpers.Poison", "--trainer.callbacks.at_step", "3",
                      "--trainer.callbacks.rank", "1")
    try:
        code, _, err = _single(single, *flags, "--data.batch_size", str(2 * BATCH), "--trainer.max_steps", "2",
                               "--data.cache_dir", str(workdir / "cache-qlora-single"))
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
    last = torch.load(_ckpt(run, "last.ckpt"), weights_only=True)
    assert last["global_step"] == 2 and all(torch.isfinite(v).all() for v in last["state_dict"].values())
    assert _max_diff(last["state_dict"], _lora(_ckpt(single, "step000002.ckpt"))) <= TOL
    assert not _ckpt(run, "step000004.ckpt").exists()


def test_fsdp_config_builds_the_stated_strategy():
    # Lightning's FSDP needs CUDA, so on CPU we check what conf/gpt2-fsdp.yaml builds, without a Trainer.
    from jsonargparse import ArgumentParser
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.fsdp import ShardingStrategy
    from lit_lora.model import LitLora
    from lit_lora.training.distributed import DecoderLayerPolicy

    strategy = yaml.safe_load((REPO / "conf" / "gpt2-fsdp.yaml").read_text())["trainer"]["strategy"]
    parser = ArgumentParser()
    parser.add_argument("--strategy", type=FSDPStrategy)
    built = parser.instantiate_classes(parser.parse_object({"strategy": strategy})).strategy
    policy = built.kwargs["auto_wrap_policy"]
    assert isinstance(policy, DecoderLayerPolicy)
    # As FSDP calls it: the root first, then each module; GPT-2's blocks are the units (tests/test_families.py
    # checks the other families).
    root = LitLora(model_config=dict(n_layer=2, n_embd=32, n_head=2), tokenizer_name_or_path=str(QUICKSTART / "tokenizer"),
                   block_size=32, gradient_checkpointing=False)
    assert policy(root, recurse=True, nonwrapped_numel=0)
    units = [name for name, m in root.named_modules() if policy(m, recurse=False, nonwrapped_numel=0)]
    assert units == ["model.base_model.model.transformer.h.0", "model.base_model.model.transformer.h.1"]
    assert built.kwargs["use_orig_params"] is True  # frozen and LoRA weights share FSDP units
    assert built.sharding_strategy == ShardingStrategy.FULL_SHARD
    assert built._state_dict_type == "full"  # one LoRA-only file, written by rank 0


def test_lora_keys_ignore_fsdp_wrapper_names(tiny_model_dir):
    # FSDP's auto-wrap puts each GPT2Block under `_fsdp_wrapped_module`; the state dicts it gathers do not
    # have that name, so the LoRA-only filter must not either.
    from lit_lora.model import LitLora

    module = LitLora(model_name_or_path=str(tiny_model_dir), block_size=32, gradient_checkpointing=False)
    keys = module.trainable_keys()
    full = module.state_dict()

    class Wrapper(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self._fsdp_wrapped_module = inner

    blocks = module.model.base_model.model.transformer.h
    for i in range(len(blocks)):
        blocks[i] = Wrapper(blocks[i])
    assert any("_fsdp_wrapped_module" in n for n, _ in module.model.named_parameters())
    assert module.trainable_keys() == keys
    assert keys < set(full) and all("lora_" in k for k in keys)
    assert len(keys) == sum(p.requires_grad for p in module.parameters())

