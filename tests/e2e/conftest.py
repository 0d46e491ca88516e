"""Fixtures of the end-to-end tests that several files read: each expensive run is done once per session
(session scope) and shared, so that a run's checks and its resume check never fit the same thing twice."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess

import pytest
import torch
import yaml

from tests.conftest import QUICKSTART, REPO, save_tiny_gpt2
from tests.helpers import (BATCH, EPOCHS, FAMILIES, QLORA_FAMILIES, RUN_BATCH, RUN_BLOCK, RUN_SAVE_EVERY,
                           RUN_STEPS, STEPS_PER_EPOCH, VOCAB, bos_tokenizer_dir, checkpoint_file, checkpoints_dir,
                           cli_output, finish_ddp, fit_in_process, save_qlora_base, start_ddp)

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
    return root


@pytest.fixture(scope="session")
def ddp_runs(ddp_workdir):
    """Every DDP run that tests/e2e/test_ddp.py and tests/e2e/resume/ read, overlapped so that both cores stay
    busy (a DDP run's ranks start one after the other). Resumed runs start from a copy of a checkpoint in a
    folder of their own.

    - `ddp`: 2 processes from scratch, `--data.batch_size 4` (Lightning's launcher starts rank 1);
    - `single`: 1 process (in this one) from scratch, `--data.batch_size 8`;
    - `one-to-ddp`: 2 processes, under torchrun, from `single`'s step 4 (end of epoch 0);
    - `ddp-resumed`: 2 processes from `ddp`'s step 2 (mid-epoch 0), found by `--ckpt_path last`;
    - `ddp-to-one`: 1 process from `ddp`'s step 4 (end of epoch 0);
    - `ddp-mid-epoch-to-one`: 1 process from `ddp`'s step 2 (mid-epoch 0), elastic resume.
    The 2-process and 1-process runs use separate datasets caches, so no two runs write the same cache.
    """
    cfg = str(ddp_workdir / "cfg.yaml")
    two = ("--config", cfg, "--data.batch_size", str(BATCH), "--data.cache_dir", str(ddp_workdir / "cache-ddp"))
    one = ("--config", cfg, "--data.batch_size", str(2 * BATCH), "--data.cache_dir", str(ddp_workdir / "cache-single"))
    resume = ("--ckpt_path", "start.ckpt")
    dirs = {name: ddp_workdir / name for name in ("ddp", "single", "one-to-ddp", "ddp-resumed", "ddp-to-one",
                                                "ddp-mid-epoch-to-one")}

    def start_from(name: str, source: str, step: int) -> None:
        dirs[name].mkdir()
        shutil.copy(checkpoint_file(dirs[source], f"step{step:06d}.ckpt"), dirs[name] / "start.ckpt")

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
        out["ddp"] = (0, finish_ddp(ddp), "")
        # As a user resumes: `--ckpt_path last`, which every rank looks up for itself.
        last = checkpoint_file(dirs["ddp-resumed"], "last.ckpt")
        last.parent.mkdir(parents=True)
        shutil.copy(checkpoint_file(dirs["ddp"], "step000002.ckpt"), last)
        started.append(ddp_resumed := start_ddp(dirs["ddp-resumed"], *two, "--ckpt_path", "last"))
        for name, step in (("ddp-to-one", STEPS_PER_EPOCH), ("ddp-mid-epoch-to-one", 2)):
            start_from(name, "ddp", step)
            out[name] = fit_in_process(dirs[name], *one, *resume)
        out["one-to-ddp"] = (0, finish_ddp(one_to_ddp), "")
        out["ddp-resumed"] = (0, finish_ddp(ddp_resumed), "")
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
