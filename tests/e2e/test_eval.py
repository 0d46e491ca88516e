"""`eval` and `--eval_tasks.*` on a real run: lm-eval's numbers for a checkpoint equal those of lm-eval's own
command on the merged model (and on the saved base for the base), the side-by-side table, the results files,
the run's TensorBoard curve, and one-line errors for bad input.

Everything runs offline: the tasks are the shipped examples (examples/eval), whose data paths are relative
to the repository root, so each test runs in a folder where `examples` points at the repository's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import QUICKSTART, REPO, save_tiny_gpt2
from tests.helpers import cli_output, fit_in_process, scalars

pytest.importorskip("lm_eval")

TASKS = "lit_lora_quickstart_places,lit_lora_arithmetic,lit_lora_sequences"
INCLUDE = "examples/eval/tasks"
PLACES_ACC = "eval/lit_lora_quickstart_places/acc"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 20-step LoRA run of a saved tiny GPT-2 on the quickstart's corpus, validated (and task-evaluated)
    every 10 steps, and its merged model."""
    work = tmp_path_factory.mktemp("eval")
    (work / "examples").symlink_to(REPO / "examples")
    base = save_tiny_gpt2(work / "base", QUICKSTART / "tokenizer")
    code, _, err = fit_in_process(
        work, "--config", str(REPO / "conf" / "quickstart.yaml"), "--model.model_name_or_path", str(base),
        "--model.model_config", "null", "--model.tokenizer_name_or_path", "null", "--trainer.max_epochs", "null",
        "--trainer.max_steps", "20", "--trainer.val_check_interval", "10", "--data.cache_dir", str(work / "cache"),
        "--trainer.enable_progress_bar", "false", "--samples.prompts", "[]",
        "--eval_tasks.tasks", "lit_lora_quickstart_places", "--eval_tasks.include_path", INCLUDE,
        "--eval_tasks.limit", "10", "--checkpoint.save_top_k", "-1",
    )
    assert code == 0, err[-3000:]
    log_dir = work / "lightning_logs" / "lit_lora" / "version_0"
    ckpt = next((log_dir / "checkpoints").glob("step000020-*.ckpt"))
    cli_output(work, "merge", "--ckpt_path", str(ckpt), "--output_dir", "merged")
    return work, base, log_dir, ckpt, err


def test_fit_logs_task_metrics_at_each_validation_and_prints_their_cost(run):
    work, _, log_dir, _, err = run
    # At step 0 (the model the run starts from) and at each validation, where Lightning puts val_loss.
    validations = [step for step, _ in scalars(str(log_dir), "val_loss")]
    assert [step for step, _ in scalars(str(log_dir), PLACES_ACC)] == validations and len(validations) == 3
    assert "eval_tasks at step 10: lit_lora_quickstart_places acc " in err and " s)" in err
    # lm-eval's warnings and progress bars are not shown (tests/e2e/test_quiet_run.py checks a real process).
    assert [line for line in err.splitlines() if line.strip() and not line.startswith("lit_lora: ")] == []


