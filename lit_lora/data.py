"""`LitLoraData`: the LightningDataModule that turns a corpus into resumable batches.

Sources: plain-text files or globs (a file is one document), JSONL with a text field, prompt/completion
JSONL (loss on the completion only), or a Hugging Face dataset by name or local path.
"""

from __future__ import annotations

import math
import os
from typing import Any, Literal, Optional, Union

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader

from lit_lora.corpus import IGNORE_INDEX, build_split, detect_format, resolve_files
from lit_lora.errors import LitLoraError
from lit_lora.sampler import ResumableSampler


class _Rows(torch.utils.data.Dataset):
    """Map-style view of a tokenized `datasets.Dataset` that also yields each row's index (its sample id)."""

    def __init__(self, ds: Any) -> None:
        self.ds = ds.with_format("python")
        # Packed blocks all have one length: a batch of them reads as one (B, T) NumPy array instead of
        # B x T Python ints, which the collator would then have to convert back.
        self._blocks = ds.with_format("numpy") if "labels" not in ds.column_names else None

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = self.ds[int(i)]
        row["sample_id"] = int(i)
        return row

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        # One Arrow slice per batch instead of one lookup per sample.
        rows = (self.ds if self._blocks is None else self._blocks)[[int(i) for i in indices]]
        keys = list(rows)
        return [{**{k: rows[k][j] for k in keys}, "sample_id": int(i)} for j, i in enumerate(indices)]


