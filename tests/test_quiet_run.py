"""A quiet, offline run: the quickstart, in a real process and without HF_HUB_OFFLINE, prints nothing but
lit_lora's own lines (the progress bar is off here so every line can be read), and tries no network."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_the_quickstart_prints_only_lit_loras_lines(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))}
    env["PYTHONPATH"] = str(REPO)
    args = [sys.executable, "-m", "lit_lora.cli", "fit", "--config", str(REPO / "conf/quickstart.yaml"),
            "--trainer.max_steps", "6", "--trainer.val_check_interval", "5", "--trainer.enable_progress_bar", "false",
            "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"), "--data.cache_dir", str(tmp_path / "c")]
    out = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    foreign = [line for line in lines if not line.startswith("lit_lora: ")]
    assert foreign == [], "\n".join(foreign)
    assert any("exported" in line for line in lines) and any("saved" in line for line in lines)
