"""The run folder and what is checked before one is made: data files exist, and a `version_N` folder
claimed for this run alone (or the checkpoint's, on resume)."""

from __future__ import annotations

import os
from typing import Any

from lit_lora.data.files import resolve_files
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


def claim_logger_version(logger: Any) -> None:
    """Give a TensorBoard or CSV logger without a version a folder no other run has (see claim_run_version)."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    # `_version` is None until the logger picks the next free number itself, which is what races.
    if not isinstance(logger, (TensorBoardLogger, CSVLogger)) or getattr(logger, "_version", 0) is not None:
        return
    if int(os.environ.get("LOCAL_RANK", 0) or 0) > 0 or int(os.environ.get("NODE_RANK", 0) or 0) > 0:
        if os.environ.get(RUN_VERSION_ENV):
            logger._version = int(os.environ[RUN_VERSION_ENV])
        return
    logger._version = claim_run_version(logger.save_dir, logger.name or "")
    os.environ[RUN_VERSION_ENV] = str(logger._version)


def set_logger_version(trainer_cfg: Any, version: int) -> None:
    logger = trainer_cfg.get("logger")
    if logger is None or isinstance(logger, bool):
        return
    target = logger[0] if isinstance(logger, list) else logger
    if hasattr(target, "init_args") and "version" in target.init_args:
        target.init_args.version = version
