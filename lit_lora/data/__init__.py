"""Data: reading corpora into tokenized, packed `datasets` splits (`corpus`, `sources`), batches and
samplers that resume mid-epoch, and the LightningDataModule that joins them (`datamodule`).

`lit_lora.data.LitLoraData` (a `class_path` in users' configs) is imported on first use.
"""

from typing import Any

__all__ = ["LitLoraData"]


def __getattr__(name: str) -> Any:
    if name == "LitLoraData":
        # lazy re-export: importing the package must not load Lightning
        from lit_lora.data.datamodule import LitLoraData

        return LitLoraData
    raise AttributeError(f"module 'lit_lora.data' has no attribute {name!r}")
