"""`LitLoraCLI`: LightningCLI with our defaults, forced callbacks and checkpoint-aware resume."""

from __future__ import annotations

import os
import sys
import tempfile
from typing import Any, Optional

from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_only

from lit_lora.checkpointing import (
    AtomicCheckpointIO,
    RunCheckpoint,
    claim_run_version,
    find_last_checkpoint,
    load_checkpoint_file,
    run_version_of,
)
from lit_lora.data import LitLoraData
from lit_lora.errors import LitLoraError
from lit_lora.faults import GracefulStop
from lit_lora.model import LitLora
from lit_lora.monitoring import HparamsMetric, MemoryMonitor, SampleGenerator, TokenThroughput, with_run_eta
from lit_lora.prediction import JsonlPredictionWriter

# Reproducible by default: a printed config re-run with --config must draw the same seed (not `true`).
DEFAULT_SEED = 1234

TRAINER_DEFAULTS: dict[str, Any] = {
    "max_epochs": 3,
    "gradient_clip_val": 1.0,
    "log_every_n_steps": 10,
    # Our sampler splits the data across ranks itself and can resume mid-epoch; Lightning's replacement
    # DistributedSampler could not.
    "use_distributed_sampler": False,
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "lightning_logs", "name": "lit_lora", "default_hp_metric": False},
    },
}

# Model fields a resumed run may not change: the checkpoint's tensors would not fit (rank, targets) or
# would mean something else (another architecture). The base model's *path* may change: the weights
# themselves are checked by fingerprint when the checkpoint loads.
PROTECTED_LORA_FIELDS = ("r", "alpha", "target_modules", "use_dora", "modules_to_save")


def _tokenizer_source(tokenizer: Optional[str], model: str) -> str:
    return tokenizer or model


