"""The run folder and what is checked before one is made: data files exist, and a `version_N` folder
claimed for this run alone (or the checkpoint's, on resume)."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path
from typing import Any, Optional

from lit_lora.data.files import resolve_files
from lit_lora.errors import LitLoraError
from lit_lora.data.sources import file_list
from lit_lora.training.checkpoint_io import claim_run_version


def check_data_files(data_cfg: Any) -> None:
    """Missing or unreadable data files stop the run before the model is built (seconds for GPT-2 small,
    minutes for larger ones), with the same message the data module would give later."""
    if data_cfg.get("dataset_name"):
        return
    for key in ("train_files", "val_files", "test_files"):
        value = data_cfg.get(key)
        if value:
            resolve_files(file_list(value), f"data.{key}")


# Rank 0 claims the run's version folder; the processes Lightning's launcher starts for the other ranks
# inherit the environment and use the same version.
RUN_VERSION_ENV = "LIT_LORA_RUN_VERSION"

# The folders this process made for its run: (the version folder, the topmost folder the claim created).
_CLAIMED: list[tuple[Path, Path]] = []


def claim_folder(save_dir: str, name: str) -> int:
    """claim_run_version, remembered so that a run that fails on a bad option leaves no folder behind."""
    root = Path(save_dir, name).absolute()
    top = root  # the topmost folder that does not exist yet
    while not top.parent.exists():
        top = top.parent
    made_above = not top.exists()
    version = claim_run_version(save_dir, name)
    run = root / f"version_{version}"
    _CLAIMED.append((run, top if made_above else run))
    return version


def forget_claimed_folders() -> None:
    """A new command in this process (tests run several): the folders claimed before are not its own."""
    _CLAIMED.clear()


def remove_unused_run_folders() -> None:
    """After a run stopped on bad input: delete the folders it made that hold no checkpoint (its config dump,
    hparams and step-0 logs describe a run that never trained), and the empty parents it made for them."""
    while _CLAIMED:
        run, top = _CLAIMED.pop()
        if not run.is_dir() or any(run.rglob("*.ckpt")):
            continue
        shutil.rmtree(run, ignore_errors=True)
        parent = run.parent
        while top != run and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            if parent == top:
                break
            parent = parent.parent


def claim_logger_version(logger: Any, resuming: bool) -> None:
    """Give a TensorBoard or CSV logger without a version a folder no other run has (see claim_run_version);
    a version the user chose for a new `fit` run must not hold another run's checkpoints (`resuming`: a
    `--ckpt_path` fit, or a command that writes no checkpoints)."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    if not isinstance(logger, (TensorBoardLogger, CSVLogger)):
        return
    other_rank = int(os.environ.get("LOCAL_RANK", 0) or 0) > 0 or int(os.environ.get("NODE_RANK", 0) or 0) > 0
    # `_version` is None until the logger picks the next free number itself, which is what races.
    if logger._version is not None:
        # Where ModelCheckpoint saves (a TensorBoard sub_dir is not part of it). Every rank checks: a new run
        # has written nothing yet, so all of them stop together.
        version = logger._version if isinstance(logger._version, str) else f"version_{logger._version}"
        ckpt_dir = os.path.join(logger.save_dir, logger.name or "", version, "checkpoints")
        used = os.path.isdir(ckpt_dir) and any(n.endswith(".ckpt") for n in os.listdir(ckpt_dir))
        if used and not resuming:
            raise LitLoraError(
                f"trainer.logger version {logger._version!r}: {logger.log_dir} holds another run's checkpoints; "
                "leave the version out (a new folder is made) or resume that run with --ckpt_path last"
            )
        return
    if other_rank:
        if os.environ.get(RUN_VERSION_ENV):
            logger._version = int(os.environ[RUN_VERSION_ENV])
        return
    logger._version = claim_folder(logger.save_dir, logger.name or "")
    os.environ[RUN_VERSION_ENV] = str(logger._version)


def set_logger_run(trainer_cfg: Any, version: Optional[int], run_id: Optional[str]) -> None:
    """Point the configured logger at the checkpoint's run: its `version_N` folder (TensorBoard, CSV) or its
    run id (MLflow), unless the user chose one."""
    logger = trainer_cfg.get("logger")
    if logger is None or isinstance(logger, bool):
        return
    target = logger[0] if isinstance(logger, list) else logger
    init = getattr(target, "init_args", None)
    if init is None:
        return
    if version is not None and "version" in init and init.get("version") is None:
        init.version = version
    if run_id is not None and "run_id" in init and init.get("run_id") is None:
        init.run_id = run_id


def keep_csv_history(logger: Any) -> None:
    """Resuming into a CSVLogger folder keeps its metrics.csv: Lightning's writer deletes the file of a folder
    that is not empty (it would lose every metric logged before the resume), so the rows are written back."""
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.utilities import rank_zero_only

    if not isinstance(logger, CSVLogger) or rank_zero_only.rank != 0:
        return
    path = os.path.join(logger.log_dir, "metrics.csv")
    if not os.path.isfile(path):
        return
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        rows, keys = list(reader), list(reader.fieldnames or [])
    writer = logger.experiment  # deletes metrics.csv here
    writer.metrics_keys = sorted(keys)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        out = csv.DictWriter(fh, fieldnames=writer.metrics_keys)
        out.writeheader()
        out.writerows(rows)
