"""The processes that tokenize: how many `datasets.map` starts, and their end when `fit` is killed."""

from __future__ import annotations

import os
import sys
from typing import Optional


def worker_count(rows: int, num_proc: Optional[int], row_kb: int = 256) -> Optional[int]:
    """Processes for `datasets.map` over `rows` rows of about `row_kb` KB (None: this one alone)."""
    if num_proc is not None:
        return num_proc if num_proc > 1 and rows >= num_proc else None
    cpus = os.cpu_count() or 1
    # Worker processes only pay off on corpora of several MB (16 text rows of ~256 KB).
    chunks = rows * row_kb // 256
    return min(cpus, chunks // 8, rows) if chunks >= 16 and cpus > 1 else None


_MAIN_PID = os.getpid()


def die_with_parent() -> None:
    """In a tokenizing worker process: ask Linux to kill this process when its parent dies. `datasets`'
    worker pool otherwise outlives a `kill -9` of `fit`, its workers blocked forever on their task queue."""
    if os.getpid() == _MAIN_PID or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except OSError:
        return
    if os.getppid() == 1:  # the parent is already gone
        os._exit(1)
