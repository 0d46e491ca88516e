"""What the training data holds, in numbers: tokens and trained tokens per row, and how much of each
batch is padding. `fit` prints these lines at its start and `preview` at its end."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np

from lit_lora.constants import IGNORE_INDEX
from lit_lora.data.preference import truncation_line
from lit_lora.generation.chat import end_of_turn_note


def row_stats(ds: Any) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, predicted tokens) per row: labels after the shift that are not -100, or for packed text every
    token but the first of each document (see `batches.Collator`)."""
    lengths, targets = [], []
    key = "labels" if "labels" in ds.column_names else "position_ids" if "position_ids" in ds.column_names else None
    for batch in ds.with_format("arrow").iter(batch_size=4096):
        ids = batch.column("input_ids").combine_chunks()
        lengths.append(ids.offsets.to_numpy()[1:] - ids.offsets.to_numpy()[:-1])
        if key is None:
            targets.append(lengths[-1] - 1)
            continue
        column = batch.column(key).combine_chunks()
        bounds = column.offsets.to_numpy() - column.offsets.to_numpy()[0]
        values = column.flatten().to_numpy()
        hits = values != IGNORE_INDEX if key == "labels" else values != 0
        if key == "labels":
            hits[bounds[:-1][bounds[:-1] < len(values)]] = False  # a row's first token is never predicted
        targets.append(np.add.reduceat(hits, bounds[:-1]) if len(values) else np.zeros(len(bounds) - 1, int))
    if not lengths:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(lengths).astype(np.int64), np.concatenate(targets).astype(np.int64)


def padding_efficiency(lengths: np.ndarray, batches: Iterable[list[int]]) -> float:
    """Tokens over the positions of batches padded to their longest row."""
    tokens = positions = 0
    for batch in batches:
        rows = lengths[batch]
        tokens += int(rows.sum())
        positions += int(rows.max()) * len(rows) if len(rows) else 0
    return tokens / positions if positions else 1.0


def data_lines(lengths: np.ndarray, targets: np.ndarray, counts: Mapping[str, int], efficiency: float,
               settings: Mapping[str, Any]) -> list[str]:
    """The lines `fit` and `preview` print. `counts` is `corpus.build_split`'s report; `settings` names the
    format asked for and the one detected, the template, train_on, block_size and whether rows are packed."""
    tokens, trained = int(lengths.sum()), int(targets.sum())
    fmt, block = settings["detected"], settings["block_size"]
    how = " (data.format auto: by extension and first record)" if settings["format"] == "auto" else ""
    source = (f"{counts['examples']:,} example(s)" if "examples" in counts
              else f"{counts.get('documents', 0):,} document(s)")
    lines = [f"data: {fmt}{how}, {source} -> {len(lengths):,} training sequence(s), {tokens:,} tokens, "
             f"{trained:,} trained ({100 * trained / max(tokens, 1):.1f}%)"]
    if settings.get("template"):
        lines.append(f"data: chat template {settings['template']}, train_on {settings['train_on']}")
    if counts.get("truncated") or counts.get("dropped"):
        policy = ("keep the prompt and the start of the completion" if fmt == "prompt_completion"
                  and not counts.get("conversations") else f"keep their first {block} tokens")
        lines.append(f"data: {counts.get('truncated', 0) + counts.get('dropped', 0):,} example(s) longer than "
                     f"block_size={block} were cut ({policy}); {counts.get('dropped', 0):,} of them were left "
                     "with no token to train and skipped")
    if settings.get("end_of_turn_note"):
        lines.append(f"data: {settings['end_of_turn_note']}")
    # Text rows carry per-document positions packed or not: what was asked for says which they are.
    packed = settings["packed"] and settings.get("packing") is not False
    if packed:
        how = f", packed into blocks of {block}"
    elif settings["packed"]:
        how = f"; each document in blocks of {block} of its own (data.packing false), its last one shorter"
    else:
        how = ""
    lines.append(f"data: {'packing' if packed else 'padding'} efficiency {100 * efficiency:.1f}% (tokens / "
                 f"positions of the padded batches{how})")
    return lines


def preference_lines(lengths: np.ndarray, counts: Mapping[str, Any], efficiency: float,
                     settings: Mapping[str, Any]) -> list[str]:
    """The lines `fit` prints for preference data: what was read, what was cut (once), the template, padding.
    `lengths`: each row's prompt plus its longer completion; `counts`: `preference.build_preference_split`'s
    report on the training data."""
    how = " (data.format auto: by extension and first record)" if settings["format"] == "auto" else ""
    unpaired = counts["format"].startswith("unpaired")
    unit, longest = ("row(s)", "prompt and completion") if unpaired else ("pair(s)", "prompt and its longer completion")
    lines = [f"data: {counts['format']}{how}, {counts['records']:,} record(s) -> {len(lengths):,} training "
             f"{unit}, the longest {int(lengths.max()) if len(lengths) else 0:,} tokens ({longest})"]
    cut = truncation_line(counts, settings["block_size"])
    if cut:
        lines.append(f"data: {cut}")
    if settings.get("template"):
        lines.append(f"data: chat template {settings['template']}")
    if settings.get("end_of_turn_note"):
        lines.append(f"data: {settings['end_of_turn_note']}")
    by = "" if unpaired else ", by the longer completion of each pair"
    lines.append(f"data: padding efficiency {100 * efficiency:.1f}% (tokens / positions of the padded batches{by})")
    return lines


def training_data_lines(data: Any, batch_size: int) -> list[str]:
    """`data_lines` for a set-up `LitLoraData`'s training split, for batches of `batch_size` in the order of
    its first epoch (`preference_lines` for preference data)."""
    lengths, targets = data.order.row_stats()
    order = data.order.sampler_for(0, 1, batch_size).epoch_order(0)
    batches = [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
    template = data.chat_template
    if data.order.preference:
        settings = dict(data.hparams, template=template and data.template_name,
                        end_of_turn_note=template and end_of_turn_note(data.tokenizer, template))
        return preference_lines(lengths, data.counts, padding_efficiency(lengths, batches), settings)
    settings = dict(data.hparams, detected=data.data_format, packed="position_ids" in data.train_ds.column_names,
                    template=template and data.template_name,
                    end_of_turn_note=template and end_of_turn_note(data.tokenizer, template))
    return data_lines(lengths, targets, data.counts, padding_efficiency(lengths, batches), settings)
