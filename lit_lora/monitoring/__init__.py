"""Callbacks for watching a run in TensorBoard (or any Lightning logger) and the terminal, one per file as
in `lightning/pytorch/callbacks/`: memory, throughput, the progress bar, text samples, HPARAMS, the step-0
validation loss and the early loss trend.

    tensorboard --logdir lightning_logs

The CLI adds each as a forced callback with its own option group (`--memory.*`, `--throughput.*`,
`--samples.*`, `--hparams_metric.*`, `--loss_trend.*`; the step-0 loss follows
`--trainer.num_sanity_val_steps`). Tag names are stable; docs/watching-a-run.md lists them.
Nothing here synchronises the GPU on every step: counts stay on the device and are read once per
`log_every_n_steps`. The callbacks are imported on first use (`lit_lora.monitoring.MemoryMonitor` keeps
working as a `class_path`).
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
}
__all__ = list(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(f"lit_lora.monitoring.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'lit_lora.monitoring' has no attribute {name!r}")
