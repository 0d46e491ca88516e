"""lit_lora's filter of third-party lines (lit_lora/cli/quiet.py): bitsandbytes' lines are dropped by logger
and exact message. Whole runs that must print only lit_lora's lines are in tests/e2e/test_quiet_run.py."""

from __future__ import annotations

import inspect
import logging
import re

import pytest
import torch

from lit_lora.cli import quiet


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
