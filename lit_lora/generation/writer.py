"""Completions written as JSONL, one record a line, flushed as they come (readable while the rest is
generated): `JsonlPredictionWriter` for `predict`, `open_completions` + `write_records` for `generate`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any, Iterable, Optional

from lightning.pytorch.callbacks import BasePredictionWriter

from lit_lora.errors import LitLoraError
from lit_lora.generation.prompts import completion_records
from lit_lora.outputs import check_output_file
from lit_lora.notes import print_note


def open_completions(path: str | Path, option: str, overwrite: bool) -> tuple[Path, IO[str]]:
    """The file, opened for writing, if `lit_lora.outputs` allows it; else a one-line error naming `option`."""
    out = check_output_file(path, option, overwrite)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return out, open(out, "w", encoding="utf-8")
    except OSError as err:
        raise LitLoraError(f"{option} {str(path)!r} cannot be written: {err.strerror or err}") from err


def write_records(fh: IO[str], records: Iterable[dict[str, Any]]) -> int:
    """Append each record as a JSON line, flushing after each; returns how many were written."""
    count = 0
    for record in records:
        fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        fh.flush()
        count += 1
    return count


class JsonlPredictionWriter(BasePredictionWriter):
    """Writes `predict`'s completions as JSONL, batch by batch as they are produced."""

    def __init__(self, output_file: Optional[str] = None, overwrite: bool = False) -> None:
        """
        Args:
            output_file: JSONL file for `predict`'s completions ({"id", "sample", "prompt", "completion"} per
                line). Default: predictions.jsonl in the run's log folder. Unused by fit/validate/test.
            overwrite: Replace an existing completions file of ours at output_file (never another file).
        """
        super().__init__(write_interval="batch")
        self.output_file = output_file
        self.overwrite = overwrite
        self._fh: Any = None
        self._count = 0
        self.path: Optional[Path] = None

    def on_predict_start(self, trainer: Any, pl_module: Any) -> None:
        path = Path(self.output_file or Path(trainer.log_dir or ".") / "predictions.jsonl")
        if trainer.world_size > 1:
            # Each rank completes its own share of the prompts; the ids tell where each line belongs.
            path = path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")
        self.path, self._fh = open_completions(path, "--predict_writer.output_file", self.overwrite)
        self._count = 0

    def write_on_batch_end(self, trainer: Any, pl_module: Any, prediction: Any, batch_indices: Any,
                           batch: Any, batch_idx: int, dataloader_idx: int) -> None:
        tokenizer = trainer.datamodule.tokenizer
        stop = batch["eos_token_id"]  # EOS, or the ids a chat reply ends on
        self._count += write_records(self._fh, completion_records(tokenizer, batch["ids"], batch["prompts"],
                                                                  prediction.cpu(), stop if isinstance(stop, list) else None))

    def on_predict_end(self, trainer: Any, pl_module: Any) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
            print_note(f"wrote {self._count} completion(s) to {self.path}")
