"""`DataPlan`: what the data decides about a run, applied to the trainer and the model by one callback, so
the data module only reports and never writes to either: validation off when there is no validation data,
the learning-rate schedule's length counted from the data (a resumed epoch may be laid out anew), one fresh
train loader after such an epoch, the chat template the model's checkpoints record, and, before the first
step, that the model's objective can read the data's batches (preference data for a preference objective,
SFT's for SFT's)."""

from __future__ import annotations

import math
from typing import Any, Optional

from lightning.pytorch.callbacks import Callback

from lit_lora.errors import LitLoraError
from lit_lora.training.steps import planned_steps


class DataPlan(Callback):
    """Reads the data module's `val_ds`, `steps_left`, `reload_after_epochs` and `chat_template`
    (`training.contracts.TrainingData`); a data module without them leaves Lightning's behaviour as is."""

    def __init__(self) -> None:
        self._user_reload: Optional[int] = None  # the user's reload_dataloaders_every_n_epochs, while changed

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        data = trainer.datamodule
        if stage in ("fit", "validate", "test"):
            check_objective(data, pl_module)
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


def check_objective(data: Any, pl_module: Any) -> None:
    """One line, before any step, when the model's objective needs batch keys the data's batches lack: an
    SFT objective on preference data, a preference objective on SFT data, KTO on pairs. Runs after the data
    module's setup (Lightning calls it first), from the data's `batch_keys()` and the objective's
    `check_batch`; a data module or model without them is not checked."""
    objective = getattr(pl_module, "objective", None)
    keys = data.batch_keys() if data is not None and hasattr(data, "batch_keys") else None
    if objective is None or keys is None or not hasattr(objective, "check_batch"):
        return
    try:
        objective.check_batch(dict.fromkeys(keys))
    except LitLoraError as err:
        fmt = getattr(data, "data_format", None)
        raise LitLoraError(f"{err}{f' (data.format {fmt})' if fmt else ''}: give data of the form the objective "
                           "reads (docs/preference-tuning.md), or another --model.objective") from None
