"""The old path of the callbacks that watch a run, kept so old configs keep working: a YAML whose
`class_path` names `lit_lora.monitoring.MemoryMonitor` (or another name below) still loads. They are in
`lit_lora.callbacks`; nothing in the package imports this module. Names load on first use, so importing
it loads no Lightning.
"""

from importlib import import_module
from typing import Any

__all__ = ["MemoryMonitor", "TokenThroughput", "RunProgressBar", "RunRichProgressBar", "with_run_eta",
           "SampleGenerator", "format_samples", "HparamsMetric", "flat_hparams", "StartValLoss",
           "LossTrend"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(import_module("lit_lora.callbacks"), name)
    raise AttributeError(f"module 'lit_lora.monitoring' has no attribute {name!r}")
