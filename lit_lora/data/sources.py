"""Choosing and building the splits: files and globs (text or JSONL, format detected once per split) or a
Hugging Face dataset, tokenized and packed by `corpus.build_split`, or, for the preference forms, tokenized
into prompt and completions by `preference.build_preference_split`. `LitLoraData` calls these with its
hyperparameters; nothing here keeps state."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from lightning.pytorch.trainer.states import TrainerFn

from lit_lora.data.conversations import is_conversational, record_format, record_tools, to_messages
from lit_lora.data.corpus import CONVERSATION_COLUMNS, build_split, features_of
from lit_lora.data.files import detect_format, first_record, resolve_files
from lit_lora.data.preference import build_preference_split
from lit_lora.data.preference_records import FORMATS as PREFERENCE_FORMATS
from lit_lora.data.preference_records import preference_format
from lit_lora.errors import LitLoraError
from lit_lora.settings import check_number

NO_TRAINING_DATA = "no training data: give --data.train_files FILE (or a glob) or --data.dataset_name"


def check_options(options: Mapping[str, Any]) -> None:
    """The data module's numeric options, and that some data is named."""
    check_number("data.block_size", options["block_size"], at_least=2, integer=True)
    if options["batch_size"] != "auto":
        check_number("data.batch_size", options["batch_size"], at_least=1, integer=True)
    check_number("data.val_fraction", options["val_fraction"], at_least=0, below=1)
    check_number("data.num_workers", options["num_workers"], at_least=0, integer=True)
    if options["num_proc"] is not None:
        check_number("data.num_proc", options["num_proc"], at_least=1, integer=True)
    if not any(options[k] for k in ("train_files", "dataset_name", "predict_file", "val_files", "test_files")):
        raise LitLoraError(NO_TRAINING_DATA)


def file_list(value: Union[str, list[str], None]) -> list[str]:
    """A files option as a list: one pattern, several, or none."""
    return [value] if isinstance(value, str) else list(value or [])


def _files_and_format(patterns: list[str], option: str, hp: Mapping[str, Any]) -> tuple[list[str], str]:
    files = resolve_files(patterns, option)
    return files, detect_format(files, hp["text_field"]) if hp["format"] == "auto" else hp["format"]


def _check_preference_form(record: Any, fmt: str, where: str) -> None:
    """One line when `--data.format` names a preference form the data is not in (before anything is read)."""
    found = preference_format(record)
    if found != fmt:
        fields = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise LitLoraError(f"{where}: data.format is {fmt} but the first record has fields {fields} "
                           f"({found or 'no preference form'})")


def _build(files: list[str], fmt: str, hp: Mapping[str, Any], tokenizer: Any, report: Optional[dict[str, Any]] = None,
           split: Any = None) -> Any:
    """One split of files, or of a loaded Hugging Face `split`, in format `fmt`."""
    if fmt not in PREFERENCE_FORMATS:
        if split is not None:
            return build_split([], hf_rows=_dataset_rows(split, fmt, hp), fmt=fmt,
                               **_split_kwargs(hp, tokenizer, report))
        return build_split(files, fmt, **_split_kwargs(hp, tokenizer, report))
    if split is not None:
        name = hp["dataset_name"]
        _check_preference_form(split[0] if len(split) else {}, fmt, f"record 0 of dataset {name!r}")
    else:
        _check_preference_form(first_record(files), fmt, files[0])
        name = ""
    return build_preference_split(tokenizer, hp["block_size"], hp["cache_dir"], files=files or None, dataset=split,
                                  name=name, chat_template=hp["chat_template"], num_proc=hp["num_proc"],
                                  report=report)


def _split_kwargs(hp: Mapping[str, Any], tokenizer: Any, report: Optional[dict[str, int]] = None) -> dict[str, Any]:
    return dict(tokenizer=tokenizer, block_size=hp["block_size"], cache_dir=hp["cache_dir"],
                text_field=hp["text_field"], num_proc=hp["num_proc"], chat_template=hp["chat_template"],
                train_on=hp["train_on"], packing=hp["packing"], report=report)


def _conversation_row(record: dict[str, Any], index: int, fmt: str, name: str) -> dict[str, Any]:
    # `datasets` hands map functions a lazy row; our checks read a dict.
    where = f"record {index} of dataset {name!r}"
    record = dict(record)
    messages, prompt_turns = to_messages(record, fmt, where)
    return {"messages": messages, "prompt_turns": prompt_turns, "where": where, "tools": record_tools(record, where)}


def _dataset_rows(split: Any, fmt: str, hp: Mapping[str, Any]) -> Any:
    """The columns `build_split` reads, from one split of a Hugging Face dataset in format `fmt`."""
    if fmt in ("messages", "sharegpt", "alpaca") or (fmt == "prompt_completion" and len(split)
                                                      and is_conversational(split[0])):
        from datasets import disable_progress_bars

        disable_progress_bars()
        # Stated columns: records with and without tool fields make one table.
        return split.map(_conversation_row, with_indices=True, fn_kwargs={"fmt": fmt, "name": hp["dataset_name"]},
                         remove_columns=split.column_names, features=features_of(CONVERSATION_COLUMNS),
                         desc="reading conversations")
    keep = ["prompt", "completion"] if fmt == "prompt_completion" else [hp["text_field"]]
    missing = [c for c in keep if c not in split.column_names]
    if missing:
        raise LitLoraError(f"dataset {hp['dataset_name']!r} has no field {missing[0]!r}; columns: {split.column_names}")
    return split.select_columns(keep)


