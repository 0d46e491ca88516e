"""Preference data: records of TRL's preference forms (`preference_records`) tokenized into a prompt and its
completions, cut to `block_size` by a stated policy, and cached like SFT's examples.

How it plugs in. `--data.format` names three forms, `preference` (`prompt`, `chosen`, `rejected`),
`implicit_preference` (`chosen`, `rejected` sharing their start) and `unpaired_preference` (KTO's `prompt`,
`completion`, `label`); each holds strings (standard) or message lists (conversational), decided by the first
record as for prompt/completion. `auto` asks `preference_records.preference_format` before
`conversations.record_format` (which reads a KTO record as prompt/completion; `files.detect_format`).
`sources._build` sends files or a Hugging Face split here; `report` receives the counts and `truncation_line`
the line `fit` prints once (`report.preference_lines`). `LitLoraData.collator` pads the rows with
`preference_batches.PreferenceCollator`, and `TrainOrder` counts pairs (rows for KTO) in `step_target_tokens`
and buckets by length with `preference_batches.row_stats`.

What a row holds: `prompt_ids` (BOS first when the tokenizer starts texts with one), then per completion its
ids and labels (`chosen_ids`/`chosen_labels`, `rejected_ids`/`rejected_labels`, or `completion_ids`/
`completion_labels` with `label`). A label is the id where the log-probability counts, else -100.
- Standard: the prompt and each completion are tokenized apart, so chosen and rejected share the prompt's
  ids exactly; EOS ends each completion (as SFT ends a reply) and every completion token counts.
- Conversational: `prompt + chosen` (and `prompt + rejected`) is rendered and masked exactly as SFT renders
  a conversational prompt/completion record (`conversations.trained_spans`, `train_on` assistant): the
  prompt is the template's text up to its generation prompt, the completion what follows; the template's
  end-of-turn token counts, text after it (a newline) is in the ids with label -100. The prompt ids are the
  tokens both renderings share before the first counted one.
Too long (prompt plus the longer completion over `block_size`): the prompt is cut from the left first (its
end stays, and a leading BOS), down to one token, then the completions from the right. A pair left with no
counted token is dropped (counted too).
"""

from __future__ import annotations

import json
from typing import Any, Optional

from lit_lora.constants import IGNORE_INDEX
from lit_lora.data.conversations import span_labels, template_messages, trained_spans
from lit_lora.data.corpus import MESSAGES, _from_generator, _hash, check_cache_dir, features_of, tokenizer_fingerprint
from lit_lora.data.files import file_fingerprint
from lit_lora.data.preference_records import UNPAIRED, detect, kind_name, normalize, read_preference_rows
from lit_lora.data.workers import die_with_parent, worker_count
from lit_lora.errors import LitLoraError
from lit_lora.generation.chat import resolve_template
from lit_lora.jsonl import read_jsonl
from lit_lora.pretrained.hub import bos_prefix

# Bumped when the rules for tokenizing or cutting preference rows change: their cached tokens are not reused.
PREFERENCE_VERSION = 1


def row_columns(unpaired: bool, conversational: bool) -> dict[str, Any]:
    """The columns of read rows (before tokenizing), for `corpus.features_of`."""
    value = MESSAGES if conversational else "string"
    names = ("completion",) if unpaired else ("chosen", "rejected")
    extra = {"tools": "string"} if conversational else {}
    return {"prompt": value, **{n: value for n in names}, **({"label": "bool"} if unpaired else {}),
            "where": "string", **extra}


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def _first_counted(labels: list[int]) -> int:
    return next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))


def cut_to_block(prompt: list[int], completions: list[tuple[list[int], list[int]]], block_size: int,
                 keep_first: int = 0) -> tuple[list[int], list[tuple[list[int], list[int]]], bool]:
    """(prompt, completions as (ids, labels), whether anything was cut) so that the prompt plus each
    completion fits `block_size`: the prompt loses tokens from its left first (its first `keep_first`, a BOS,
    stay), keeping at least one token, then each completion loses its end."""
    longest = max(len(ids) for ids, _ in completions)
    if len(prompt) + longest <= block_size:
        return prompt, completions, False
    head, body = prompt[:keep_first], prompt[keep_first:]
    # At least one prompt token stays in front of a completion: it is what predicts the completion's first.
    least = min(len(body), 0 if head else 1)
    keep = min(len(body), max(least, block_size - len(head) - longest))
    prompt = head + body[len(body) - keep:]
    room = block_size - len(prompt)
    return prompt, [(ids[:room], labels[:room]) for ids, labels in completions], True


