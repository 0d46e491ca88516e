"""`predict` through LightningCLI: prompts from `--data.predict_file` in, completions out as JSONL.

    python -m lit_lora.cli predict --config my.yaml --ckpt_path CKPT --data.predict_file prompts.txt \
        --model.generation.temperature 0 --predict_writer.output_file completions.jsonl

The data module batches the prompts (`PromptRows` + `PromptCollator`), `LitLora.predict_step` generates with
`lit_lora.generation` (the code `generate` uses), and `JsonlPredictionWriter` decodes and writes each batch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from lit_lora.generation import completion_records, encode_prompts
from lit_lora.outputs import check_output_file


class PromptRows(torch.utils.data.Dataset):
    """The prompts of `--data.predict_file`, each with its line number among the prompts (its id)."""

    def __init__(self, prompts: list[str]) -> None:
        self.prompts = prompts

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"id": int(i), "prompt": self.prompts[i]}


class PromptCollator:
    """Left-padded prompt batches for `LitLora.predict_step`; they carry their texts and ids for the writer."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        prompts = [r["prompt"] for r in rows]
        return {
            **encode_prompts(self.tokenizer, prompts),
            "ids": [r["id"] for r in rows],
            "prompts": prompts,
            "eos_token_id": self.tokenizer.eos_token_id,
        }


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
        path = check_output_file(path, "--predict_writer.output_file", self.overwrite)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self._count = path, 0
        self._fh = open(path, "w", encoding="utf-8")

    def write_on_batch_end(self, trainer: Any, pl_module: Any, prediction: Any, batch_indices: Any,
                           batch: Any, batch_idx: int, dataloader_idx: int) -> None:
        tokenizer = trainer.datamodule.tokenizer
        for record in completion_records(tokenizer, batch["ids"], batch["prompts"], prediction.cpu()):
            self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            self._count += 1
        self._fh.flush()  # readable while the run goes on

    def on_predict_end(self, trainer: Any, pl_module: Any) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
            print(f"lit_lora: wrote {self._count} completion(s) to {self.path}", flush=True)