DATA_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def _load_splits(name: str, config: Optional[str], cache_dir: Optional[str]) -> Any:
    """A DatasetDict from a hub id, a folder of data files, a `save_to_disk` folder or one data file."""
    from datasets import DatasetDict, load_dataset, load_from_disk

    path = Path(name).expanduser()
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        loaded = load_from_disk(str(path))  # load_dataset cannot read save_to_disk's layout
        return loaded if isinstance(loaded, DatasetDict) else DatasetDict({"train": loaded})
    if path.is_file():
        if path.suffix not in DATA_FILE_BUILDERS:
            raise LitLoraError(f"data.dataset_name {name!r}: a file must be one of {', '.join(DATA_FILE_BUILDERS)}")
        return load_dataset(DATA_FILE_BUILDERS[path.suffix], data_files=str(path), cache_dir=cache_dir)
    return load_dataset(name, config, cache_dir=cache_dir)


def _from_dataset(hp: Mapping[str, Any], tokenizer: Any, report: dict[str, int]) -> tuple[Any, Any, str]:
    name = hp["dataset_name"]
    try:
        splits = _load_splits(name, hp["dataset_config"], hp["cache_dir"])
    except (FileNotFoundError, ValueError, OSError) as err:
        raise LitLoraError(f"data.dataset_name {name!r} could not be loaded: {err}") from err
    if hp["train_split"] not in splits:
        raise LitLoraError(f"data.train_split {hp['train_split']!r} not in dataset splits {list(splits)}")
    train_split = splits[hp["train_split"]]
    fmt = hp["format"]
    if fmt == "auto":
        first = train_split[0] if len(train_split) else {}
        # A preference form first: a KTO record also has `prompt` and `completion`.
        fmt = preference_format(first) or record_format(first, hp["text_field"]) or "jsonl_text"
    train = _build([], fmt, hp, tokenizer, report, split=train_split)
    val = None
    if hp["val_split"] in splits:
        val = _build([], fmt, hp, tokenizer, split=splits[hp["val_split"]])
    return train, val, fmt


def _from_files(hp: Mapping[str, Any], tokenizer: Any, report: dict[str, int]) -> tuple[Any, Any, str]:
    files, fmt = _files_and_format(file_list(hp["train_files"]), "data.train_files", hp)
    train, val = _build(files, fmt, hp, tokenizer, report), None
    if hp["val_files"]:
        val_files, val_fmt = _files_and_format(file_list(hp["val_files"]), "data.val_files", hp)
        if val_fmt != fmt:
            raise LitLoraError(f"data.val_files are {val_fmt} but data.train_files are {fmt}")
        val = _build(val_files, fmt, hp, tokenizer)
    return train, val, fmt


def build_training_splits(hp: Mapping[str, Any], tokenizer: Any, report: Optional[dict[str, int]] = None
                          ) -> tuple[Any, Any, str]:
    """(train, val or None, format) from the data options; the validation split is held out of the training
    data (`val_fraction`, seeded) when no validation files or split are given. `report` receives the
    training data's counts (`corpus.build_split`)."""
    if not hp["train_files"] and not hp["dataset_name"]:  # allowed for predict only
        raise LitLoraError(NO_TRAINING_DATA)
    report = {} if report is None else report
    train, val, fmt = (_from_dataset if hp["dataset_name"] else _from_files)(hp, tokenizer, report)
    block = hp["block_size"]
    if len(train) == 0:
        raise LitLoraError(
            f"the training corpus is shorter than one block of data.block_size={block} tokens; "
            "add text or lower --data.block_size"
        )
    fraction = hp["val_fraction"]
    if val is None and fraction > 0:
        n_val = math.ceil(len(train) * fraction)
        if len(train) - n_val < 1:
            raise LitLoraError(
                f"the corpus has {len(train)} block(s) of {block} tokens: too few to hold out "
                f"data.val_fraction={fraction}; add text, lower --data.block_size or give --data.val_files"
            )
        split = train.train_test_split(test_size=n_val, seed=hp["seed"], shuffle=True)
        train, val = split["train"], split["test"]
    if val is not None and len(val) == 0:
        raise LitLoraError(f"the validation split is shorter than one block of data.block_size={block} tokens")
    return train, val, fmt


def eval_files_only(hp: Mapping[str, Any], fn: Any) -> Optional[tuple[list[str], str]]:
    """(files, option name) when `validate`/`test` has files of its own: the training split is then neither
    needed nor built. `fn` is the trainer's current function (`trainer.state.fn`)."""
    if fn == TrainerFn.VALIDATING and hp["val_files"] and not hp["dataset_name"]:
        return file_list(hp["val_files"]), "data.val_files"
    if fn == TrainerFn.TESTING and hp["test_files"]:
        return file_list(hp["test_files"]), "data.test_files"
    return None


def build_eval_split(files: list[str], option: str, hp: Mapping[str, Any], tokenizer: Any) -> Any:
    """A validation or test split from its own files, without the training split."""
    files, fmt = _files_and_format(files, option, hp)
    split = _build(files, fmt, hp, tokenizer)
    if len(split) == 0:
        raise LitLoraError(f"{option} are shorter than one block of data.block_size={hp['block_size']} tokens")
    return split
