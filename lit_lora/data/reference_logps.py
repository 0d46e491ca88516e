"""Reference log-probabilities stored with the tokenized preference rows: the columns `ref_chosen_logps` and
`ref_rejected_logps` (pairs) or `ref_logps` (KTO's rows), which the preference collator puts in each batch so
that the objectives skip their reference forward. `callbacks.reference_logps` computes them; this module
keeps them, in a `datasets` folder beside the split's own Arrow files, under a key of the split's fingerprint
(its source, tokenizer, template, block_size and cutting rules, and the held-out split's seed) and the
reference policy's (base weights, starting adapter, dtype, precision): a change to any gives a new key.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np

from lit_lora.data.corpus import _hash

# Bumped when what the columns hold, or how they are computed, changes: older caches are not reused.
REFERENCE_VERSION = 1


def reference_names(ds: Any) -> tuple[str, ...]:
    """The reference columns rows of split `ds` take: a pair's two completions, or an unpaired row's one."""
    return ("ref_logps",) if "completion_ids" in ds.column_names else ("ref_chosen_logps", "ref_rejected_logps")


def reference_key(ds: Any, reference: str) -> str:
    """The cache key of split `ds`'s columns under the reference policy fingerprinted by `reference`."""
    return _hash("reference-logps", REFERENCE_VERSION, ds._fingerprint, reference)


def cache_folder(ds: Any, key: str, cache_dir: Optional[str]) -> str:
    """Where the columns of `key` live: beside the split's Arrow files, else in `cache_dir` (or lit_lora's
    own cache) for a split held in memory."""
    files = [f["filename"] for f in ds.cache_files]
    parent = os.path.dirname(files[0]) if files else str(Path(cache_dir or Path.home() / ".cache" / "lit_lora"))
    return os.path.join(parent, f"reference-logps-{key}")


def load_columns(folder: str, ds: Any) -> Optional[dict[str, np.ndarray]]:
    """The columns cached in `folder`, None when there are none (or not one value per row of `ds`)."""
    from datasets import Dataset

    if not os.path.isdir(folder):
        return None
    cached = Dataset.load_from_disk(folder).with_format("numpy")
    if len(cached) != len(ds) or set(cached.column_names) != set(reference_names(ds)):
        return None
    return {name: cached[name] for name in cached.column_names}


def save_columns(folder: str, columns: dict[str, np.ndarray]) -> None:
    """Write the columns to `folder` whole or not at all: into a temporary folder first, then renamed."""
    from datasets import Dataset

    partial = f"{folder}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    Dataset.from_dict({k: np.asarray(v, dtype=np.float32) for k, v in columns.items()}).save_to_disk(partial)
    if os.path.isdir(folder):  # another run wrote the same values meanwhile
        shutil.rmtree(partial, ignore_errors=True)
        return
    os.replace(partial, folder)


def with_columns(ds: Any, columns: dict[str, np.ndarray]) -> Any:
    """Split `ds` with the columns added row for row (replacing columns of the same names)."""
    from datasets import Dataset, concatenate_datasets

    kept = ds.remove_columns([c for c in columns if c in ds.column_names])
    added = Dataset.from_dict({k: np.asarray(v, dtype=np.float32) for k, v in columns.items()})
    return concatenate_datasets([kept, added], axis=1)
