"""The validation loss of the model a run starts from, logged at step 0: TensorBoard's `val_loss` curve
starts at the base, so a fine-tune's gain over it can be read off the dashboard."""

from __future__ import annotations

import math
from typing import Any

from lightning.pytorch.callbacks import Callback

from lit_lora.notes import print_note


class StartValLoss(Callback):
    """Logs what a full sanity check measured (`trainer.num_sanity_val_steps=-1`, lit_lora's default) as
    the step-0 `val_loss` and `val_ppl`, and prints it.

    Lightning runs the sanity check under `isolate_rng` (no draw shifts the training's dropout masks) and
    discards what it logs, so early stopping and best-checkpoint selection never see it; this callback
    writes it to the loggers directly. A resumed run does not repeat it (LitLoraCLI turns it off). A
    positive num_sanity_val_steps is Lightning's partial check: not logged, as it is not the full loss.
    """

    def on_sanity_check_end(self, trainer: Any, pl_module: Any) -> None:
        loss = trainer.callback_metrics.get("val_loss")
        if loss is None or not math.isinf(trainer.num_sanity_val_steps) or trainer.global_step != 0:
            return
        metrics = {"val_loss": float(loss)}
        if "val_ppl" in trainer.callback_metrics:  # an objective whose loss is a token NLL (SFT's)
            metrics["val_ppl"] = math.exp(min(float(loss), 80.0))
        for logger in trainer.loggers:  # rank zero only (Lightning's loggers)
            logger.log_metrics(metrics, step=0)
        if trainer.is_global_zero:
            print_note(f"val_loss {metrics['val_loss']:.4f} at step 0 (the model before any update)")
