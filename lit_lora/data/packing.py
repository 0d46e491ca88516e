"""Packing: token streams and examples into blocks whose documents never see each other.

Every packed row carries `position_ids` that restart at 0 where a document starts. transformers turns them
into a block-diagonal causal mask when no attention_mask is given (`model_nll` builds that mask itself for
the families that do not), so a document attends only to itself and counts its positions from 0; the
collator gives a document's first token label -100, so the end of one document never learns to predict the
start of the next. A document cut at a block boundary continues in the next block from position 0, with none
of its earlier tokens in view. Nothing in `datasets` or transformers packs this way, so it is written here.

Text is read from Arrow files batch by batch (not memory-mapped), so memory stays flat for any corpus;
examples are packed from their memory-mapped Arrow file.
"""

from __future__ import annotations

import bisect
from typing import Iterator

import numpy as np

from lit_lora.constants import IGNORE_INDEX


def document_positions(starts: np.ndarray) -> np.ndarray:
    """Positions counted from the last document start at or before each token (`starts`: bool per token;
    the first token always starts)."""
    starts = starts.copy()
    starts[0] = True
    index = np.arange(len(starts))
    return index - np.maximum.accumulate(np.where(starts, index, 0))


def _record_batches(arrow_files: tuple[str, ...]) -> Iterator[object]:
    import pyarrow as pa

    for path in arrow_files:
        with pa.OSFile(path) as source:
            yield from pa.ipc.open_stream(source)


def pack_text(arrow_files: tuple[str, ...], block_size: int, packing: bool = True) -> Iterator[dict[str, list[int]]]:
    """Token rows (`ids`, `doc_start`, `doc_end`) cut into blocks of `block_size`, the remainder carried from
    row to row; only the corpus's final partial block is dropped. Without `packing` a block never spans two
    documents: a document's last partial block is a shorter row of its own."""
    ids = np.zeros(0, dtype=np.int64)
    starts = np.zeros(0, dtype=bool)
    for batch in _record_batches(arrow_files):
        column = batch.column("ids")
        bounds = column.offsets.to_numpy() - column.offsets.to_numpy()[0]
        flat = column.flatten().to_numpy()
        begins = batch.column("doc_start").to_numpy(zero_copy_only=False)
        row_starts = np.zeros(len(flat) + 1, dtype=bool)
        row_starts[bounds[:-1][begins]] = True
        ends = batch.column("doc_end").to_numpy(zero_copy_only=False)
        # Packed, the whole batch is one piece; unpacked, each row is, and a document's end flushes.
        pieces = [(0, len(flat), False)] if packing else zip(bounds[:-1], bounds[1:], ends)
        for lo, hi, doc_end in pieces:
            ids, starts = np.concatenate([ids, flat[lo:hi]]), np.concatenate([starts, row_starts[lo:hi]])
            n_full = len(ids) // block_size
            for j in range(n_full):
                yield _block(ids[j * block_size : (j + 1) * block_size], starts[j * block_size : (j + 1) * block_size])
            ids, starts = ids[n_full * block_size :], starts[n_full * block_size :]
            if doc_end and len(ids):
                yield _block(ids, starts)
                ids, starts = ids[:0], starts[:0]


def _block(ids: np.ndarray, starts: np.ndarray) -> dict[str, list[int]]:
    return {"input_ids": ids.tolist(), "position_ids": document_positions(starts).tolist()}


def best_fit_bins(lengths: list[int], capacity: int) -> list[list[int]]:
    """Example indices grouped into blocks of at most `capacity` tokens: longest first, each into the block
    it fills best (best-fit decreasing), so few blocks are left part empty. Written here: `datasets` and
    transformers have no bin packing."""
    spaces: list[tuple[int, int]] = []  # (room left, block), sorted
    bins: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        k = bisect.bisect_left(spaces, (lengths[i], -1))
        if k < len(spaces):
            room, b = spaces.pop(k)
        else:
            room, b = capacity, len(bins)
            bins.append([])
        bins[b].append(i)
        if room - lengths[i] > 0:
            bisect.insort(spaces, (room - lengths[i], b))
    return [sorted(b) for b in bins]


def pack_examples(arrow_files: tuple[str, ...], block_size: int) -> Iterator[dict[str, list[int]]]:
    """Examples (`input_ids`, `labels`, each at most `block_size` tokens) joined into blocks of at most
    `block_size` tokens by `best_fit_bins`; an example never spans two blocks."""
    from datasets import Dataset, concatenate_datasets

    examples = concatenate_datasets([Dataset.from_file(f) for f in arrow_files])
    offsets = examples.data.column("input_ids").combine_chunks().offsets.to_numpy()
    for members in best_fit_bins((offsets[1:] - offsets[:-1]).tolist(), block_size):
        rows = examples[members]
        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        for x, y in zip(rows["input_ids"], rows["labels"]):
            ids += x
            labels += [IGNORE_INDEX] + y[1:]  # the previous example's end does not predict this start
            positions += range(len(x))
        yield {"input_ids": ids, "labels": labels, "position_ids": positions}
