"""Callbacks: what watches or steers a run, one per file as in `lightning/pytorch/callbacks/`.

Deciding for the trainer and the model from the data (the model and the data never read each other):
the automatic batch size (`AutoBatchSize`), validation, the schedule's length and the chat template
(`DataPlan`), the start-of-run summary (`RunSummary`), the non-finite loss stop (`FiniteLossStop`);
`run_callbacks()` lists them in the order they run. Watching, in TensorBoard (or any Lightning logger)
and the terminal: memory, throughput, the progress bar, text samples, lm-eval tasks (`TaskEval`), HPARAMS,
the step-0 validation loss and the early loss trend. Steering: checkpoints that keep `last.ckpt` current (`RunCheckpoint`), a
safe stop on SIGTERM or Ctrl-C (`GracefulStop`), and the weight layout a 4-bit base trains on
(`QuantizedTrainingLayout`).

    tensorboard --logdir lightning_logs

The CLI adds them all; those with settings have an option group each (`--checkpoint.*`,
`--graceful_stop.*`, `--memory.*`, `--throughput.*`, `--samples.*`, `--eval_tasks.*`, `--hparams_metric.*`,
`--loss_trend.*`;
the step-0 loss follows `--trainer.num_sanity_val_steps`). Tag names are stable. Nothing here synchronises
the GPU on every step: counts stay on the device and are read once per `log_every_n_steps`. The callbacks
are imported on first use, so importing this package loads no Lightning.
"""

from importlib import import_module
from typing import Any

_WHERE = {
    "MemoryMonitor": "memory",
    "TokenThroughput": "throughput",
    "RunProgressBar": "progress",
    "RunRichProgressBar": "progress",
    "with_run_eta": "progress",
    "SampleGenerator": "samples",
    "format_samples": "samples",
    "HparamsMetric": "hparams",
    "flat_hparams": "hparams",
    "StartValLoss": "start_loss",
    "LossTrend": "loss_trend",
    "RunCheckpoint": "checkpoint",
    "GracefulStop": "graceful_stop",
    "QuantizedTrainingLayout": "quantized_layout",
    "AutoBatchSize": "auto_batch",
    "DataPlan": "data_plan",
    "FiniteLossStop": "finite_loss",
    "RunSummary": "run_summary",
    "TaskEval": "task_eval",
}
__all__ = list(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(f"lit_lora.callbacks.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'lit_lora.callbacks' has no attribute {name!r}")
