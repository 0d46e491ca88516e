"""A quiet, offline run: the quickstart and a QLoRA quickstart, in real processes and without HF_HUB_OFFLINE,
print nothing but lit_lora's own lines (the progress bar is off here so every line can be read), and try no
network. What bitsandbytes logs only on some CPUs or some paths is sent through its own loggers here."""

from __future__ import annotations

import importlib.util
import inspect
import logging
import os
import re
import subprocess
import sys

import pytest
import torch

from lit_lora.cli import quiet
from tests.conftest import REPO


QUICKSTART_FLAGS = ("--trainer.max_steps", "6", "--trainer.val_check_interval", "5")
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


def _dropped(caplog, logger, emit):
    """Whether `logger`'s record from `emit()` reaches the handlers: without lit_lora's filter, then with it."""
    reached = []
    for install in (False, True):
        for record_filter in quiet._LOG_FILTERS.values():
            logging.getLogger(logger.name).removeFilter(record_filter)
        if install:
            quiet.quiet_third_parties()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=logger.name):
            emit()
        reached.append([r.getMessage() for r in caplog.records if r.name == logger.name])
    return reached


def test_bitsandbytes_kernels_community_line_is_dropped(caplog):
    """Logged at import on CPUs with AVX512-BF16 without the `kernels` package: the message is taken from
    bitsandbytes' own source and sent through its own logger, as on such a CPU."""
    pytest.importorskip("bitsandbytes")
    from bitsandbytes.backends.cpu import ops

    (message,) = re.findall(r'"(Failed to load CPU gemm_4bit_forward from kernels-community: [^"]*)"',
                            inspect.getsource(ops))
    error = ModuleNotFoundError("No module named 'kernels'")
    before, after = _dropped(caplog, ops.logger, lambda: ops.logger.warning(message, error))
    assert before == [message % error] and after == []


def test_bitsandbytes_int8_cast_line_is_dropped(caplog):
    """An int8 layer in eval mode on a float32 input (a validation batch): bitsandbytes' real matmul."""
    bnb = pytest.importorskip("bitsandbytes")
    from bitsandbytes.autograd import _functions

    layer = bnb.nn.Linear8bitLt(64, 32, has_fp16_weights=False).to("cpu").eval()
    x = torch.randn(2, 64)

    def forward():
        with torch.no_grad():
            layer(x)

    before, after = _dropped(caplog, _functions.logger, forward)
    assert before == ["MatMul8bitLt: inputs will be cast from torch.float32 to float16 during quantization"]
    assert after == []
