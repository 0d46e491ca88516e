"""A quiet, offline run: the quickstart (with an lm-eval task) and a QLoRA quickstart, in real processes and without HF_HUB_OFFLINE,
print nothing but lit_lora's own lines (the progress bar is off here so every line can be read), and try no
network. What bitsandbytes logs only on some CPUs or some paths is sent through its own loggers here."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


# With an lm-eval task at step 0 and at the validation: lm-eval logs, draws bars and runs git otherwise.
QUICKSTART_FLAGS = ("--trainer.max_steps", "6", "--trainer.val_check_interval", "5", "--eval_tasks.tasks",
                    "lit_lora_quickstart_places", "--eval_tasks.include_path", "examples/eval/tasks",
                    "--eval_tasks.limit", "5")
# int8: its layers log a line for every validation batch in eval mode (bitsandbytes' MatMul8bitLt). Two steps,
# a validation of one batch after the second, and a two-token sample.
QLORA_FLAGS = ("--model.quantization", "int8", "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
               "--trainer.limit_val_batches", "1", "--samples.max_new_tokens", "2")


@pytest.fixture(scope="module")
def foreign_lines(tmp_path_factory):
    """The lines other than lit_lora's that each run printed. Both runs start at once, each with a folder and
    a cache of its own: most of a run is start-up, which the two cores do side by side."""
    runs = {"quickstart": QUICKSTART_FLAGS}
    if importlib.util.find_spec("bitsandbytes") is not None:
        runs["qlora"] = QLORA_FLAGS
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))}
    env["PYTHONPATH"] = str(REPO)
    started = {}
    for name, flags in runs.items():
        tmp = tmp_path_factory.mktemp(name)
        args = [sys.executable, "-m", "lit_lora.cli", "fit", "--config", str(REPO / "conf/quickstart.yaml"),
                "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", str(tmp / "logs"),
                "--data.cache_dir", str(tmp / "cache"), *flags]
        started[name] = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         text=True)
    found = {}
    for name, proc in started.items():
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-3000:]
        lines = [line for line in (stdout + stderr).splitlines() if line.strip()]
        assert any("exported" in line for line in lines) and any("saved" in line for line in lines)
        found[name] = [line for line in lines if not line.startswith("lit_lora: ")]
    return found


@pytest.mark.slow
def test_the_quickstart_prints_only_lit_loras_lines(foreign_lines):
    assert foreign_lines["quickstart"] == [], "\n".join(foreign_lines["quickstart"])


@pytest.mark.slow
def test_a_qlora_quickstart_prints_only_lit_loras_lines(foreign_lines):
    pytest.importorskip("bitsandbytes")
    assert foreign_lines["qlora"] == [], "\n".join(foreign_lines["qlora"])
