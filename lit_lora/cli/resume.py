"""The rules of `--ckpt_path`, as pure functions over plain values (unit-tested without a `fit`).

LightningCLI's own resume loads the checkpoint's hyperparameters over the flags the user typed (pitfall
12) and fails with a raw error on a bad file; `LitLoraCLI` applies these rules instead.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from lit_lora.errors import LitLoraError
from lit_lora.training.checkpoint_io import find_last_checkpoint

# Model fields a resumed run may not change: the checkpoint's tensors would not fit (rank, targets) or
# would mean something else (another architecture). The base model's *path* may change: the weights
# themselves are checked by fingerprint when the checkpoint loads.
PROTECTED_LORA_FIELDS = ("r", "alpha", "target_modules", "use_dora", "modules_to_save")
# Not taken from the checkpoint: the data's block size, which the CLI links into the model.
NOT_MERGED = ("block_size",)
# What the base model is. Typing either one means "this base": neither is then filled in from the
# checkpoint, so a path typed for a pretrained model never silently gets the checkpoint's random-init shape.
BASE_OPTIONS = ("model_name_or_path", "model_config")


def resolve_ckpt_path(ckpt_path: str, save_dir: str, name: str) -> tuple[str, bool]:
    """(checkpoint file, whether it was found as `last`). `last` is the newest complete run's last.ckpt
    under save_dir/name; Lightning's other special names are refused."""
    if ckpt_path == "last":
        found = find_last_checkpoint(save_dir, name)
        if found is None:
            raise LitLoraError(
                f"--ckpt_path last: no last.ckpt under {save_dir}/{name}/version_*/checkpoints; "
                "pass the checkpoint file with --ckpt_path FILE"
            )
        return found, True
    if ckpt_path in ("best", "hpc", "registry"):
        raise LitLoraError(f"--ckpt_path {ckpt_path!r} is not supported here; give a checkpoint file or 'last'")
    return ckpt_path, False


def _merge_lora(typed: dict[str, Any], default: dict[str, Any], saved: dict[str, Any]) -> dict[str, Any]:
    merged = dict(typed)
    for field, value in saved.items():
        current = typed.get(field)
        if current != default.get(field) and current != value and field in PROTECTED_LORA_FIELDS:
            raise LitLoraError(
                f"--model.lora.{field} is {current!r} but the checkpoint was trained with {value!r}; "
                "drop the flag to resume, or start a new run without --ckpt_path"
            )
        if current == default.get(field):
            merged[field] = value
    return merged


def merge_checkpoint_hparams(
    current: dict[str, Any], defaults: dict[str, Any], saved: dict[str, Any]
) -> dict[str, Any]:
    """The model options to run with: each option the user left at its default takes the checkpoint's value;
    an option the user set is kept, unless it cannot fit the checkpoint's tensors (a protected LoRA field, a
    different `model_config`), which is a one-line error. Keys starting with `_` (Lightning's) are ignored."""
    merged = dict(current)
    base_typed = any(k in current and current[k] != defaults.get(k) for k in BASE_OPTIONS)
    for key, saved_value in saved.items():
        if key.startswith("_") or key not in current or key in NOT_MERGED:
            continue
        if base_typed and key in BASE_OPTIONS and current[key] == defaults.get(key):
            continue
        value, default = current[key], defaults.get(key)
        if key == "lora":
            merged[key] = _merge_lora(dict(value or {}), dict(default or {}), dict(saved_value or {}))
        elif value == default:
            merged[key] = saved_value
        elif key == "quantization" and value != saved_value:  # another base: the fingerprint would not say
            raise LitLoraError(f"--model.quantization is {value!r} but the checkpoint was trained with "
                               f"{saved_value!r}; drop the flag to resume, or start a new run without --ckpt_path")
        elif key == "model_config" and value != saved_value:
            raise LitLoraError(f"--model.model_config is {value!r} but the checkpoint was trained with {saved_value!r}")
    return merged


def logger_location(logger: Any, default_root_dir: Optional[str] = None) -> tuple[str, str]:
    """(save_dir, name): the folder whose subfolders are the runs of the configured logger (the first of
    several), from plain config values. TensorBoard and CSV: save_dir/name/version_N. MLflow: its file store
    (or, for a server, the Trainer's default_root_dir) / experiment id / run id, as Lightning's ModelCheckpoint
    lays it out. Without a logger: the folder lit_lora makes for such runs (`lightning_logs/lit_lora` under
    default_root_dir)."""
    if logger is None or isinstance(logger, bool):
        logger = {} if logger is not False else None
    if isinstance(logger, list):
        logger = logger[0] if logger else {}
    if logger is None:
        return os.path.join(default_root_dir or "", "lightning_logs"), "lit_lora"
    init = dict(logger.get("init_args") or {}) if isinstance(logger, dict) else {}
    if isinstance(logger, dict) and str(logger.get("class_path", "")).rpartition(".")[2] == "MLFlowLogger":
        uri = init.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI") or f"file:{init.get('save_dir', './mlruns')}"
        save_dir = uri[len("file:"):] if uri.startswith("file:") else (default_root_dir or ".")
        return save_dir, _mlflow_experiment_id(uri, init.get("experiment_name", "lightning_logs"))
    return init.get("save_dir", "lightning_logs"), init.get("name", "lit_lora")


def _mlflow_experiment_id(tracking_uri: str, name: str) -> str:
    """The id MLflow gave the experiment `name` (its runs' folders are under it); `name` if there is none yet."""
    from mlflow.tracking import MlflowClient

    experiment = MlflowClient(tracking_uri=tracking_uri).get_experiment_by_name(name)
    return experiment.experiment_id if experiment is not None else name