def lm_eval_command(work, model_dir, out) -> subprocess.Popen:
    """lm-eval's own command line on a model folder, as a user runs it."""
    return subprocess.Popen(
        [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={model_dir},dtype=float32",
         "--tasks", TASKS, "--include_path", INCLUDE, "--limit", "20", "--batch_size", "8", "--device", "cpu",
         "--output_path", str(out)],
        cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def lm_eval_numbers(results: dict) -> dict:
    return {(task, key): value for task, values in results["results"].items() for key, value in values.items()
            if "," in key and isinstance(value, (int, float))}


def test_numbers_equal_lm_evals_own_command_on_the_merged_model_and_on_the_saved_base(run):
    work, base, _, ckpt, _ = run
    # lm-eval's command twice, at once (each spends most of its time indexing its built-in tasks).
    commands = {name: lm_eval_command(work, folder, work / f"lm-eval-{name}")
                for name, folder in (("merged", work / "merged"), ("base", base))}
    out = cli_output(work, "eval", "--ckpt_path", str(ckpt), "--with_base", "--tasks", TASKS, "--include_path",
                     INCLUDE, "--limit", "20", "--batch_size", "8", "--output_dir", "ours")
    theirs = {}
    for name, proc in commands.items():
        log = proc.communicate(timeout=300)[0]
        assert proc.returncode == 0, log[-3000:]
        theirs[name] = json.loads(next((work / f"lm-eval-{name}").rglob("results_*.json")).read_text())
    ours = {name: json.loads((work / "ours" / f"{name}.json").read_text())
            for name in ("base", ckpt.stem)}
    for mine, name in ((ours["base"], "base"), (ours[ckpt.stem], "merged")):
        expected = lm_eval_numbers(theirs[name])
        assert len(expected) == 2 * 5  # acc, acc_norm of two tasks, exact_match of one, with standard errors
        assert lm_eval_numbers(mine) == pytest.approx(expected, abs=1e-6), name
    # The side-by-side table: a row per task and metric, the base first, the checkpoint's difference from it.
    header, _, first = out.splitlines()[:3]
    assert [c.strip() for c in header.strip("|").split("|")] == ["task", "metric", "base", ckpt.stem, "Δ base"]
    assert first.split("|")[1].strip() == "lit_lora_quickstart_places"


def test_eval_of_one_checkpoint_prints_lm_evals_table_and_logs_to_its_run(run):
    work, _, log_dir, ckpt, _ = run
    ten = next((log_dir / "checkpoints").glob("step000010-*.ckpt"))
    before = scalars(str(log_dir), PLACES_ACC)
    out = cli_output(work, "eval", "--ckpt_path", str(ten), "--tasks", "lit_lora_quickstart_places",
                     "--include_path", INCLUDE, "--output_dir", "one")
    assert "|lit_lora_quickstart_places|" in out.replace(" ", "")  # lm-eval's own table
    result = json.loads((work / "one" / f"{ten.stem}.json").read_text())
    acc = result["results"]["lit_lora_quickstart_places"]["acc,none"]
    assert result["n-samples"]["lit_lora_quickstart_places"]["effective"] == 100  # the whole task
    added = [point for point in scalars(str(log_dir), PLACES_ACC) if point not in before]
    assert added == [(10, pytest.approx(acc))]


@pytest.mark.parametrize("args, message", [
    (["--tasks", "no_such_task", "--include_path", INCLUDE],
     "unknown task 'no_such_task': not defined under include_path 'examples/eval/tasks' nor one of lm-eval's tasks"),
    (["--tasks", "hellaswag", "--include_path", INCLUDE],
     "task 'hellaswag' cannot load its data: it downloads them from the Hugging Face hub, which cannot be "
     "reached (offline)"),
    (["--tasks", "x", "--include_path", "no/such/folder"], "include_path 'no/such/folder' is not a folder"),
])
def test_bad_tasks_are_one_line_errors_before_any_model_loads(run, args, message):
    # The first two build lm-eval's index of its own tasks once (seconds), kept for the process.
    work, base, *_ = run
    err = cli_output(work, "eval", "--model.model_name_or_path", str(base), *args, code=2)
    assert message in err and len(err.strip().splitlines()) == 1


def test_a_checkpoint_of_another_base_and_a_file_that_is_not_ours_are_one_line_errors(run, tmp_path):
    work, _, _, ckpt, _ = run
    other = save_tiny_gpt2(tmp_path / "other", QUICKSTART / "tokenizer", seed=1)
    err = cli_output(work, "eval", "--ckpt_path", str(ckpt), "--model.model_name_or_path", str(other), "--tasks",
                     "lit_lora_quickstart_places", "--include_path", INCLUDE, code=2)
    assert "fingerprint" in err and len(err.strip().splitlines()) == 1
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    err = cli_output(work, "eval", "--ckpt_path", str(tmp_path / "foreign.ckpt"), "--tasks",
                     "lit_lora_quickstart_places", "--include_path", INCLUDE, code=2)
    assert "foreign.ckpt" in err and len(err.strip().splitlines()) == 1
    assert not [p for p in os.listdir(work) if p.startswith("eval-")]  # no results folder for a failed eval