class LitLoraCLI(LightningCLI):
    def __init__(self, args: Optional[list[str]] = None, **kwargs: Any) -> None:
        kwargs.setdefault("seed_everything_default", DEFAULT_SEED)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})  # a resumed run rewrites, not aborts
        kwargs.setdefault("trainer_defaults", TRAINER_DEFAULTS)
        # The module builds its own AdamW + warm-up/cosine schedule; no generic --optimizer groups.
        kwargs.setdefault("auto_configure_optimizers", False)
        # Only the subcommand being run gets a parser: building all four (Trainer, model, data and every
        # callback group each) costs more start-up than `import lightning.pytorch` leaves room for.
        argv = sys.argv[1:] if args is None else args
        first = argv[0] if isinstance(argv, (list, tuple)) and argv else None
        self._only_subcommand = first if first in LightningCLI.subcommands() else None
        super().__init__(LitLora, LitLoraData, args=args, **kwargs)

    def subcommands(self) -> dict[str, set[str]]:  # a staticmethod in LightningCLI, which calls it on self
        every = LightningCLI.subcommands()
        only = getattr(self, "_only_subcommand", None)
        return {only: every[only]} if only else every

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        # Parse errors raise instead of printing the whole usage; lit_lora.cli.main prints one line.
        kwargs.setdefault("exit_on_error", False)
        return super().init_parser(**kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val_loss",
                "checkpoint.mode": "min",
                "checkpoint.save_top_k": 1,
                "checkpoint.save_last": True,
                "checkpoint.filename": "step{step:06d}-val_loss{val_loss:.4f}",
                "checkpoint.auto_insert_metric_name": False,
                # A resumed run must keep writing last.ckpt, not last-v1.ckpt, or `--ckpt_path last` goes stale.
                "checkpoint.enable_version_counter": False,
            }
        )
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        parser.set_defaults(
            {
                "early_stopping.monitor": "val_loss",
                "early_stopping.mode": "min",
                "early_stopping.patience": 3,
                # Judge after each validation only: a run that ends on max_steps before its first
                # validation must not fail for want of val_loss.
                "early_stopping.check_on_train_epoch_end": False,
            }
        )
        parser.add_lightning_class_args(GracefulStop, "graceful_stop")
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.set_defaults({"lr_monitor.logging_interval": "step"})
        # Watching a run (monitoring.py): memory/*, throughput/*, samples, hp/best_val_loss.
        parser.add_lightning_class_args(MemoryMonitor, "memory")
        parser.add_lightning_class_args(TokenThroughput, "throughput")
        parser.add_lightning_class_args(SampleGenerator, "samples")
        parser.add_lightning_class_args(HparamsMetric, "hparams_metric")
        # `predict`'s output: --predict_writer.output_file FILE (default: predictions.jsonl in the run folder).
        parser.add_lightning_class_args(JsonlPredictionWriter, "predict_writer")
        parser.link_arguments("data.block_size", "model.block_size")
        parser.link_arguments(
            ("model.tokenizer_name_or_path", "model.model_name_or_path"),
            "data.tokenizer_name_or_path",
            compute_fn=_tokenizer_source,
        )

    # -- checkpoint-aware resume ---------------------------------------------------------------------------

    def _parse_ckpt_path(self) -> None:
        """Replaces LightningCLI's version, which loads the checkpoint's hyperparameters over the flags the
        user typed and fails with a raw error on a bad file."""
        sub = self.config.get("subcommand")
        if not sub:
            return
        cfg = self.config[sub]
        ckpt_path = cfg.get("ckpt_path")
        if not ckpt_path:
            return
        if ckpt_path == "last":
            init = _init_args(cfg.trainer.get("logger"))
            save_dir, name = init.get("save_dir", "lightning_logs"), init.get("name", "lit_lora")
            found = find_last_checkpoint(save_dir, name)
            if found is None:
                raise LitLoraError(
                    f"--ckpt_path last: no last.ckpt under {save_dir}/{name}/version_*/checkpoints; "
                    "pass the checkpoint file with --ckpt_path FILE"
                )
            ckpt_path = found
            if rank_zero_only.rank == 0:  # known from the launcher's environment already, before the Trainer
                print(f"lit_lora: resuming from {ckpt_path}")
        elif ckpt_path in ("best", "hpc", "registry"):
            raise LitLoraError(f"--ckpt_path {ckpt_path!r} is not supported here; give a checkpoint file or 'last'")
        ckpt = load_checkpoint_file(ckpt_path)
        cfg.ckpt_path = ckpt_path
        self._merge_checkpoint_hparams(sub, ckpt.get("hyper_parameters") or {})
        version = run_version_of(ckpt_path)
        if sub == "fit" and version is not None:
            # Continue the same TensorBoard run and checkpoint folder instead of starting version_N+1.
            _set_logger_version(cfg.trainer, version)

    def _merge_checkpoint_hparams(self, sub: str, saved: dict[str, Any]) -> None:
        """Model options the user left at their defaults come from the checkpoint; options the user set are
        kept, except those that would not fit the checkpoint's tensors, which stop with a clear message."""
        saved = {k: v for k, v in saved.items() if not k.startswith("_")}
        model_cfg = self.config[sub].model
        defaults = self._parser(sub).get_defaults().model
        for key, saved_value in saved.items():
            if key not in model_cfg or key == "block_size":
                continue
            current = _plain(model_cfg[key])
            default = _plain(defaults.get(key))
            if key == "lora":
                current, default, saved_value = dict(current or {}), dict(default or {}), dict(saved_value or {})
                for field, value in saved_value.items():
                    typed = current.get(field)
                    if typed != default.get(field) and typed != value and field in PROTECTED_LORA_FIELDS:
                        raise LitLoraError(
                            f"--model.lora.{field} is {typed!r} but the checkpoint was trained with {value!r}; "
                            "drop the flag to resume, or start a new run without --ckpt_path"
                        )
                    if typed == default.get(field):
                        model_cfg.lora[field] = value
                continue
            if current == default:
                model_cfg[key] = saved_value
            elif key == "model_config" and current != saved_value:
                raise LitLoraError(
                    f"--model.model_config is {current!r} but the checkpoint was trained with {saved_value!r}"
                )

    def before_instantiate_classes(self) -> None:
        sub = self.config.get("subcommand")
        trainer_cfg = self.config[sub].trainer if sub else self.config.trainer
        if trainer_cfg.get("precision") is None:
            trainer_cfg.precision = default_precision(trainer_cfg.get("accelerator"))
        if sub in ("fit", "validate", "test"):
            check_data_files(self.config[sub].data)

    def before_fit(self) -> None:
        logger = self.trainer.logger
        root = getattr(logger, "root_dir", None) or getattr(logger, "save_dir", None)
        if root and self.trainer.is_global_zero:
            try:  # fail now, with a clear line, rather than at the first log or checkpoint hours later
                os.makedirs(root, exist_ok=True)
                with tempfile.TemporaryFile(dir=root):
                    pass
            except OSError as err:
                raise LitLoraError(f"log directory {root!r} is not writable: {err.strerror or err}") from err

    def after_fit(self) -> None:
        """Export the best checkpoint (or the last, without validation) as a PEFT adapter next to the logs."""
        trainer = self.trainer
        # trainer.log_dir broadcasts from rank 0 under DDP: every rank must call it, not only rank 0.
        log_dir = trainer.log_dir
        callback = trainer.checkpoint_callback
        if not trainer.is_global_zero or callback is None or trainer.interrupted or _stopped_by_signal(trainer):
            return
        best = callback.best_model_path or callback.last_model_path
        if not best or not os.path.isfile(best):
            return
        from lit_lora.adapter_io import export_adapter, module_from_checkpoint
        from lit_lora.model import _is_fsdp

        out_dir = os.path.join(log_dir or ".", "adapter")
        if _is_fsdp(trainer.model):  # each rank holds a slice of the weights: rebuild the model whole
            out = export_adapter(module_from_checkpoint(best), out_dir, overwrite=True)
        else:  # the trained model is in memory: write the best checkpoint's LoRA weights with it
            # overwrite: a resumed run replaces the adapter this run exported before (ours, by its manifest).
            out = export_adapter(self.model, out_dir, checkpoint=load_checkpoint_file(best), overwrite=True)
        print(f"lit_lora: exported {os.path.basename(best)} as a PEFT adapter to {out}", flush=True)

    # -- trainer -------------------------------------------------------------------------------------------

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        # After the model and data were built: a bad option stops the run before any folder is made.
        logger = kwargs.get("logger", self._get(self.config_init, "trainer", default={}).get("logger"))
        for each in logger if isinstance(logger, list) else [logger]:
            _claim_logger_version(each)
        trainer = super().instantiate_trainer(**kwargs)
        # Atomic, size-reporting, weights_only checkpoint I/O for every strategy.
        if not isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO):
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        # Lightning's default bar, plus the run's ETA and without v_num; a bar class the user chose is kept.
        for i, callback in enumerate(trainer.callbacks):
            trainer.callbacks[i] = with_run_eta(callback) or callback
        return trainer