def _tokenize_texts(batch: dict[str, list], tokenizer: Any, names: tuple[str, ...]
                    ) -> list[tuple[list[int], list[tuple[list[int], list[int]]], int]]:
    """(prompt ids, completions as (ids, labels), BOS tokens kept in front) per row of strings."""
    bos, eos = bos_prefix(tokenizer), tokenizer.eos_token_id
    prompts = tokenizer(batch["prompt"], add_special_tokens=False, verbose=False)["input_ids"]
    columns = [tokenizer(batch[n], add_special_tokens=False, verbose=False)["input_ids"] for n in names]
    out = []
    for j, p in enumerate(prompts):
        completions = [c[j] + [eos] for c in columns]  # EOS ends a completion, so the model learns to stop
        out.append((bos + p, [(c, list(c)) for c in completions], len(bos)))
    return out


def _tokenize_conversations(batch: dict[str, list], tokenizer: Any, template: str, names: tuple[str, ...]
                            ) -> list[tuple[list[int], list[tuple[list[int], list[int]]], int]]:
    """(prompt ids, completions as (ids, labels), BOS tokens kept in front) per row of message lists: each
    completion rendered after the prompt and masked as SFT masks it."""
    out = []
    for j, where in enumerate(batch["where"]):
        prompt = template_messages(batch["prompt"][j])
        tools = json.loads(batch["tools"][j]) if batch["tools"][j] else None
        encoded = []
        for n in names:
            messages = prompt + template_messages(batch[n][j])
            text, spans = trained_spans(tokenizer, template, messages, len(prompt), "assistant", where, tools)
            enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
            encoded.append((enc["input_ids"], span_labels(enc["input_ids"], enc["offset_mapping"], spans)))
        # The prompt: what every rendering shares before its first counted token (a template that writes the
        # prompt otherwise when a reply follows, or a token joining prompt and reply, leaves the rest to the
        # completions, uncounted).
        cut = min(_first_counted(labels) for _, labels in encoded)
        for ids, _ in encoded[1:]:
            cut = min(cut, _common_prefix(encoded[0][0], ids))
        first = encoded[0][0]
        keep_first = 1 if first[:1] == [tokenizer.bos_token_id] and cut > 0 else 0
        out.append((first[:cut], [(ids[cut:], labels[cut:]) for ids, labels in encoded], keep_first))
    return out


def tokenize_preferences(batch: dict[str, list], tokenizer: Any, block_size: int, template: Optional[str]
                         ) -> dict[str, list]:
    """`datasets.map` function (batched): `prompt_ids`, each completion's ids and labels (and `label` for
    unpaired rows), and `truncated`; rows left with no counted token are dropped (the caller counts them)."""
    die_with_parent()
    names = ("completion",) if "completion" in batch else ("chosen", "rejected")
    rows = (_tokenize_conversations(batch, tokenizer, template, names) if template is not None
            else _tokenize_texts(batch, tokenizer, names))
    out: dict[str, list] = {"prompt_ids": [], **{f"{n}_{k}": [] for n in names for k in ("ids", "labels")},
                            **({"label": []} if "label" in batch else {}), "truncated": []}
    for j, (prompt, completions, keep_first) in enumerate(rows):
        prompt, completions, truncated = cut_to_block(prompt, completions, block_size, keep_first)
        if any(all(label == IGNORE_INDEX for label in labels) for _, labels in completions):
            continue
        out["prompt_ids"].append(prompt)
        for n, (ids, labels) in zip(names, completions):
            out[f"{n}_ids"].append(ids)
            out[f"{n}_labels"].append(labels)
        if "label" in batch:
            out["label"].append(batch["label"][j])
        out["truncated"].append(truncated)
    return out


def _dataset_record(record: Any, index: int, fmt: str, conversational: bool, name: str) -> dict[str, Any]:
    row = normalize(dict(record), fmt, conversational, f"record {index} of dataset {name!r}")
    if conversational:  # stated columns: messages with and without tool fields make one table
        for field in ("prompt", "chosen", "rejected", "completion"):
            if field in row:
                row[field] = [{k: m.get(k) for k in MESSAGES[0]} for m in row[field]]
    return row


