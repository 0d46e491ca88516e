"""lm-evaluation-harness on a model object: lm-eval's own `HFLM` wraps the model as lit_lora holds it (a PEFT
model, quantized or not, or a plain transformers model), so nothing is converted or merged, and its own
`simple_evaluate` runs the tasks. lm-eval is an optional extra; it is imported only here, when used."""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import sys
import tempfile
from typing import Any, Iterator, Optional

import torch

from lit_lora.errors import LitLoraError, verbose_requested
from lit_lora.eval_mode import evaluating
from lit_lora.evaluation.settings import TaskSettings

MISSING = "eval needs lm-evaluation-harness, which is not installed: pip install -e '.[eval]'"


def require_lm_eval() -> None:
    """A one-line error naming the extra to install, before any model loads."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise LitLoraError(MISSING) from None


def task_manager(settings: TaskSettings) -> Any:
    """lm-eval's TaskManager knowing every requested task. The include path alone is indexed first: lm-eval's
    own index of ~15,000 task files takes seconds to build, and a run of local tasks never needs it."""
    manager = _indexed(settings.include_path, False) if settings.include_path else None
    if manager is None or _unknown(manager, settings.tasks):
        manager = _indexed(settings.include_path, True)
    unknown = _unknown(manager, settings.tasks)
    if unknown:
        where = f"defined under include_path {settings.include_path!r} nor " if settings.include_path else ""
        raise LitLoraError(f"unknown task {unknown[0]!r}: not {where}one of lm-eval's tasks")
    return manager


@functools.lru_cache(maxsize=4)
def _indexed(include_path: Optional[str], defaults: bool) -> Any:
    """One index per folder and process: `eval` of several models, and a run's every validation, reuse it."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path, include_defaults=defaults)


def _unknown(manager: Any, tasks: list[str]) -> list[str]:
    known = set(manager.all_tasks)
    return [t for t in tasks if t not in known]


def evaluate_tasks(model: Any, tokenizer: Any, settings: TaskSettings, manager: Any = None) -> dict[str, Any]:
    """lm-eval's results for `model`: the dict `simple_evaluate` returns, its per-document samples left out.
    The model is evaluated in eval mode under no_grad, and each of its modules is given back its own mode.
    lm-eval seeds Python's, NumPy's and torch's generators; Lightning's `isolate_rng` puts the caller's
    states back, so a training run that evaluates goes on drawing the numbers it would have drawn."""
    import lm_eval
    from lightning.pytorch.utilities.seed import isolate_rng
    from lm_eval.models.huggingface import HFLM

    manager = manager or task_manager(settings)
    with evaluating(model), isolate_rng(), _quiet_lm_eval(), torch.no_grad():
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=settings.batch_size)
        try:
            return lm_eval.simple_evaluate(
                model=lm, tasks=list(settings.tasks), num_fewshot=settings.num_fewshot, limit=settings.limit,
                task_manager=manager, apply_chat_template=settings.apply_chat_template, log_samples=False,
            )
        except Exception:
            _name_the_task(manager, settings.tasks)  # a task that cannot load its data, in one line
            raise


def _name_the_task(manager: Any, tasks: list[str]) -> None:
    """After lm-eval failed: the first task that cannot load its documents, named in one line instead of a
    traceback from deep inside `datasets`. lm-eval's own tasks download theirs, and a local task's relative
    `data_files` are found from the current folder (as lm-eval's command finds them), not from the YAML's.
    Returns when every task loads: the failure was elsewhere."""
    for name in tasks:
        try:
            manager.load([name])
        except Exception as err:  # datasets, the hub client and httpx raise many kinds; each means "no data"
            raise LitLoraError(f"task {name!r} cannot load its data: {_why(err)}") from err


def _why(err: BaseException) -> str:
    text = " ".join(str(err).split())
    if isinstance(err, FileNotFoundError) and "Unable to find" in text:
        return f"{text} (a task's data_files are relative to the folder you run in)"
    if isinstance(err, ConnectionError) or type(err).__name__ in ("ConnectError", "OfflineModeIsEnabled"):
        return "it downloads them from the Hugging Face hub, which cannot be reached (offline)"
    return text or type(err).__name__


@contextlib.contextmanager
def _quiet_lm_eval() -> Iterator[None]:
    """lm-eval logs a warning for every model object it is given and a line per task, draws progress bars,
    and asks git for a commit hash (git complains on stderr outside a repository). None of it is something a
    user can act on: its loggers are raised to ERROR and the process's stderr is set aside for the call.
    LIT_LORA_VERBOSE=1 lets all of it through."""
    if verbose_requested():
        yield
        return
    lm_eval_logger = logging.getLogger("lm_eval")
    level = lm_eval_logger.level
    lm_eval_logger.setLevel(logging.ERROR)
    sys.stderr.flush()
    saved = os.dup(2)
    # The file descriptor for git and other processes; sys.stderr too, for a caller that replaced it.
    with tempfile.TemporaryFile(mode="w+b") as held, contextlib.redirect_stderr(io.StringIO()):
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            lm_eval_logger.setLevel(level)
