"""`LitLoraCLI`: LightningCLI with our defaults, forced callbacks and checkpoint-aware resume. It wires
options, defaults and links; the resume rules are in `resume.py`, the run-folder rules in `run_folder.py`.

The build, in LightningCLI's order: `parse_arguments` reads the checkpoint of `--ckpt_path` once and merges
its settings by the resume rules; `before_instantiate_classes` checks the trainer options and data files;
the model, the data module and the trainer are built (`instantiate_trainer` claims the run folder and adds
`run_callbacks()`); `after_instantiate_classes` checks the tokenizer against the model. Inside `fit`
the data module feeds batches, the model computes from them, and the callbacks watch and decide for both
(`AutoBatchSize`, `DataPlan`, `RunSummary`, `FiniteLossStop`)."""

from __future__ import annotations

import os
import sys
from typing import Any, Optional

from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_only

from lit_lora.callbacks.checkpoint import RunCheckpoint
from lit_lora.callbacks.graceful_stop import GracefulStop
from lit_lora.callbacks.hparams import HparamsMetric
from lit_lora.callbacks.loss_trend import LossTrend
from lit_lora.callbacks.memory import MemoryMonitor
from lit_lora.callbacks.progress import with_run_eta
from lit_lora.callbacks.reference_logps import ReferenceLogps
from lit_lora.callbacks.run_callbacks import run_callbacks
from lit_lora.callbacks.samples import SampleGenerator
from lit_lora.callbacks.task_eval import TaskEval
from lit_lora.callbacks.throughput import TokenThroughput
from lit_lora.cli.config_errors import check_trainer_options
from lit_lora.cli.resume import plain, apply_checkpoint_settings, logger_location, resolve_ckpt_path
from lit_lora.cli.run_folder import (RunConfig, check_data_files, claim_run_folders, run_dir,
                                     say_where_resumed_run_writes, share_run_folder)
from lit_lora.data.datamodule import LitLoraData
from lit_lora.errors import LitLoraError
from lit_lora.generation.writer import JsonlPredictionWriter
from lit_lora.loading import export_best_checkpoint
from lit_lora.notes import print_note
from lit_lora.outputs import ensure_writable, shown
from lit_lora.pretrained.hub import check_vocabulary, tokenizer_source
from lit_lora.training.checkpoint_files import AtomicCheckpointIO, check_resumable, load_checkpoint_file
from lit_lora.training.devices import default_precision
from lit_lora.training.module import LitLora

# Reproducible by default: a printed config re-run with --config must draw the same seed (not `true`).
DEFAULT_SEED = 1234

TRAINER_DEFAULTS: dict[str, Any] = {
    "max_epochs": 3,
    "gradient_clip_val": 1.0,
    "log_every_n_steps": 10,
    # lit_lora prints its own summary (counts, LoRA targets, memory estimate); Lightning's table repeats it.
    "enable_model_summary": False,
    # Our sampler splits the data across ranks itself and can resume mid-epoch; Lightning's replacement
    # DistributedSampler could not.
    "use_distributed_sampler": False,
    # The sanity check runs the whole validation set: the loss of the model before any update, logged at
    # step 0 (callbacks.start_loss). 0 turns it off (large validation sets); a resumed run skips it.
    "num_sanity_val_steps": -1,
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "lightning_logs", "name": "lit_lora", "default_hp_metric": False},
    },
}