def _first_record(files: list[str]) -> tuple[Any, str]:
    for lineno, record in read_jsonl(files[0]):
        return record, f"{files[0]}:{lineno}"
    raise LitLoraError(f"{files[0]} is empty")


def read_rows(files: Optional[list[str]] = None, dataset: Any = None, name: str = "",
              cache_dir: Optional[str] = None) -> tuple[Any, str, bool, str]:
    """(rows, form, conversational, fingerprint of the source) from JSONL files or a loaded `datasets` split
    (named `name` in errors); every record is checked (`preference_records.normalize`)."""
    from datasets import disable_progress_bars

    disable_progress_bars()
    if dataset is not None:
        if len(dataset) == 0:
            raise LitLoraError(f"dataset {name!r} is empty")
        fmt, conversational = detect(dataset[0], f"record 0 of dataset {name!r}")
        rows = dataset.map(_dataset_record, with_indices=True, remove_columns=dataset.column_names,
                           fn_kwargs={"fmt": fmt, "conversational": conversational, "name": name},
                           features=features_of(row_columns(fmt == UNPAIRED, conversational)),
                           desc="reading preference records")
        return rows, fmt, conversational, _hash(dataset._fingerprint, fmt, conversational)
    if not files:
        raise LitLoraError("no preference data: give files or a dataset")
    if not all(f.endswith((".jsonl", ".json")) for f in files):
        raise LitLoraError(f"preference data files must be JSON Lines (.jsonl or .json): {files}")
    fmt, conversational = detect(*_first_record(files))
    fingerprint = file_fingerprint(files)
    rows = _from_generator(read_preference_rows, {"files": fingerprint, "fmt": fmt, "conversational": conversational},
                           cache_dir, row_columns(fmt == UNPAIRED, conversational), f"the corpus {files} is empty")
    return rows, fmt, conversational, _hash(fingerprint, fmt, conversational)


def build_preference_split(tokenizer: Any, block_size: int, cache_dir: Optional[str] = None,
                           files: Optional[list[str]] = None, dataset: Any = None, name: str = "",
                           chat_template: Optional[str] = None, num_proc: Optional[int] = None,
                           report: Optional[dict[str, Any]] = None) -> Any:
    """Tokenized preference rows of one split, cached by source, tokenizer, template and `block_size`.
    `report` receives `format` (e.g. "preference (conversational)"), `records`, `truncated` and `dropped`."""
    check_cache_dir(cache_dir)
    rows, fmt, conversational, source_fp = read_rows(files, dataset, name, cache_dir)
    template = None
    if conversational:
        if not getattr(tokenizer, "is_fast", False):
            raise LitLoraError("conversations need a fast tokenizer (its offset mapping says which characters "
                               "each token holds); this one is a slow, Python tokenizer")
        template = resolve_template(tokenizer, chat_template or "auto")[1]
    tokens = rows.map(
        tokenize_preferences, batched=True, remove_columns=rows.column_names, desc="tokenizing",
        fn_kwargs={"tokenizer": tokenizer, "block_size": block_size, "template": template},
        num_proc=worker_count(len(rows), num_proc, row_kb=1),
        new_fingerprint=_hash("preference", PREFERENCE_VERSION, source_fp, tokenizer_fingerprint(tokenizer),
                              block_size, template),
    )
    if len(tokens) == 0:
        raise LitLoraError(f"no record of {files or name} has a completion token to train within "
                           f"data.block_size={block_size}")
    if report is not None:
        report.update(format=kind_name(fmt, conversational), records=len(rows), dropped=len(rows) - len(tokens),
                      # a row is dropped only when cutting left it nothing to train: it was cut too
                      truncated=int(sum(tokens["truncated"])) + len(rows) - len(tokens))
    return tokens.remove_columns("truncated")


def truncation_line(report: dict[str, Any], block_size: int) -> Optional[str]:
    """What `fit` prints once about cut records (None when none was cut)."""
    if not report.get("truncated") and not report.get("dropped"):
        return None
    unit = "records" if report["format"].startswith(UNPAIRED) else "pairs"
    line = (f"{report['truncated']} of {report['records']} {unit} were cut to block_size {block_size}: "
            "prompt from the left, then completions")
    if report.get("dropped"):
        line += f"; {report['dropped']} left with no completion token to train were dropped"
    return line
