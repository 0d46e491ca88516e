"""The processes that tokenize: how many `datasets.map` starts, and their end when `fit` is stopped."""

from __future__ import annotations

import os
import signal
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
_forking_pid = _MAIN_PID  # the process that forks, recorded just before each fork


def die_with_parent() -> None:
    """In a forked process: ask Linux to kill it when its parent dies, and leave Ctrl-C to the parent.

    `datasets` forks a worker pool and a `multiprocess` manager process for `map`; a `kill -9` of `fit` would
    otherwise leave them blocked forever on their queues. The terminal sends Ctrl-C to every process of the
    group: the parent stops its pool itself, so a worker printing its own KeyboardInterrupt would only add
    noise; SIGTERM, which the pool stops its workers with, keeps its default action. Linux only; elsewhere
    nothing changes."""
    if os.getpid() == _MAIN_PID or not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # A pool ends its workers with SIGTERM: a Python handler inherited from the parent (a training run's
        # graceful stop) would keep them waiting on their queue, and the parent waiting for them.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, ValueError):
        return
    if os.getppid() != _forking_pid:  # the parent died before prctl took effect
        os._exit(1)


def _before_fork() -> None:
    global _forking_pid
    _forking_pid = os.getpid()


# Every process forked after this module loads (the pool's workers, its manager, DataLoader workers, and
# their own children) dies with the process that forked it. The death signal follows the forking thread:
# the pools here are created on the main thread.
if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_child=die_with_parent)
