"""`python -m lit_lora.cli preview --config conf/chat.yaml`: the first training sequences as the model sees
them, the tokens that train marked, and what the training data holds.

Takes everything `fit` takes. It reads and tokenizes the data exactly as `fit` does (the same cache), through
the same collator, and builds no model. Trained tokens are printed between `[[` and `]]`. `--json` prints one
JSON object per sequence on stdout instead (`input_ids`, `labels` with -100 where nothing trains,
`position_ids` when packed, `text`, `trained_text`); the summary then goes to stderr.

    python -m lit_lora.cli preview --config conf/chat.yaml --num_examples 2
    python -m lit_lora.cli preview --config conf/chat.yaml --json | head -1
"""

from __future__ import annotations

import contextlib
import json
import sys
import warnings
from typing import Any, Optional

from lit_lora.errors import LitLoraError
from lit_lora.notes import print_note

USAGE = ("usage: python -m lit_lora.cli preview [--num_examples N] [--json] [options of fit]\n\nPrints the first "
         "N (default 3) training sequences as the model sees them, trained tokens between [[ and ]], and a summary "
         "of the training data; --json: one JSON object per sequence instead. Builds no model. The options of fit:\n")


def _preview_cli_class() -> type:
    # start-up: Lightning loads after --help
    from lit_lora.cli.trainer_cli import ParseOnlyCLI

    class PreviewCLI(ParseOnlyCLI):
        """Parses exactly as `fit` does, then builds the data module alone."""

        def instantiate_classes(self) -> None:
            from lit_lora.data.datamodule import LitLoraData  # start-up: see above

            data = self.config[self.subcommand].data.clone().as_dict()
            if data.get("batch_size") == "auto":  # fit chooses it from the device's memory
                print_note("data.batch_size auto: the padding efficiency below is for batches of 8")
                data["batch_size"] = 8
            self.datamodule = LitLoraData(**data)
            self.model = None
            self.trainer = None

    return PreviewCLI


def _own_options(argv: list[str]) -> tuple[list[str], int, bool]:
    """`--num_examples N` and `--json` are preview's own: taken out before the options of `fit` are parsed."""
    rest, count, as_json = [], 3, False
    args = iter(argv)
    for arg in args:
        if arg == "--json":
            as_json = True
        elif arg == "--num_examples" or arg.startswith("--num_examples="):
            value = arg.split("=", 1)[1] if "=" in arg else next(args, "")
            if not value.isdigit():
                raise LitLoraError(f"--num_examples must be a whole number, got {value!r}")
            count = int(value)
        else:
            rest.append(arg)
    return rest, count, as_json


def sides(batch: dict[str, Any]) -> list[str]:
    """The sequences of a batch, by their key prefix: "" for SFT's, "chosen" and "rejected" for pairs,
    "completion" for KTO's rows (its `kl` sequences are other rows' completions: not shown)."""
    found = [k[: -len("_input_ids")] for k in batch if k.endswith("_input_ids") and k != "kl_input_ids"]
    return found or [""]


def sequence_record(tokenizer: Any, row: dict[str, Any], batch: dict[str, Any], side: str = "") -> dict[str, Any]:
    """One training row, collated alone into `batch`, as `--json` prints it (its `side` of a preference row)."""
    key = f"{side}_" if side else ""
    ids, labels = batch[f"{key}input_ids"][0].tolist(), batch[f"{key}labels"][0].tolist()
    record: dict[str, Any] = {"side": side} if side else {}
    if "label" in batch:  # KTO: whether the completion is desirable
        record["label"] = bool(batch["label"][0])
    record |= {"input_ids": ids, "labels": labels}
    if "position_ids" in row:  # packed (the collator leaves them out of a block of one document)
        record["position_ids"] = [int(p) for p in row["position_ids"]]
    record["text"] = tokenizer.decode(ids)
    record["trained_text"] = tokenizer.decode([i for i, label in zip(ids, labels) if label != -100])
    return record


def marked_text(tokenizer: Any, ids: list[int], labels: list[int]) -> str:
    """The decoded sequence with each run of trained tokens between `[[` and `]]`. Runs are decoded whole:
    a trained span is whole characters, so no character is split between two runs."""
    out, run, trained = [], [], None
    for token, label in [*zip(ids, labels), (None, None)]:
        state = label is not None and label != -100
        if token is None or (trained is not None and state != trained):
            text = tokenizer.decode(run)
            out.append(f"[[{text}]]" if trained else text)
            run = []
        run.append(token)
        trained = state
    return "".join(out)


def _show(tokenizer: Any, i: int, record: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(record, ensure_ascii=False), flush=True)
        return
    trained = sum(label != -100 for label in record["labels"])
    documents = sum(p == 0 for p in record.get("position_ids", [0]))
    packed = f", {documents} documents packed" if documents > 1 else ""
    side = f", {record['side']}" if "side" in record else ""
    side += {True: " (desirable)", False: " (undesirable)"}.get(record.get("label"), "")
    print(f"=== training sequence {i}{side} ({len(record['input_ids'])} tokens, {trained} trained{packed}) ===")
    print(marked_text(tokenizer, record["input_ids"], record["labels"]), flush=True)


def main(argv: Optional[list[str]] = None) -> int:
    argv, count, as_json = _own_options(list(sys.argv[1:] if argv is None else argv))
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE, flush=True)
    # start-up: see _preview_cli_class
    from lit_lora.data.batches import RowsView, collator_for

    with warnings.catch_warnings():
        # LightningCLI warns when given args while sys.argv holds others; here sys.argv says "preview".
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        cli = _preview_cli_class()(args=["fit", *argv])
    data = cli.datamodule
    # With --json, stdout holds JSON lines only: what setup says (format, template, counts) goes to stderr.
    with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
        data.setup("fit")
        if data.batch_size is None:
            raise LitLoraError("preview needs a number for data.batch_size: auto is chosen at the start of fit")
        summary = data.data_lines(data.batch_size)
    tokenizer, rows = data.tokenizer, RowsView(data.train_ds)
    collate = collator_for(data.train_ds, tokenizer, data.hparams.block_size)
    shown = min(count, len(rows))
    for i in range(shown):
        row = rows[i]
        batch = collate([row])
        for side in sides(batch):
            _show(tokenizer, i, sequence_record(tokenizer, row, batch, side), as_json)
    out = sys.stderr if as_json else sys.stdout
    for line in summary:
        print(f"lit_lora: {line}", file=out)
    print(f"lit_lora: preview: {shown} of {len(rows):,} training sequences shown (data order; fit shuffles with "
          f"data.seed)", file=out, flush=True)
    return 0
