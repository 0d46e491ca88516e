"""Fixtures of the end-to-end tests that several files read: each expensive run is done once per session
(session scope) and shared, so that a run's checks and its resume check never fit the same thing twice."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import pytest
import torch
import yaml

from tests.conftest import QUICKSTART, REPO, save_tiny_gpt2
from tests.helpers import (BATCH, EPOCHS, FAMILIES, QLORA_FAMILIES, RUN_BATCH, RUN_BLOCK, RUN_SAVE_EVERY,
                           RUN_STEPS, STEPS_PER_EPOCH, VOCAB, bos_tokenizer_dir, checkpoint_file, checkpoints_dir,
                           cli_output, finish_ddp, fit_in_process, preference_pairs, save_qlora_base, start_ddp)

STEPS, SAVE_EVERY, BLOCK = RUN_STEPS, RUN_SAVE_EVERY, RUN_BLOCK


@pytest.fixture(scope="session")
def ddp_workdir(tmp_path_factory):
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
    # A DPO run on a 4-bit base (QLoRA): 16 pairs, a quarter held out, so 12 training pairs; 2 ranks x 2 or one
    # process x 4 pairs a step, 3 steps an epoch, a checkpoint every 2 steps. Dropout is off everywhere.
    fields = dict(QLORA_FAMILIES["gpt2"], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    base = save_qlora_base(root / "qlora-model", fields.pop("model_type"), fields)
    (root / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preference_pairs()))
    dpo = {
        "seed_everything": 1234,
        "model": {"model_name_or_path": str(base), "quantization": "nf4", "warmup_steps": 1, "learning_rate": 1e-2,
                  "gradient_checkpointing": True, "lora": {"dropout": 0.0},
                  "objective": {"class_path": "lit_lora.objectives.preference.Preference", "init_args": {"beta": 0.1}}},
        "data": {"train_files": str(root / "pairs.jsonl"), "val_fraction": 0.25, "block_size": 64},
        "trainer": {"accelerator": "cpu", "max_steps": 6, "val_check_interval": 2, "log_every_n_steps": 1,
                    "enable_progress_bar": False, "enable_model_summary": False},
        "checkpoint": {"monitor": None, "save_top_k": -1, "every_n_train_steps": 2, "filename": "step{step:06d}"},
        "samples": {"prompts": []},
    }
    (root / "dpo.yaml").write_text(yaml.safe_dump(dpo))
    return root


@pytest.fixture(scope="session")
def ddp_runs(ddp_workdir):
    """Every DDP run that tests/e2e/test_ddp.py and tests/e2e/resume/ read, overlapped so that both cores stay
    busy (a DDP run's ranks start one after the other, and wait for each other). Resumed runs start from a
    copy of a checkpoint in a folder of their own.

    - `ddp`: 2 processes from scratch, `--data.batch_size 4` (Lightning's launcher starts rank 1);
    - `single`: 1 process (in this one) from scratch, `--data.batch_size 8`;
    - `one-to-ddp`: 2 processes, under torchrun, from `single`'s step 4 (end of epoch 0);
    - `ddp-resumed`: 2 processes from `ddp`'s step 2 (mid-epoch 0), found by `--ckpt_path last`; both wait
      before step 5 until SIGTERM reaches the process group, then save `last.ckpt` at step 5 and exit 0;
    - `signal-to-one`: 1 process from `ddp-resumed`'s step-5 `last.ckpt` to the end;
    - `ddp-to-one`: 1 process from `ddp`'s step 4 (end of epoch 0);
    - `ddp-mid-epoch-to-one`: 1 process from `ddp`'s step 2 (mid-epoch 0), elastic resume;
    - `dpo-ddp`: a DPO run on a 4-bit base, 2 processes x 2 pairs, rank 1's loss turned NaN at step 4;
    - `dpo-single`: the same DPO run, 1 process x 4 pairs, uninterrupted (6 steps);
    - `dpo-ddp-to-one`: 1 process x 4 from `dpo-ddp`'s step 2 (mid-epoch 0), elastic resume.
    The 2-process and 1-process runs use separate datasets caches, so no two runs write the same cache.
    """
    cfg = str(ddp_workdir / "cfg.yaml")
    two = ("--config", cfg, "--data.batch_size", str(BATCH), "--data.cache_dir", str(ddp_workdir / "cache-ddp"))
    one = ("--config", cfg, "--data.batch_size", str(2 * BATCH), "--data.cache_dir", str(ddp_workdir / "cache-single"))
    dpo = str(ddp_workdir / "dpo.yaml")
    dpo_two = ("--config", dpo, "--data.batch_size", "2", "--data.cache_dir", str(ddp_workdir / "cache-dpo-ddp"))
    dpo_one = ("--config", dpo, "--data.batch_size", "4", "--data.cache_dir", str(ddp_workdir / "cache-dpo-single"))
    resume = ("--ckpt_path", "start.ckpt")
    dirs = {name: ddp_workdir / name for name in ("ddp", "single", "one-to-ddp", "ddp-resumed", "signal-to-one",
                                                "ddp-to-one", "ddp-mid-epoch-to-one", "dpo-ddp", "dpo-single",
                                                "dpo-ddp-to-one")}

    def start_from(name: str, source: str, step: int, file: str = "") -> None:
        dirs[name].mkdir()
        shutil.copy(checkpoint_file(dirs[source], file or f"step{step:06d}.ckpt"), dirs[name] / "start.ckpt")

    out: dict[str, tuple[int, str, str]] = {}
    started: list[subprocess.Popen] = []
    try:
        # The DDP run evaluates an lm-eval task at each validation on rank 0 (its data paths are relative to the
        # repository root); the one-process run evaluates nothing, and the two must still train alike.
        dirs["ddp"].mkdir()
        (dirs["ddp"] / "examples").symlink_to(REPO / "examples")
        tasks = ("--eval_tasks.tasks", "lit_lora_quickstart_places", "--eval_tasks.include_path",
                 str(REPO / "examples" / "eval" / "tasks"), "--eval_tasks.limit", "5")
        started.append(ddp := start_ddp(dirs["ddp"], *two, *tasks))
        out["single"] = fit_in_process(dirs["single"], *one)
        assert out["single"][0] == 0, out["single"][2][-3000:]
        start_from("one-to-ddp", "single", STEPS_PER_EPOCH)
        started.append(one_to_ddp := start_ddp(dirs["one-to-ddp"], *two, *resume, torchrun=True))
        out["dpo-single"] = fit_in_process(dirs["dpo-single"], *dpo_one)
        out["ddp"] = (0, finish_ddp(ddp), "")
        # As a user resumes: `--ckpt_path last`, which every rank looks up for itself.
        last = checkpoint_file(dirs["ddp-resumed"], "last.ckpt")
        last.parent.mkdir(parents=True)
        shutil.copy(checkpoint_file(dirs["ddp"], "step000002.ckpt"), last)
        paused = dirs["ddp-resumed"] / "paused"
        started.append(ddp_resumed := start_ddp(
            dirs["ddp-resumed"], *two, "--ckpt_path", "last", "--trainer.callbacks+=tests.helpers.RecordBatches",
            "--trainer.callbacks.path", str(dirs["ddp-resumed"] / "rec.jsonl"),
            "--trainer.callbacks.pause_at_step", "4", "--trainer.callbacks.marker", str(paused),
            "--trainer.callbacks.until_signal", "true"))
        started.append(dpo_ddp := start_ddp(dirs["dpo-ddp"], *dpo_two, "--trainer.callbacks+=tests.helpers.Poison",
                                            "--trainer.callbacks.at_step", "3", "--trainer.callbacks.rank", "1"))
        for name, step in (("ddp-to-one", STEPS_PER_EPOCH), ("ddp-mid-epoch-to-one", 2)):
            start_from(name, "ddp", step)
            out[name] = fit_in_process(dirs[name], *one, *resume)
        # SIGTERM to the process group, as a cluster preempts a job, once both ranks wait before step 5.
        deadline = time.monotonic() + 300
        while not paused.exists():
            assert ddp_resumed.poll() is None, ddp_resumed.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "the resumed DDP run never reached step 5"
            time.sleep(0.1)
        os.killpg(ddp_resumed.pid, signal.SIGTERM)
        out["ddp-resumed"] = (0, finish_ddp(ddp_resumed), "")
        start_from("signal-to-one", "ddp-resumed", 0, "last.ckpt")
        out["signal-to-one"] = fit_in_process(dirs["signal-to-one"], *one, *resume)
        out["one-to-ddp"] = (0, finish_ddp(one_to_ddp), "")
        try:
            text, _ = dpo_ddp.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(dpo_ddp.pid, signal.SIGKILL)
            text = f"a rank hung after the non-finite loss:\n{dpo_ddp.communicate()[0][-3000:]}"
        out["dpo-ddp"] = (dpo_ddp.returncode, text, "")
        if dpo_ddp.returncode is not None and checkpoint_file(dirs["dpo-ddp"], "step000002.ckpt").exists():
            start_from("dpo-ddp-to-one", "dpo-ddp", 2)
            out["dpo-ddp-to-one"] = fit_in_process(dirs["dpo-ddp-to-one"], *dpo_one, *resume)
    finally:
        for proc in started:  # a failure above must not leave ranks running
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
    return dirs | {"out": out}


@pytest.fixture(scope="session", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    """One small fit of a tiny random model of the family (no target flags: its defaults), resumed from a
    mid-epoch checkpoint and merged: read by tests/e2e/test_families.py and the resume tests."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    model_type = request.param
    fields, tokenizer_kind = FAMILIES[model_type]
    root = tmp_path_factory.mktemp(model_type)
    model_dir = root / "model"
    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, vocab_size=VOCAB, **fields)
    AutoModelForCausalLM.from_config(config).save_pretrained(str(model_dir))
    if tokenizer_kind == "bos":
        bos_tokenizer_dir(model_dir)
    else:
        AutoTokenizer.from_pretrained(str(QUICKSTART / "tokenizer")).save_pretrained(str(model_dir))
    (root / "train.txt").write_text((QUICKSTART / "train.txt").read_text()[:6_000])
    (root / "val.txt").write_text((QUICKSTART / "val.txt").read_text()[:800])
    flags = ["--model.model_name_or_path", str(model_dir), "--data.train_files", str(root / "train.txt"),
             "--data.val_files", str(root / "val.txt"), "--data.block_size", str(BLOCK),
             "--data.batch_size", str(RUN_BATCH), "--data.cache_dir", str(root / "cache"),
             "--model.learning_rate", "1e-2",
             "--model.warmup_steps", "1", "--trainer.max_steps", str(STEPS), "--trainer.val_check_interval", "3",
             "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false",
             "--trainer.enable_model_summary", "false", "--checkpoint.every_n_train_steps", str(SAVE_EVERY),
             "--checkpoint.save_top_k", "-1", "--checkpoint.monitor", "null",
             "--checkpoint.filename", "step{step:03d}", "--samples.prompts", "[]"]
    (root / "full").mkdir()
    fit_out = cli_output(root / "full", "fit", *flags, notes=True)
    (root / "resumed").mkdir()
    resumed = checkpoints_dir(root / "resumed")
    resumed.mkdir(parents=True)
    shutil.copy(checkpoints_dir(root / "full") / f"step{SAVE_EVERY:03d}.ckpt", resumed / "last.ckpt")
    cli_output(root / "resumed", "fit", *flags, "--ckpt_path", "last")
    last = checkpoints_dir(root / "full") / f"step{STEPS:03d}.ckpt"
    cli_output(root, "merge", "--ckpt_path", str(last), "--output_dir", str(root / "merged"))
    return dict(type=model_type, root=root, model_dir=model_dir, fit_out=fit_out, tokenizer=tokenizer_kind,
                last=last, merged=root / "merged",
                adapter=root / "full" / "lightning_logs" / "lit_lora" / "version_0" / "adapter")



@pytest.fixture(scope="session")
def qlora_runs(tmp_path_factory):
    """qlora_runs(family): that family's QLoRA fit, resume and merge, done once for the session (read by
    tests/e2e/test_qlora.py and the resume tests)."""
    pytest.importorskip("bitsandbytes")  # in the dev extras; a checkout without them skips, saying so
    done = {}

    def run(family):
        if family not in done:
            done[family] = _fit_resume_merge(family, tmp_path_factory)
        return done[family]

    return run


@pytest.fixture(params=sorted(QLORA_FAMILIES))
def qlora(request, qlora_runs):
    return qlora_runs(request.param)


@pytest.fixture
def qlora_gpt2(qlora_runs):
    """The GPT-2 run, for the checks that do not depend on the family."""
    return qlora_runs("gpt2")


def _fit_resume_merge(family, tmp_path_factory):
    fields = dict(QLORA_FAMILIES[family])
    model_type = fields.pop("model_type")
    root = tmp_path_factory.mktemp(f"qlora-{model_type}")
    model_dir = save_qlora_base(root / "model", model_type, fields)
    (root / "train.txt").write_text((QUICKSTART / "train.txt").read_text()[:6_000])
    (root / "val.txt").write_text((QUICKSTART / "val.txt").read_text()[:800])
    flags = ["--model.model_name_or_path", str(model_dir), "--model.quantization", "nf4",
             "--data.train_files", str(root / "train.txt"), "--data.val_files", str(root / "val.txt"),
             "--data.block_size", str(BLOCK), "--data.batch_size", str(RUN_BATCH),
             "--data.cache_dir", str(root / "cache"),
             "--model.learning_rate", "1e-2", "--model.warmup_steps", "1", "--trainer.max_steps", str(STEPS),
             "--trainer.val_check_interval", "3", "--trainer.log_every_n_steps", "1",
             "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
             "--checkpoint.every_n_train_steps", str(SAVE_EVERY), "--checkpoint.save_top_k", "-1",
             "--checkpoint.monitor", "null", "--checkpoint.filename", "step{step:03d}", "--samples.prompts", "[]"]
    (root / "full").mkdir()
    fit_out = cli_output(root / "full", "fit", *flags, notes=True)
    (root / "resumed").mkdir()
    resumed = checkpoints_dir(root / "resumed")
    resumed.mkdir(parents=True)
    shutil.copy(checkpoints_dir(root / "full") / f"step{SAVE_EVERY:03d}.ckpt", resumed / "last.ckpt")
    # No --model.quantization: a resumed run takes the checkpoint's.
    cli_output(root / "resumed", "fit", *[f for f in flags if f not in ("--model.quantization", "nf4")],
               "--ckpt_path", "last")
    last = checkpoints_dir(root / "full") / f"step{STEPS:03d}.ckpt"
    merge_out = cli_output(root, "merge", "--ckpt_path", str(last), "--output_dir", str(root / "merged"),
                           notes=True)
    return dict(type=model_type, root=root, model_dir=model_dir, fit_out=fit_out, last=last, flags=flags,
                merged=root / "merged", merge_out=merge_out,
                adapter=root / "full" / "lightning_logs" / "lit_lora" / "version_0" / "adapter")