def _stopped_by_signal(trainer: Any) -> bool:
    return any(isinstance(c, GracefulStop) and c.signal_name for c in trainer.callbacks)


def check_data_files(data_cfg: Any) -> None:
    """Missing or unreadable data files stop the run before the model is built (seconds for GPT-2 small,
    minutes for larger ones), with the same message the data module would give later."""
    from lit_lora.corpus import resolve_files

    if data_cfg.get("dataset_name"):
        return
    for key in ("train_files", "val_files", "test_files"):
        value = data_cfg.get(key)
        if value:
            resolve_files([value] if isinstance(value, str) else list(value), f"data.{key}")


def default_precision(accelerator: Any) -> str:
    """bf16-mixed where a CUDA GPU supports it (half the activation memory, tensor cores), else fp32."""
    import torch

    on_gpu = accelerator in (None, "auto", "gpu", "cuda") and torch.cuda.is_available()
    return "bf16-mixed" if on_gpu and torch.cuda.is_bf16_supported() else "32-true"


def _plain(value: Any) -> Any:
    if hasattr(value, "as_dict"):
        return value.as_dict()
    if hasattr(value, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(value)
    return value


def _init_args(logger: Any) -> dict[str, Any]:
    if logger is None or logger is False or logger is True:
        return {}
    logger = _plain(logger)
    if isinstance(logger, list):
        logger = logger[0] if logger else {}
    return dict(logger.get("init_args") or {}) if isinstance(logger, dict) else {}


# Rank 0 claims the run's version folder; the processes Lightning's launcher starts for the other ranks
# inherit the environment and use the same version.
RUN_VERSION_ENV = "LIT_LORA_RUN_VERSION"


def _claim_logger_version(logger: Any) -> None:
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


def _set_logger_version(trainer_cfg: Any, version: int) -> None:
    logger = trainer_cfg.get("logger")
    if logger is None or isinstance(logger, bool):
        return
    target = logger[0] if isinstance(logger, list) else logger
    if hasattr(target, "init_args") and "version" in target.init_args:
        target.init_args.version = version
