"""`RunCheckpoint`: Lightning's ModelCheckpoint, saving into the logger's run folder and never letting
`last.ckpt` fall behind."""

from __future__ import annotations

import os
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint

from lit_lora.training.contracts import TrainingData


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose default folder is the logger's run folder (`lightning_logs/NAME/version_N/
    checkpoints`), which `fit --ckpt_path last` finds again and reuses."""

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self.dirpath is None and trainer.logger is not None and trainer.logger.log_dir:
            self.dirpath = os.path.join(trainer.logger.log_dir, "checkpoints")
        data = trainer.datamodule
        if isinstance(data, TrainingData) and data.val_ds is None and self.monitor:
            # No validation data: keep only last.ckpt instead of failing on a missing metric.
            self.monitor, self.save_top_k = None, 0
        super().setup(trainer, pl_module, stage)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        time_checked = self._last_time_checked
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        # Lightning defers an interval save until val_loss exists; last.ckpt must not wait, or a crash
        # between validations would lose every step since the previous one.
        every = self._every_n_train_steps
        due = (every >= 1 and trainer.global_step % every == 0) or self._last_time_checked != time_checked
        if due and self.save_last and self._last_global_step_saved < trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        # A run that stops on max_steps between validations would otherwise end with an older last.ckpt.
        if self.save_last and not trainer.interrupted and self._last_global_step_saved < trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
