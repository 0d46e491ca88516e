"""Turning files (read by `files.py`) or a Hugging Face dataset into tokenized, packed `datasets` rows, with
an on-disk cache.

Three stages, each cached by `datasets` under a fingerprint of its inputs, so a second run on the same
files and tokenizer reads Arrow files and never calls the tokenizer:

1. rows: text files are read in ~256 KB chunks cut at line starts (a file is one document; the last
   chunk of a file carries `doc_end`); JSONL lines become one row each.
2. tokens: `Dataset.map(batched=True, num_proc=...)`; EOS is appended at every document end.
   Conversations are rendered with the chat template and get labels on their trained turns
   (`conversations.py`); prompt/completion pairs on their completion.
3. blocks (`packing.py`): the token stream is packed into `block_size` blocks, carrying the remainder from
   row to row (only the corpus's final partial block is dropped), with positions restarting at each
   document. Examples with labels are packed whole when `packing` is on, else each is one padded row.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional

from lit_lora.constants import IGNORE_INDEX
from lit_lora.data.conversations import TOOL_FIELDS, tokenize_conversations
from lit_lora.data.files import (MAX_ROW_BYTES, conversational_files, file_fingerprint, read_chat_rows,
                                 read_jsonl_rows, read_text_rows)
from lit_lora.data.packing import pack_examples, pack_text
from lit_lora.data.workers import die_with_parent, worker_count
from lit_lora.errors import LitLoraError
from lit_lora.generation.chat import resolve_template
from lit_lora.notes import print_note
from lit_lora.outputs import ensure_writable
from lit_lora.pretrained.hub import bos_prefix

# Rows of text (and of their tokens) held in memory at once: ~16 x 256 KB. `datasets` defaults to 1,000 rows,
# which on a corpus of a few hundred MB is all of it, so peak memory grew with the corpus.
ROWS_PER_BATCH = 16
# Bumped when the rules for cutting text into rows, or their columns, change: cached rows of the old rules
# are not reused.
CUTS_VERSION = 3
# Bumped when tokenized rows or packed blocks change their columns or rules: old caches are not reused.
TOKENS_VERSION = 2
# Bumped when the rules for rendering and checking conversations change: their cached tokens are not reused.
CONVERSATIONS_VERSION = 2
# A conversation's columns: its messages (with the tool fields a template may read) and its tools.
MESSAGES = [{"role": "string", "content": "string", **{k: "string" for k in TOOL_FIELDS}}]
CONVERSATION_COLUMNS = {"messages": MESSAGES, "prompt_turns": "int32", "where": "string", "tools": "string"}


def tokenizer_fingerprint(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(f"{text}|{tokenizer.eos_token_id}|{bos_prefix(tokenizer)}".encode()).hexdigest()[:16]


def _hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_cache_dir(cache_dir: Optional[str]) -> None:
    """`datasets` writes lock files into its cache folder even to read a complete cache: a read-only folder
    is one line here instead of a PermissionError from inside it."""
    if cache_dir is None:
        return
    try:
        ensure_writable(cache_dir)
    except OSError as err:
        raise LitLoraError(
            f"data.cache_dir {cache_dir!r} is not writable ({err.strerror or err}): datasets writes lock files "
            "there even to read a cache; give a writable folder (a copy of this one keeps its cache)"
        ) from err


# verbose=False: the tokenizer warns about sequences longer than the model's context, but these are chunks
# of a corpus that packing cuts into blocks afterwards.
def _tokenize_text(batch: dict[str, list], tokenizer: Any) -> dict[str, list]:
    die_with_parent()
    ids = tokenizer(batch["text"], add_special_tokens=False, verbose=False)["input_ids"]
    # A document gets the family's BOS (if its tokenizer adds one) at its start only, never at the start
    # of every chunk, and one EOS at its end.
    bos, eos = bos_prefix(tokenizer), [tokenizer.eos_token_id]
    starts, ends = batch["doc_start"], batch["doc_end"]
    return {"ids": [bos * start + i + eos * end for i, start, end in zip(ids, starts, ends)],
            "doc_start": starts, "doc_end": ends}


def _tokenize_pairs(batch: dict[str, list], tokenizer: Any, block_size: int) -> dict[str, list]:
    die_with_parent()
    eos, bos = tokenizer.eos_token_id, bos_prefix(tokenizer)
    prompts = tokenizer(batch["prompt"], add_special_tokens=False, verbose=False)["input_ids"]
    completions = tokenizer(batch["completion"], add_special_tokens=False, verbose=False)["input_ids"]
    out: dict[str, list] = {"input_ids": [], "labels": [], "truncated": []}
    for p, c in zip(prompts, completions):
        c = c + [eos]  # so the model learns to stop
        truncated = len(bos) + len(p) + len(c) > block_size
        if truncated:
            # Policy: keep the prompt (its last block_size - 1 tokens at most, BOS included) and cut the
            # completion's end; at least one completion token stays.
            keep = max(0, block_size - 1 - len(bos))
            p = p[len(p) - keep :] if keep else []
            c = c[: max(1, block_size - len(bos) - len(p))]
        p = bos + p  # BOS before the prompt, never between prompt and completion
        out["input_ids"].append(p + c)
        out["labels"].append([IGNORE_INDEX] * len(p) + c)
        out["truncated"].append(truncated)
    return out


def build_split(
    files: list[str],
    fmt: str,
    tokenizer: Any,
    block_size: int,
    cache_dir: Optional[str],
    text_field: str = "text",
    num_proc: Optional[int] = None,
    hf_rows: Any = None,
    chat_template: Optional[str] = None,
    train_on: str = "assistant",
    packing: Optional[bool] = None,
    report: Optional[dict[str, int]] = None,
) -> Any:
    """Tokenized dataset for one split: packed blocks (`input_ids`, `position_ids`, and `labels` for examples),
    or one padded example per row (`input_ids`, `labels`) when examples are not packed.

    `hf_rows` is an already loaded `datasets.Dataset` (a hub or local HF dataset) used instead of files;
    conversations come as rows of `messages`, `prompt_turns` and `where` (`files.read_chat_rows`).
    `packing` None: on for text, off for examples. `report` receives the counts of examples, truncated
    ones and dropped ones (cut to nothing that trains).
    """
    from datasets import disable_progress_bars

    disable_progress_bars()
    check_cache_dir(cache_dir)
    tok_fp = tokenizer_fingerprint(tokenizer)
    rows, source_fp = (hf_rows, hf_rows._fingerprint) if hf_rows is not None else _read_rows(
        files, fmt, cache_dir, text_field, tokenizer, tok_fp
    )
    if len(rows) == 0:
        raise LitLoraError(f"the corpus {files or 'dataset'} is empty")
    proc = worker_count(len(rows), num_proc)
    report = {} if report is None else report
    if "messages" in rows.column_names or fmt == "prompt_completion":
        proc = worker_count(len(rows), num_proc, row_kb=1)  # an example is a line of JSON, not 256 KB of text
        return _build_examples(rows, files, tokenizer, block_size, cache_dir, proc, (source_fp, tok_fp),
                               chat_template, train_on, packing, report)
    if text_field != "text" and text_field in rows.column_names:
        rows = rows.rename_column(text_field, "text")
    for column in ("doc_start", "doc_end"):  # rows of a dataset are whole documents
        if column not in rows.column_names:
            rows = rows.add_column(column, [True] * len(rows))
    tokens = rows.map(
        _tokenize_text,
        batched=True,
        batch_size=ROWS_PER_BATCH if fmt == "text" else 1000,  # text rows are ~256 KB; JSONL rows one document
        fn_kwargs={"tokenizer": tokenizer},
        remove_columns=rows.column_names,
        num_proc=proc,
        new_fingerprint=_hash("tokens", TOKENS_VERSION, source_fp, tok_fp),
        desc="tokenizing",
    )
    short = (
        f"the corpus {files or 'dataset'} is shorter than one block of data.block_size={block_size} tokens; "
        "add text or lower --data.block_size"
    )
    report.update(documents=int(sum(rows["doc_start"])))
    return _from_generator(
        pack_text, {"arrow_files": _arrow_files(tokens, cache_dir, tok_fp), "block_size": block_size,
                    "packing": packing is not False},
        cache_dir, {"input_ids": ["int32"], "position_ids": ["int32"]}, short,
    )


def _build_examples(rows: Any, files: list[str], tokenizer: Any, block_size: int, cache_dir: Optional[str],
                    proc: Optional[int], fingerprints: tuple[str, str], chat_template: Optional[str], train_on: str,
                    packing: Optional[bool], report: dict[str, int]) -> Any:
    """Conversations or prompt/completion pairs as examples with labels, packed when `packing` is on."""
    source_fp, tok_fp = fingerprints
    if "messages" in rows.column_names:
        if not getattr(tokenizer, "is_fast", False):
            raise LitLoraError("conversations need a fast tokenizer (its offset mapping says which characters "
                               "each token holds); this one is a slow, Python tokenizer")
        template = resolve_template(tokenizer, chat_template or "auto")[1]
        kind, fn, kwargs = "conversations", tokenize_conversations, {"template": template, "train_on": train_on}
        fingerprints = (source_fp, f"{tok_fp}-{CONVERSATIONS_VERSION}")
    else:
        kind, fn, kwargs = "pairs", _tokenize_pairs, {}
    examples = rows.map(
        fn, batched=True, fn_kwargs={"tokenizer": tokenizer, "block_size": block_size, **kwargs},
        remove_columns=rows.column_names, num_proc=proc, desc="tokenizing",
        new_fingerprint=_hash(kind, TOKENS_VERSION, *fingerprints, block_size, kwargs),
    )
    if "messages" in rows.column_names:
        report.update(conversations=len(rows))
    if len(examples) == 0:
        raise LitLoraError(f"no example of {files or 'the dataset'} has a token to train within "
                           f"data.block_size={block_size}")
    report.update(examples=len(rows), dropped=len(rows) - len(examples), truncated=int(sum(examples["truncated"])))
    examples = examples.remove_columns("truncated")
    if not packing:
        return examples
    return _from_generator(pack_examples, {"arrow_files": _arrow_files(examples, cache_dir, tok_fp),
                                           "block_size": block_size}, cache_dir,
                           {"input_ids": ["int32"], "labels": ["int32"], "position_ids": ["int32"]},
                           f"no example of {files or 'the dataset'} trains anything")


def _arrow_files(ds: Any, cache_dir: Optional[str], tok_fp: str) -> list[str]:
    """The Arrow files holding `ds`, for a packer to stream; an in-memory dataset (a tiny HF one) is written
    to one first."""
    arrow_files = [f["filename"] for f in ds.cache_files]
    if not arrow_files:
        path = Path(cache_dir or Path.home() / ".cache" / "lit_lora") / f"tokens-{_hash(ds._fingerprint, tok_fp)}.arrow"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds = ds.flatten_indices(cache_file_name=str(path))
        arrow_files = [f["filename"] for f in ds.cache_files]
    return arrow_files


def _read_rows(
    files: list[str], fmt: str, cache_dir: Optional[str], text_field: str, tokenizer: Any, tok_fp: str
) -> tuple[Any, str]:
    """Stage 1, cached: the files' rows, and a fingerprint of what they were read from."""
    fingerprint = file_fingerprint(files)
    empty = f"the corpus {files} is empty"
    if fmt == "text":
        # Text rows are cut where this tokenizer agrees (data/cuts.py), so they depend on it: the cache key
        # names it (the tokenizer object itself is not hashed).
        rows = _from_generator(
            read_text_rows, {"files": fingerprint, "tokenizer": tokenizer}, cache_dir,
            {"text": "string", "doc_start": "bool", "doc_end": "bool", "cut_checked": "bool"}, empty,
            writer_batch_size=ROWS_PER_BATCH,
            fingerprint=_hash("text-rows", CUTS_VERSION, fingerprint, tok_fp),
        )
        _report_unchecked_cuts(rows, files)
    elif conversational_files(files, fmt):
        rows = _from_generator(read_chat_rows, {"files": fingerprint, "fmt": fmt}, cache_dir, CONVERSATION_COLUMNS,
                               empty)
    else:
        fields = ("prompt", "completion") if fmt == "prompt_completion" else (text_field,)
        documents = {} if fmt == "prompt_completion" else {"doc_start": "bool", "doc_end": "bool"}
        columns = {f: "string" for f in fields} | documents
        rows = _from_generator(read_jsonl_rows, {"files": fingerprint, "fields": fields}, cache_dir, columns, empty)
    return rows, _hash(fingerprint, fmt, text_field)


