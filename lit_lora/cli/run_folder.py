"""The run folder and what is checked before one is made: data files exist, and a `version_N` folder
claimed for this run alone (or the checkpoint's, on resume), shared by all its loggers, made for a run
without a logger too, holding its config.yaml, and removed again if the run stops on bad input before it
saved a checkpoint. A run writes nowhere else."""

from __future__ import annotations

import csv
import os
import shutil
import weakref
from pathlib import Path
from typing import Any, Optional

from lightning.pytorch.callbacks import DeviceStatsMonitor, LearningRateMonitor
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_only

from lit_lora.cli.resume import logger_location, version_in
from lit_lora.data.files import resolve_files
from lit_lora.data.sources import file_list
from lit_lora.errors import LitLoraError
from lit_lora.notes import print_note
from lit_lora.outputs import shown
from lit_lora.training.checkpoint_files import claim_run_version

# Lightning's callbacks that refuse to run without a logger (they only log).
_NEEDS_A_LOGGER = (LearningRateMonitor, DeviceStatsMonitor)
# The loggers whose runs are folders (save_dir/name/version_N).
_FOLDER_LOGGERS = ("TensorBoardLogger", "CSVLogger")


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
# The Trainer of the run they were made for (a weak reference): a run that trained steps keeps its folder.
_TRAINER: list[Any] = []


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
    _TRAINER.clear()


def remove_unused_run_folders() -> None:
    """After a run stopped on bad input before its first training step: delete the folders it made that hold
    no checkpoint (its config dump, hparams and step-0 logs describe a run that never trained), and the
    empty parents it made for them. A run that trained keeps its logs."""
    trainer = _TRAINER[0]() if _TRAINER else None
    if trainer is not None and trainer.global_step > 0:
        _CLAIMED.clear()
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
    logger._version = _claim_for_all_ranks(logger.save_dir, logger.name or "")


def _claim_for_all_ranks(save_dir: str, name: str) -> Optional[int]:
    """Rank 0 claims a version folder; the other ranks take the one it claimed (None before it has)."""
    other_rank = int(os.environ.get("LOCAL_RANK", 0) or 0) > 0 or int(os.environ.get("NODE_RANK", 0) or 0) > 0
    if other_rank:
        return int(os.environ[RUN_VERSION_ENV]) if os.environ.get(RUN_VERSION_ENV) else None
    version = claim_folder(save_dir, name)
    os.environ[RUN_VERSION_ENV] = str(version)
    return version


def claim_run_folders(trainer: Any, resuming: bool, ckpt_path: Optional[str]) -> None:
    """Give the run its own folder. Loggers: see claim_logger_version; TensorBoard and CSV loggers that
    write into the same folder (share_run_folder) share its version. Without a logger, Lightning would write
    checkpoints and config.yaml into the working folder (the Trainer's default_root_dir), over the user's
    files: the run gets lightning_logs/lit_lora/version_N there instead (resume.logger_location; the
    checkpoint's own folder when it resumes from one), and the callbacks that need a logger step aside."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    _TRAINER[:] = [weakref.ref(trainer)]
    if trainer.loggers:
        versions: dict[tuple[str, str], Any] = {}
        for logger in trainer.loggers:
            if isinstance(logger, (TensorBoardLogger, CSVLogger)):
                folder = (os.path.abspath(logger.save_dir), logger.name or "")
                if logger._version is None and folder in versions:
                    logger._version = versions[folder]
                claim_logger_version(logger, resuming)
                versions.setdefault(folder, logger._version)
            keep_csv_history(logger)
        return
    save_dir, name = logger_location(False, trainer.default_root_dir)
    version = version_in(ckpt_path, save_dir, name) if ckpt_path else None
    if version is None:
        version = _claim_for_all_ranks(save_dir, name)
    trainer._default_root_dir = os.path.abspath(os.path.join(save_dir, name, f"version_{version}"))
    aside = [c for c in trainer.callbacks if isinstance(c, _NEEDS_A_LOGGER)]
    if aside:
        trainer.callbacks[:] = [c for c in trainer.callbacks if c not in aside]
        if rank_zero_only.rank == 0:
            names = ", ".join(sorted({type(c).__name__ for c in aside}))
            print_note(f"no logger (--trainer.logger false): {names} off; checkpoints and config.yaml go to "
                       f"{shown(trainer.default_root_dir)}")


def share_run_folder(trainer_cfg: Any) -> None:
    """One run, one folder: a TensorBoard or CSV logger after the first writes into the first one's folder
    (its save_dir and name; claim_run_folders gives both the same version), so the run's logs, checkpoints,
    config.yaml and adapter are found together."""
    loggers = trainer_cfg.get("logger")
    if not isinstance(loggers, list):
        return
    first = None
    for logger in loggers:
        init = getattr(logger, "init_args", None)
        if init is None or str(getattr(logger, "class_path", "")).rpartition(".")[2] not in _FOLDER_LOGGERS:
            continue
        if first is None:
            first = init
        else:
            init.save_dir, init.name = first.get("save_dir"), first.get("name")


def run_dir(trainer: Any) -> str:
    """The run's own folder, where its checkpoints and config.yaml go: the first logger's (its log_dir, or
    save_dir/name/version as Lightning lays out an MLflow run's checkpoints), else the Trainer's
    default_root_dir (claim_run_folders made it this run's)."""
    if not trainer.loggers:
        return trainer.default_root_dir
    logger = trainer.loggers[0]
    if getattr(logger, "log_dir", None):
        return logger.log_dir
    version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
    return os.path.join(logger.save_dir or trainer.default_root_dir, str(logger.name), version)


def say_where_resumed_run_writes(trainer: Any, ckpt_path: Optional[str]) -> None:
    """A run resumed from a checkpoint outside this logger's run folders (copied elsewhere) goes on in a
    folder of its own: say which, once."""
    if not ckpt_path or not trainer.is_global_zero:
        return
    folder = run_dir(trainer)
    if Path(ckpt_path).resolve().parent.parent != Path(folder).resolve():
        print_note(f"{ckpt_path} is not in this logger's run folders; this run writes to {shown(folder)}")


class RunConfig(SaveConfigCallback):
    """Lightning's config dump (config.yaml) in the run's own folder (run_dir), whatever the logger:
    Lightning writes it into `trainer.log_dir`, which is the working folder without a logger and the
    store every run shares for MLflow."""

    def __init__(self, parser: Any, config: Any, config_filename: str = "config.yaml", overwrite: bool = False,
                 multifile: bool = False, save_to_log_dir: bool = False) -> None:
        super().__init__(parser, config, config_filename, overwrite, multifile, save_to_log_dir)

    def save_config(self, trainer: Any, pl_module: Any, stage: str) -> None:
        folder = run_dir(trainer)
        os.makedirs(folder, exist_ok=True)
        self.parser.save(self.config, os.path.join(folder, self.config_filename), skip_none=False,
                         overwrite=self.overwrite, multifile=self.multifile)


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
