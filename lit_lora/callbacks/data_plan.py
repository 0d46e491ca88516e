"""`DataPlan`: what the data decides about a run, applied to the trainer and the model by one callback, so
the data module only reports and never writes to either: validation off when there is no validation data,
the learning-rate schedule's length counted from the data (a resumed epoch may be laid out anew), one fresh
train loader after such an epoch, and the chat template the model's checkpoints record."""

from __future__ import annotations

import math
from typing import Any, Optional

from lightning.pytorch.callbacks import Callback

from lit_lora.training.steps import planned_steps


class DataPlan(Callback):
    """Reads the data module's `val_ds`, `steps_left`, `reload_after_epochs` and `chat_template`
    (`training.contracts.TrainingData`); a data module without them leaves Lightning's behaviour as is."""

    def __init__(self) -> None:
        self._user_reload: Optional[int] = None  # the user's reload_dataloaders_every_n_epochs, while changed

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        data = trainer.datamodule
        if stage == "fit" and data is not None and hasattr(data, "val_ds") and data.val_ds is None:
            trainer.limit_val_batches = 0  # no validation; Lightning would warn its loader is empty
        if hasattr(pl_module, "chat_template"):
            # The Jinja text conversations were rendered with: the model's checkpoints record it for export,
            # merge, generate and a resumed run.
            pl_module.chat_template = getattr(data, "chat_template", None)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        # Before the module's own on_train_start, which sets up its schedule with this length.
        total = planned_steps(trainer)
        if hasattr(pl_module, "schedule_steps"):
            pl_module.schedule_steps = int(total) if math.isfinite(total) else None
        # The first train loader is built by now; Lightning skips on_train_epoch_start for an epoch it resumes.
        self.on_train_epoch_start(trainer, pl_module)

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        """After the epoch's train loader is built (or kept)."""
        reload = getattr(trainer.datamodule, "reload_after_epochs", None)
        if reload is not None and self._user_reload is None:
            self._user_reload = trainer.reload_dataloaders_every_n_epochs
            trainer.reload_dataloaders_every_n_epochs = reload
        elif reload is None and self._user_reload is not None:  # the loader after it: the user's setting is back
            trainer.reload_dataloaders_every_n_epochs, self._user_reload = self._user_reload, None
