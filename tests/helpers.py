"""Helpers for tests: run the CLI in-process and read TensorBoard scalars back."""

from __future__ import annotations

import glob
import os
from typing import Any

from lit_lora.cli import cli_main


def fit_args(model_dir: Any, train: Any, tmp: Any, *extra: str) -> list[str]:
    return [
        "fit",
        "--model.model_name_or_path", str(model_dir),
        "--data.train_files", str(train),
        "--data.block_size", "32",
        "--data.batch_size", "4",
        "--data.cache_dir", str(os.path.join(tmp, "hf-cache")),
        "--model.warmup_steps", "2",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.log_every_n_steps", "1",
        *extra,
    ]


def run_cli(args: list[str]) -> Any:
    return cli_main(args)


def scalars(log_dir: str, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = sorted(glob.glob(os.path.join(log_dir, "**", "events.out.tfevents.*"), recursive=True))
    out: list[tuple[int, float]] = []
    for path in events:
        acc = EventAccumulator(path, size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            out += [(e.step, e.value) for e in acc.Scalars(tag)]
    return out
