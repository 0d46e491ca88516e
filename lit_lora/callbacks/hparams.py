"""`HparamsMetric`: TensorBoard's HPARAMS tab, with the best value of a monitored metric as its metric."""

from __future__ import annotations

import math
from typing import Any, Literal, Optional

from lightning.pytorch.callbacks import Callback

from lit_lora.callbacks.intervals import log_metrics


class HparamsMetric(Callback):
    """Fills TensorBoard's HPARAMS tab: the run's hyperparameters (model, data, and the trainer's precision,
    epochs, accumulation) with the best value of `monitor` so far as its metric (`hp/best_val_loss`), in
    place of Lightning's -1 placeholder. The best value is kept in checkpoints, so a resumed run continues it.
    """

    def __init__(self, monitor: str = "val_loss", mode: Literal["min", "max"] = "min") -> None:
        """
        Args:
            monitor: The logged metric whose best value is the HPARAMS metric.
            mode: "min" if lower is better, "max" if higher is.
        """
        self.monitor = monitor
        self.mode = mode
        self.best: Optional[float] = None

    @property
    def tag(self) -> str:
        return f"hp/best_{self.monitor}"

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, mode=self.mode)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = state_dict.get("best")

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.is_global_zero:
            return
        params = flat_hparams(trainer, pl_module)
        for logger in trainer.loggers:
            writer = _tensorboard_writer(logger)
            if writer is None:  # CSV, MLflow, ...: the flat hyperparameters; the metric is logged as a scalar
                if trainer.global_step == 0:  # a resumed run logged them when it started (MLflow refuses changes)
                    logger.log_hyperparams(params)
                continue
            from torch.utils.tensorboard.summary import hparams

            # The session names the metric; its value is the scalar of the same tag, logged at each validation.
            for summary in hparams(params, {self.tag: 0.0}):
                writer.add_summary(summary)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or value is None or trainer.state.fn != "fit":
            return
        value = float(value)
        if math.isnan(value):
            return
        better = min if self.mode == "min" else max
        self.best = value if self.best is None else better(self.best, value)
        if trainer.is_global_zero:
            log_metrics(trainer, {self.tag: self.best}, trainer.global_step)


def _tensorboard_writer(logger: Any) -> Any:
    from lightning.pytorch.loggers import TensorBoardLogger

    if not isinstance(logger, TensorBoardLogger):
        return None
    return logger.experiment._get_file_writer()


def flat_hparams(trainer: Any, pl_module: Any) -> dict[str, Any]:
    """Model and data hyperparameters plus the trainer settings that change results, flattened to
    `group/name` keys with values TensorBoard accepts (numbers, strings, booleans)."""
    params: dict[str, Any] = {}
    _flatten("", dict(pl_module.hparams), params)
    datamodule = trainer.datamodule
    if datamodule is not None and hasattr(datamodule, "hparams"):
        _flatten("data/", dict(datamodule.hparams), params)
    _flatten(
        "trainer/",
        {
            "precision": str(trainer.precision),
            "max_epochs": trainer.max_epochs,
            "max_steps": trainer.max_steps,
            "accumulate_grad_batches": trainer.accumulate_grad_batches,
            "gradient_clip_val": trainer.gradient_clip_val,
        },
        params,
    )
    return params


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, dict):
        for k, v in value.items():
            if not str(k).startswith("_"):
                _flatten(f"{prefix}{k}/", v, out)
        return
    out[prefix.rstrip("/")] = value if isinstance(value, (int, float, str)) else str(value)