def _report_unchecked_cuts(rows: Any, files: list[str]) -> None:
    unchecked = len(rows) - sum(rows["cut_checked"])
    if unchecked:
        print_note(f"{unchecked} chunk boundar{'y' if unchecked == 1 else 'ies'} in {files} could not be "
                   "placed where tokenizing in chunks equals tokenizing the whole text (no safe cut within "
                   f"{MAX_ROW_BYTES // 2**20} MB); a token or two may differ there")


def features_of(columns: dict[str, Any]) -> Any:
    """`datasets.Features` of columns written as {name: "type"}, a list of one type, or of one struct."""
    from datasets import Features, List, Value

    def feature(v: Any) -> Any:
        if isinstance(v, list):
            return List({k: Value(t) for k, t in v[0].items()} if isinstance(v[0], dict) else Value(v[0]))
        return Value(v)

    return Features({k: feature(v) for k, v in columns.items()})


def _from_generator(
    fn: Any, gen_kwargs: dict[str, Any], cache_dir: Optional[str], columns: dict[str, Any], empty_message: str,
    writer_batch_size: Optional[int] = None, fingerprint: Optional[str] = None,
) -> Any:
    """`Dataset.from_generator`, cached by the generator and its arguments; our own errors raised inside
    the generator come out as themselves, not wrapped in DatasetGenerationError."""
    from datasets import Dataset
    from datasets.exceptions import DatasetGenerationError

    features = features_of(columns)
    # `datasets` splits list arguments into shards and runs the generator once per shard: the packer would
    # then drop each file's last partial block (tokens lost at every shard boundary). Tuples are not split.
    gen_kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in gen_kwargs.items()}
    try:
        return Dataset.from_generator(
            fn, gen_kwargs=gen_kwargs, cache_dir=cache_dir, features=features, writer_batch_size=writer_batch_size,
            fingerprint=fingerprint,
        )
    except DatasetGenerationError as err:
        cause = err.__cause__
        if isinstance(cause, LitLoraError):
            raise cause from None
        raise
    except ValueError as err:
        if "corresponds to no data" in str(err):  # the generator yielded nothing
            raise LitLoraError(empty_message) from None
        raise