class LitLoraCLI(LightningCLI):
    resumes_training = True  # `summary` parses as fit but trains nothing: a weights-only checkpoint is fine
    def __init__(self, args: Optional[list[str]] = None, **kwargs: Any) -> None:
        kwargs.setdefault("seed_everything_default", DEFAULT_SEED)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})  # a resumed run rewrites, not aborts
        kwargs.setdefault("save_config_callback", RunConfig)  # into the run's folder, whatever the logger
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
        parser.add_lightning_class_args(MemoryMonitor, "memory")
        parser.add_lightning_class_args(TokenThroughput, "throughput")
        parser.add_lightning_class_args(SampleGenerator, "samples")
        parser.add_lightning_class_args(TaskEval, "eval_tasks")
        parser.add_lightning_class_args(HparamsMetric, "hparams_metric")
        parser.add_lightning_class_args(LossTrend, "loss_trend")
        parser.add_lightning_class_args(ReferenceLogps, "reference")
        # `predict`'s output: --predict_writer.output_file FILE (default: predictions.jsonl in the run folder).
        parser.add_lightning_class_args(JsonlPredictionWriter, "predict_writer")
        parser.link_arguments("data.block_size", "model.block_size")
        parser.link_arguments(
            ("model.tokenizer_name_or_path", "model.model_name_or_path"),
            "data.tokenizer_name_or_path",
            compute_fn=tokenizer_source,
        )
        parser.link_arguments("model.trust_remote_code", "data.trust_remote_code")

    # -- checkpoint-aware resume ---------------------------------------------------------------------------

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        self.resume_checkpoint: Optional[dict[str, Any]] = None
        sub = self.config.get("subcommand")
        cfg = self.config[sub] if sub else None
        if not cfg or not cfg.get("ckpt_path"):
            return
        location = logger_location(plain(cfg.trainer.get("logger")), cfg.trainer.get("default_root_dir"))
        ckpt_path, found = resolve_ckpt_path(cfg.ckpt_path, *location)
        if found and rank_zero_only.rank == 0:  # known from the launcher's environment, before the Trainer
            print_note(f"resuming from {ckpt_path}")
        # Read once: the trainer's checkpoint IO hands this copy to Lightning's restore, and the automatic
        # batch size takes the saved layout from it.
        self.resume_checkpoint = load_checkpoint_file(ckpt_path)
        if sub == "fit" and self.resumes_training:
            check_resumable(self.resume_checkpoint, ckpt_path)
        cfg.ckpt_path = ckpt_path
        defaults = {key: plain(value) for key, value in vars(self._parser(sub).get_defaults().model).items()}
        apply_checkpoint_settings(cfg, self.resume_checkpoint, defaults, sub == "fit" and self.resumes_training)
        # Lightning's own reading of --ckpt_path would merge every saved setting over the user's; ours (above)
        # decided which win. It skips an unset path, so the path is set again once it has run.
        self._ckpt_path, cfg.ckpt_path = ckpt_path, None

    def before_instantiate_classes(self) -> None:
        sub = self.config.get("subcommand")
        if self.resume_checkpoint is not None:
            self.config[sub].ckpt_path = self._ckpt_path
        trainer_cfg = self.config[sub].trainer if sub else self.config.trainer
        if trainer_cfg.get("precision") is None:
            trainer_cfg.precision = default_precision(trainer_cfg.get("accelerator"))
        check_trainer_options(trainer_cfg)
        share_run_folder(trainer_cfg)
        if sub in ("fit", "validate", "test"):
            check_data_files(self.config[sub].data)

    def after_instantiate_classes(self) -> None:
        if hasattr(self.datamodule, "load_tokenizer") and hasattr(self.model, "model"):
            # Before any tokenizing: a tokenizer larger than the model's embedding fails in one line.
            check_vocabulary(self.model.model, self.datamodule.load_tokenizer())

    def before_fit(self) -> None:
        if self.config["fit"].get("ckpt_path"):  # the step-0 validation was the run's start, not this one's
            self.trainer.num_sanity_val_steps = 0
        say_where_resumed_run_writes(self.trainer, self.config["fit"].get("ckpt_path"))
        logger = self.trainer.logger
        root = getattr(logger, "root_dir", None) or getattr(logger, "save_dir", None)
        if root and self.trainer.is_global_zero:
            try:  # fail now, with a clear line, rather than at the first log or checkpoint hours later
                ensure_writable(root)
            except OSError as err:
                raise LitLoraError(f"log directory {root!r} is not writable: {err.strerror or err}") from err

    def after_fit(self) -> None:
        """Export the best checkpoint (or the last, without validation) as a PEFT adapter next to the logs."""
        trainer = self.trainer
        # trainer.log_dir broadcasts from rank 0 under DDP: every rank must read it, not only rank 0.
        _ = trainer.log_dir
        if not trainer.is_global_zero or trainer.interrupted or _stopped_by_signal(trainer):
            return
        exported = export_best_checkpoint(trainer, self.model, os.path.join(run_dir(trainer), "adapter"))
        if exported is not None:
            best, out = exported
            print_note(f"exported {os.path.basename(best)} as a PEFT adapter to {shown(out)}")

    # -- trainer -------------------------------------------------------------------------------------------

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        trainer = super().instantiate_trainer(**kwargs)
        # After the model, data and Trainer were built: a bad option stops the run before any folder is made.
        sub = self.config.get("subcommand")
        resuming = sub != "fit" or bool(self.config[sub].get("ckpt_path"))
        claim_run_folders(trainer, resuming, self.config[sub].get("ckpt_path") if sub == "fit" else None)
        if not isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO):
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        trainer.strategy.checkpoint_io.preload(self.config[sub].get("ckpt_path"), self.resume_checkpoint)
        # Lightning's default bar, plus the run's ETA and without v_num; a bar class the user chose is kept.
        for i, callback in enumerate(trainer.callbacks):
            trainer.callbacks[i] = with_run_eta(callback) or callback
        trainer.callbacks.extend(run_callbacks((self.resume_checkpoint or {}).get(LitLoraData.__qualname__) or None))
        return trainer


class ParseOnlyCLI(LitLoraCLI):
    """Parses exactly as `fit` does and runs nothing: a tool (`summary`, `preview`) builds what it needs in
    `instantiate_classes` and reads it afterwards."""

    resumes_training = False  # a weights-only checkpoint is fine: nothing trains

    def after_instantiate_classes(self) -> None:
        self.subcommand = None  # LightningCLI runs the subcommand only when one is set


def _stopped_by_signal(trainer: Any) -> bool:
    return any(isinstance(c, GracefulStop) and c.signal_name for c in trainer.callbacks)