class Collator:
    """Stacks packed blocks, or pads prompt/completion examples to the longest in the batch.

    Padding is right-side for training; padded positions get attention_mask 0 and label -100, so the pad
    token id (often EOS) is never what masks anything.
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids = [r["input_ids"] for r in rows]
        sample_ids = torch.tensor([r["sample_id"] for r in rows])
        if "labels" not in rows[0]:
            # Packed blocks: NumPy rows from _Rows (stacked without touching each token), or lists.
            input_ids = torch.as_tensor(np.stack(ids) if isinstance(ids[0], np.ndarray) else ids, dtype=torch.long)
            return {"input_ids": input_ids, "labels": input_ids, "sample_ids": sample_ids}
        width = max(len(x) for x in ids)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rows):
            n = len(r["input_ids"])
            input_ids[j, :n] = torch.tensor(r["input_ids"])
            labels[j, :n] = torch.tensor(r["labels"])
            mask[j, :n] = 1
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels, "sample_ids": sample_ids}


class LitLoraData(pl.LightningDataModule):
    def __init__(
        self,
        train_files: Union[str, list[str], None] = None,
        val_files: Union[str, list[str], None] = None,
        val_fraction: float = 0.05,
        format: Literal["auto", "text", "jsonl", "prompt_completion"] = "auto",
        text_field: str = "text",
        dataset_name: Optional[str] = None,
        dataset_config: Optional[str] = None,
        train_split: str = "train",
        val_split: Optional[str] = "validation",
        block_size: int = 512,
        batch_size: int = 8,
        shuffle: bool = True,
        seed: int = 42,
        num_workers: int = 0,
        length_bucketing: bool = True,
        cache_dir: Optional[str] = None,
        num_proc: Optional[int] = None,
        tokenizer_name_or_path: Optional[str] = None,
        test_files: Union[str, list[str], None] = None,
        predict_file: Optional[str] = None,
    ) -> None:
        """
        Args:
            train_files: Training files or globs. Plain text (a file is one document), JSONL with a `text`
                field, or prompt/completion JSONL (`prompt`, `completion` fields). Not needed by `validate`
                or `test` given `val_files`/`test_files`.
            val_files: Validation files or globs, same formats. When omitted, `val_fraction` is split off.
            val_fraction: Fraction of training blocks (or examples) held out for validation, with `seed`.
            format: "auto" detects from the extension and the first JSONL record's fields.
            text_field: Name of the text field in JSONL files and Hugging Face datasets.
            dataset_name: A Hugging Face dataset name or local path for `datasets.load_dataset`,
                used instead of train_files.
            dataset_config: The dataset's configuration name, if it has several.
            train_split: Split of `dataset_name` to train on.
            val_split: Split of `dataset_name` to validate on; if it has none, `val_fraction` applies.
            block_size: Tokens per packed block (and the longest prompt+completion kept).
            batch_size: Samples per batch on each device.
            shuffle: Reshuffle the training data every epoch (seeded, so resumable).
            seed: Seed of the data order and of the validation split.
            num_workers: DataLoader worker processes.
            length_bucketing: For prompt/completion data, batch examples of similar length together so
                padding stays small (still seeded and resumable).
            cache_dir: Where `datasets` keeps its Arrow cache (default: its own, ~/.cache/huggingface/datasets).
            num_proc: Processes for tokenization (default: all cores for corpora of several MB).
            tokenizer_name_or_path: Tokenizer to use; set from the model's options by the CLI.
            test_files: Files or globs `test` evaluates, same formats; default: the validation split.
            predict_file: Prompts `predict` completes: one per line (blank lines skipped), or JSONL with a
                `prompt` field. Training data is not needed for predict.
        """
        super().__init__()
        if block_size < 2:
            raise LitLoraError(f"data.block_size must be at least 2, got {block_size}")
        if batch_size < 1:
            raise LitLoraError(f"data.batch_size must be at least 1, got {batch_size}")
        if not 0.0 <= val_fraction < 1.0:
            raise LitLoraError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
        if not (train_files or dataset_name or predict_file or val_files or test_files):
            raise LitLoraError("no training data: give --data.train_files FILE (or a glob) or --data.dataset_name")
        # The tokenizer is the model's (a linked value); logging it twice would clash with the model's hparams.
        self.save_hyperparameters(ignore=["tokenizer_name_or_path"])
        self.train_files = [train_files] if isinstance(train_files, str) else list(train_files or [])
        self.val_files = [val_files] if isinstance(val_files, str) else list(val_files or [])
        self.format = format
        self.text_field = text_field
        self.dataset_name = dataset_name
        self.dataset_config = dataset_config
        self.train_split = train_split
        self.val_split = val_split
        self.val_fraction = val_fraction
        self.block_size = block_size
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.num_workers = num_workers
        self.length_bucketing = length_bucketing
        self.cache_dir = cache_dir
        self.num_proc = num_proc
        self.tokenizer_name_or_path = tokenizer_name_or_path
        self.tokenizer: Any = None
        self.train_ds: Any = None
        self.val_ds: Any = None
        self.truncated = 0
        self._resume: Optional[dict[str, int]] = None
        self._sampler: Optional[ResumableSampler] = None
        self._step_tokens: Optional[tuple[tuple[int, int], np.ndarray]] = None  # ((epoch, accumulate), totals)
        self._counts: Optional[np.ndarray] = None
        self.test_files = [test_files] if isinstance(test_files, str) else list(test_files or [])
        self.predict_file = predict_file
        self.test_ds: Any = None
        self.predict_prompts: Optional[list[str]] = None

    # -- building the splits ----------------------------------------------------------------------------

    def _load_tokenizer(self) -> Any:
        if self.tokenizer is None:
            if not self.tokenizer_name_or_path:
                raise LitLoraError("data.tokenizer_name_or_path is not set (the CLI sets it from --model.*)")
            from lit_lora.hf_loading import load_tokenizer

            self.tokenizer = load_tokenizer(self.tokenizer_name_or_path)
        return self.tokenizer

    def _build(self) -> tuple[Any, Any, str]:
        if not self.train_files and not self.dataset_name:  # allowed for predict only
            raise LitLoraError("no training data: give --data.train_files FILE (or a glob) or --data.dataset_name")
        tokenizer = self._load_tokenizer()
        if self.dataset_name:
            from datasets import load_dataset

            try:
                dsd = load_dataset(self.dataset_name, self.dataset_config, cache_dir=self.cache_dir)
            except (FileNotFoundError, ValueError, OSError) as err:
                raise LitLoraError(f"data.dataset_name {self.dataset_name!r} could not be loaded: {err}") from err
            if self.train_split not in dsd:
                raise LitLoraError(f"data.train_split {self.train_split!r} not in dataset splits {list(dsd)}")
            cols = dsd[self.train_split].column_names
            fmt = "prompt_completion" if {"prompt", "completion"} <= set(cols) else "jsonl"
            if fmt == "jsonl" and self.text_field not in cols:
                raise LitLoraError(f"dataset {self.dataset_name!r} has no field {self.text_field!r}; columns: {cols}")
            keep = ["prompt", "completion"] if fmt == "prompt_completion" else [self.text_field]
            train_rows = dsd[self.train_split].select_columns(keep)
            val_rows = dsd[self.val_split].select_columns(keep) if self.val_split in dsd else None
            kw = dict(fmt=fmt, tokenizer=tokenizer, block_size=self.block_size, cache_dir=self.cache_dir,
                      text_field=self.text_field, num_proc=self.num_proc)
            train = build_split([], hf_rows=train_rows, **kw)
            val = build_split([], hf_rows=val_rows, **kw) if val_rows is not None else None
        else:
            files = resolve_files(self.train_files, "data.train_files")
            fmt = detect_format(files) if self.format == "auto" else self.format
            kw = dict(tokenizer=tokenizer, block_size=self.block_size, cache_dir=self.cache_dir,
                      text_field=self.text_field, num_proc=self.num_proc)
            train = build_split(files, fmt, **kw)
            val = None
            if self.val_files:
                vfiles = resolve_files(self.val_files, "data.val_files")
                vfmt = detect_format(vfiles) if self.format == "auto" else self.format
                if vfmt != fmt:
                    raise LitLoraError(f"data.val_files are {vfmt} but data.train_files are {fmt}")
                val = build_split(vfiles, fmt, **kw)
        if len(train) == 0:
            raise LitLoraError(
                f"the training corpus is shorter than one block of data.block_size={self.block_size} tokens; "
                "add text or lower --data.block_size"
            )
        if val is None and self.val_fraction > 0:
            n_val = math.ceil(len(train) * self.val_fraction)
            if len(train) - n_val < 1:
                raise LitLoraError(
                    f"the corpus has {len(train)} block(s) of {self.block_size} tokens: too few to hold out "
                    f"data.val_fraction={self.val_fraction}; add text, lower --data.block_size or give --data.val_files"
                )
            split = train.train_test_split(test_size=n_val, seed=self.seed, shuffle=True)
            train, val = split["train"], split["test"]
        if val is not None and len(val) == 0:
            raise LitLoraError(
                f"the validation split is shorter than one block of data.block_size={self.block_size} tokens"
            )
        return train, val, fmt

    def prepare_data(self) -> None:
        # Runs on one process per node: fills the datasets cache so setup() on every rank only reads it.
        if self.trainer is not None and self.trainer.predicting:
            return  # predict reads only its prompts file
        only = self._eval_files_only()
        if only:
            self._build_eval(*only)
        else:
            self._build()

    def _eval_files_only(self) -> Optional[tuple[list[str], str]]:
        """(files, option name) when `validate`/`test` has files of its own: the training split is then
        neither needed nor built."""
        from lightning.pytorch.trainer.states import TrainerFn

        fn = self.trainer.state.fn if self.trainer is not None else None
        if fn == TrainerFn.VALIDATING and self.val_files and not self.dataset_name:
            return self.val_files, "data.val_files"
        if fn == TrainerFn.TESTING and self.test_files:
            return self.test_files, "data.test_files"
        return None

    def setup(self, stage: Optional[str] = None) -> None:
        if stage == "predict":
            self._setup_predict()
            return
        only = self._eval_files_only() if stage in ("validate", "test") else None
        if only:
            if stage == "test" and self.test_ds is None:
                self.test_ds = self._build_eval(*only)
            elif stage == "validate" and self.val_ds is None:
                self.val_ds = self._build_eval(*only)
            return
        if self.train_ds is not None:
            return
        train, val, self.data_format = self._build()
        if "truncated" in train.column_names:
            self.truncated = int(sum(train["truncated"]))
            if self.truncated:
                print(f"lit_lora: {self.truncated} training example(s) longer than block_size={self.block_size} "
                      "were truncated at the end of their completion")
            train = train.remove_columns("truncated")
            val = val.remove_columns("truncated") if val is not None else None
        self.train_ds, self.val_ds = train, val

    # -- loaders ------------------------------------------------------------------------------------------

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _loader(self, ds: Any, sampler: Any) -> DataLoader:
        tokenizer = self._load_tokenizer()
        return _PositionedLoader(
            _Rows(ds),
            batch_size=self.batch_size,
            sampler=sampler,
            collate_fn=Collator(tokenizer.pad_token_id),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            drop_last=False,
            # A private generator: creating a loader iterator must not draw from the global RNG, which
            # would shift dropout masks after a resume.
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        lengths = None
        if self.length_bucketing and "labels" in self.train_ds.column_names:
            lengths = [len(x) for x in self.train_ds["input_ids"]]
        sampler = ResumableSampler(
            len(self.train_ds), seed=self.seed, shuffle=self.shuffle, rank=rank, world_size=world,
            lengths=lengths, bucket_size=self.batch_size * world,
        )
        if self._resume is not None:
            state, self._resume = self._resume, None
            # A checkpoint taken after the epoch's last batch (end of epoch, or after its validation) resumes at
            # the next epoch's start, whose order does not depend on the number of processes or the batch size.
            saved_batches = math.ceil((len(self.train_ds) // state["world_size"]) / state["batch_size"])
            mid_epoch = 0 < state["batches_done"] < saved_batches
            if mid_epoch and state["world_size"] != world:
                raise LitLoraError(
                    f"the checkpoint was saved mid-epoch with {state['world_size']} process(es) and this run has "
                    f"{world}; the sample order would change. Resume with the same number of devices, or from "
                    "an end-of-epoch checkpoint"
                )
            if mid_epoch and state["batch_size"] != self.batch_size:
                raise LitLoraError(
                    f"the checkpoint was saved mid-epoch with data.batch_size={state['batch_size']}, "
                    f"this run has {self.batch_size}; resume with the same batch size"
                )
            sampler.resume_from(state["epoch"], state["batches_done"] * self.batch_size)
        self._sampler = sampler
        return self._loader(self.train_ds, sampler)

    def step_target_tokens(self, epoch: int, batch_idx: int, accumulate: int) -> Optional[int]:
        """Target tokens of the whole optimizer step that training batch `batch_idx` of `epoch` belongs to:
        its `accumulate` micro-batches on every process. None for packed text, whose micro-batches all
        hold the same number, so their means already weigh every token alike."""
        if self._sampler is None or "labels" not in self.train_ds.column_names:
            return None
        key = (epoch, accumulate)
        if self._step_tokens is None or self._step_tokens[0] != key:
            counts = self._target_counts()
            self._step_tokens = (key, self._sampler.step_totals(epoch, counts, self.batch_size, accumulate))
        return int(self._step_tokens[1][batch_idx // accumulate])

    def _target_counts(self) -> np.ndarray:
        """Predicted tokens per training example (labels after the shift that are not -100)."""
        if self._counts is None:
            labels = self.train_ds.with_format("numpy")["labels"]
            self._counts = np.fromiter(((row[1:] != IGNORE_INDEX).sum() for row in labels), dtype=np.int64,
                                       count=len(labels))
        return self._counts

    def val_dataloader(self) -> Any:
        if self.val_ds is None:
            return []
        rank, world = self._rank_world()
        return self._loader(self.val_ds, _Shard(len(self.val_ds), rank, world))

    def test_dataloader(self) -> Any:
        if self.test_ds is None:
            return self.val_dataloader()
        rank, world = self._rank_world()
        return self._loader(self.test_ds, _Shard(len(self.test_ds), rank, world))

    def predict_dataloader(self) -> DataLoader:
        from lit_lora.prediction import PromptCollator, PromptRows

        rank, world = self._rank_world()
        prompts = self.predict_prompts or []
        return DataLoader(PromptRows(prompts), batch_size=self.batch_size, sampler=_Shard(len(prompts), rank, world),
                          collate_fn=PromptCollator(self._load_tokenizer()), num_workers=self.num_workers)

    # -- test and predict inputs ------------------------------------------------------------------------

    def _build_eval(self, files: list[str], option: str) -> Any:
        """A validation or test split from its own files, without the training split."""
        files = resolve_files(files, option)
        fmt = detect_format(files) if self.format == "auto" else self.format
        split = build_split(files, fmt, tokenizer=self._load_tokenizer(), block_size=self.block_size,
                            cache_dir=self.cache_dir, text_field=self.text_field, num_proc=self.num_proc)
        if len(split) == 0:
            raise LitLoraError(f"{option} are shorter than one block of data.block_size={self.block_size} tokens")
        return split.remove_columns("truncated") if "truncated" in split.column_names else split

    def _setup_predict(self) -> None:
        if not self.predict_file:
            raise LitLoraError("predict needs prompts: give --data.predict_file FILE (one prompt per line, or JSONL)")
        from lit_lora.generation import read_prompts

        self.predict_prompts = read_prompts(self.predict_file)

    # -- resume state: seed + epoch + position, never a permutation ---------------------------------------

    def state_dict(self) -> dict[str, int]:
        trainer = self.trainer
        if trainer is None or self._sampler is None:
            return {}
        epoch_loop = trainer.fit_loop.epoch_loop
        return {
            "seed": self.seed,
            "epoch": trainer.current_epoch,
            # Batches consumed by training steps this epoch; the loader's own count would include the
            # batch Lightning prefetches.
            "batches_done": epoch_loop.batch_progress.current.ready,
            "batch_size": self.batch_size,
            "world_size": trainer.world_size,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        if not state:
            return
        if state.get("seed") != self.seed:
            print(f"lit_lora: data.seed changed from {state.get('seed')} to {self.seed}; the data order differs "
                  "from the checkpointed run")
        self._resume = dict(state)


class _PositionedLoader(DataLoader):
    """A DataLoader that tells Lightning it is resumable. The position itself is kept by
    LitLoraData.state_dict (counted in consumed batches: the loader's own count would include the batch
    Lightning prefetches), so there is nothing to store here."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class _Shard(torch.utils.data.Sampler[int]):
    """Sequential, every world_size-th index: evaluation data split across ranks without padding."""

    def __init__(self, n: int, rank: int, world: int) -> None:
        self.n, self.rank, self.world = n, rank, world

    def __iter__(self):
        return iter(range(self.rank, self.n, self.world))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))
