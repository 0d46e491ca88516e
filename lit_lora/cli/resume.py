"""The rules of `--ckpt_path`, in one module: which checkpoint a path names, which of its settings win over
the flags typed now, what is said about the changes, and which logger run a resumed run continues. Pure
functions over plain values (unit-tested without a `fit`), and `apply_checkpoint_settings`, which applies
them to the parsed configuration.

LightningCLI's own resume loads the checkpoint's hyperparameters over the flags the user typed, so a
changed learning rate would be silently undone, and fails with a raw error on a bad file; `LitLoraCLI`
applies these rules instead.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

from lightning.pytorch.utilities import rank_zero_only

from lit_lora.errors import LitLoraError
from lit_lora.notes import print_note
from lit_lora.pretrained.hub import tokenizer_source
from lit_lora.training.checkpoint_files import find_last_checkpoint, run_version_of

# How a resumed run treats each model option typed with another value than the checkpoint's. Every
# LitLora argument is listed (a unit test checks it), so a new option must be classified here.
#   "refused": the checkpoint's tensors or optimizer state cannot follow it; one line, exit 2.
#   "applied": the restored optimizer or schedule takes the new value (training/schedule.py); said in one line.
#   "used":    nothing restored depends on it (how the step is computed, or checked when the weights load).
#   "data":    set from the data options (data changes are said by `data_changes`).
RESUME_RULES: dict[str, str] = {
    "model_name_or_path": "used",  # the base weights are checked by fingerprint when the checkpoint loads
    "model_config": "refused",
    "tokenizer_name_or_path": "used",
    "lora": "lora",  # field by field: LORA_RULES
    # Refused: the checkpoint's LoRA weights would replace another adapter's at once, and a preference run's
    # reference is a frozen copy of this one, so left out it is read again from the checkpoint's path.
    "adapter_path": "refused",
    "gradient_checkpointing": "used",
    "base_dropout": "used",  # acts in the step only, as LoRA's dropout
    "learning_rate": "applied",
    "weight_decay": "applied",
    "betas": "applied",
    "optimizer": "refused",  # another optimizer cannot take this one's state
    "warmup_steps": "applied",
    "warmup_ratio": "applied",
    "min_lr_ratio": "applied",
    "block_size": "data",
    "base_dtype": "used",
    "quantization": "refused",  # another base: the fingerprint would not say
    "quantization_options": "used",  # what changes the weights is checked when the checkpoint loads
    "attn_implementation": "used",
    "tf32": "used",
    "compile": "used",
    "compile_options": "used",
    "trust_remote_code": "used",
    "generation": "used",
    "objective": "refused",  # another objective needs other batches and another optimizer path
}
# LoRA fields: those that shape or scale the trained tensors are refused; dropout only acts in the step.
LORA_RULES: dict[str, str] = {
    "r": "refused", "alpha": "refused", "target_modules": "refused", "bias": "refused", "use_rslora": "refused",
    "use_dora": "refused", "init_lora_weights": "refused", "modules_to_save": "refused", "extra": "refused",
    "dropout": "used",
}
# What the base model is. Typing either one means "this base": neither is then filled in from the
# checkpoint, so a path typed for a pretrained model never silently gets the checkpoint's random-init shape.
BASE_OPTIONS = ("model_name_or_path", "model_config")
# The data options that decide what a run trains on (the checkpoint's `datamodule_hyper_parameters`).
# (The chat template is not among them: a resumed run renders with the one its checkpoint records.)
DATA_OPTIONS = ("train_files", "dataset_name", "dataset_config", "train_split", "format", "text_field",
                "train_on", "packing", "block_size")
RESTART = "drop the flag to resume, or start a new run without --ckpt_path"


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
        if current != default.get(field) and current != value and LORA_RULES.get(field, "refused") == "refused":
            raise LitLoraError(f"--model.lora.{field} is {current!r} but the checkpoint was trained with {value!r}; "
                               f"{RESTART}")
        if current == default.get(field):
            merged[field] = value
    return merged


def merge_checkpoint_hparams(
    current: dict[str, Any], defaults: dict[str, Any], saved: dict[str, Any]
) -> dict[str, Any]:
    """The model options to run with: each option the user left at its default takes the checkpoint's value;
    an option the user set is kept unless RESUME_RULES refuses it (a one-line error). Keys starting with `_`
    (Lightning's) are ignored."""
    merged = dict(current)
    base_typed = any(k in current and current[k] != defaults.get(k) for k in BASE_OPTIONS)
    for key, saved_value in saved.items():
        rule = RESUME_RULES.get(key, "refused")
        if key.startswith("_") or key not in current or rule == "data":
            continue
        if base_typed and key in BASE_OPTIONS and current[key] == defaults.get(key):
            continue
        value, default = current[key], defaults.get(key)
        if rule == "lora":
            merged[key] = _merge_lora(dict(value or {}), dict(default or {}), dict(saved_value or {}))
        elif value == default:
            merged[key] = saved_value
        elif rule == "refused" and value != saved_value:
            raise LitLoraError(f"--model.{key} is {value!r} but the checkpoint was trained with {saved_value!r}; "
                               f"{RESTART}")
    return merged


def applied_changes(merged: dict[str, Any], saved: dict[str, Any]) -> Optional[str]:
    """One line naming the optimizer and schedule settings a resumed run changes ("applied" in
    RESUME_RULES), or None when it keeps the checkpoint's."""
    changed = [f"model.{key} {_shown(merged[key])} (was {_shown(saved[key])})"
               for key, rule in RESUME_RULES.items()
               if rule == "applied" and key in merged and key in saved and _differs(merged[key], saved[key])]
    if not changed:
        return None
    return (f"lit_lora: resuming with {', '.join(changed)}: the restored optimizer and schedule use "
            "them from the next step on")


def data_changes(current: dict[str, Any], saved: Optional[dict[str, Any]]) -> Optional[str]:
    """One line when a resumed run trains on other data than the checkpoint's run (another file, dataset,
    format or block size), or None. `saved`: the checkpoint's `datamodule_hyper_parameters`."""
    if not saved:
        return None
    changed = [f"data.{key} {_shown(current.get(key))} (was {_shown(saved.get(key))})"
               for key in DATA_OPTIONS
               if key in saved and _differs(_paths(current.get(key)), _paths(saved.get(key)))]
    if not changed:
        return None
    return (f"lit_lora: resuming on other data than the checkpoint's run: {', '.join(changed)}; "
            "training continues at the same sample position in the new data")


def _differs(a: Any, b: Any) -> bool:
    return _as_list(a) != _as_list(b)


def _as_list(value: Any) -> Any:
    """Tuples as lists: a checkpoint's YAML-born values have no tuples."""
    return list(value) if isinstance(value, tuple) else value


def _paths(value: Any) -> Any:
    """File names compared as absolute paths (a checkpoint records them as typed)."""
    if isinstance(value, str) and os.path.exists(value):
        return os.path.abspath(value)
    if isinstance(value, (list, tuple)):
        return [_paths(v) for v in value]
    return value


def _shown(value: Any) -> str:
    return repr(_as_list(value))


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


def apply_checkpoint_settings(cfg: Any, ckpt: dict[str, Any], defaults: dict[str, Any], training: bool) -> None:
    """Merge the checkpoint's model settings into the parsed subcommand config `cfg` by `RESUME_RULES` (a
    setting typed now wins where the rules allow), say what changed when `training`, render conversations
    with the recorded chat template, and continue the checkpoint's logger run."""
    model_cfg = cfg.model
    current = {key: plain(value) for key, value in vars(model_cfg).items()}
    saved = ckpt.get("hyper_parameters") or {}
    merged = merge_checkpoint_hparams(current, defaults, saved)
    if training and rank_zero_only.rank == 0:
        for line in (applied_changes(merged, saved),
                     data_changes(plain(vars(cfg.data)), ckpt.get("datamodule_hyper_parameters"))):
            if line:
                print_note(line)
    for key, value in merged.items():
        if value == current[key]:
            continue
        if isinstance(value, dict) and hasattr(model_cfg[key], "keys"):  # a settings group such as lora
            for field, field_value in value.items():
                model_cfg[key][field] = field_value
        else:
            model_cfg[key] = value
    # jsonargparse computed the linked data options at parse time, from the values before this merge.
    cfg.data.tokenizer_name_or_path = tokenizer_source(model_cfg.tokenizer_name_or_path, model_cfg.model_name_or_path)
    cfg.data.trust_remote_code = model_cfg.trust_remote_code
    recorded = ckpt["lit_lora"].get("chat_template")
    if recorded and cfg.data.get("chat_template", "auto") == "auto":  # render as the checkpoint's run did
        cfg.data.chat_template = recorded
    if training:
        # Continue the same logger run and checkpoint folder instead of starting a new one.
        set_logger_run(cfg.trainer, cfg.ckpt_path, ckpt["lit_lora"].get("logger_run_id"))


def set_logger_run(trainer_cfg: Any, ckpt_path: str, run_id: Optional[str]) -> None:
    """Point the configured logger at the checkpoint's run: its `version_N` folder (TensorBoard, CSV) when the
    checkpoint lies in this logger's `version_N/checkpoints` (a copy elsewhere starts a new folder, never
    another run's `version_N` here), or its run id (MLflow), unless the user chose one."""
    logger = trainer_cfg.get("logger")
    if logger is None or isinstance(logger, bool):
        return
    target = logger[0] if isinstance(logger, list) else logger
    init = getattr(target, "init_args", None)
    if init is None:
        return
    if "version" in init and init.get("version") is None:
        version = version_in(ckpt_path, init.get("save_dir") or "lightning_logs", init.get("name") or "")
        if version is not None:
            init.version = version
    if run_id is not None and "run_id" in init and init.get("run_id") is None:
        init.run_id = run_id


def version_in(ckpt_path: str, save_dir: str, name: str) -> Optional[int]:
    """N when the checkpoint lies in save_dir/name/version_N/checkpoints, the folder a resumed run goes on
    writing into; None for a checkpoint anywhere else (another folder's version_N is not this one's)."""
    version = run_version_of(ckpt_path)
    own = Path(ckpt_path).resolve().parent.parent.parent == Path(save_dir, name).resolve()
    return version if own else None


def plain(value: Any) -> Any:
    """A jsonargparse value as plain dicts and lists."""
    if hasattr(value, "as_dict"):
        return value.as_dict()
    if isinstance(value, list):
        return [plain(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    return value
