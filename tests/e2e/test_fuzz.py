"""Seeded fuzzing of what users hand us: randomly corrupted data files, configs and checkpoints go through
`fit`, `export` and `generate` in-process. Each case is judged by an oracle written here, independently of
lit_lora: valid input must exit 0, invalid input must exit 2 with one `lit_lora: error:` line. A traceback
(any other exception), or corrupted input that trains silently, fails the test and names the case."""

from __future__ import annotations

import inspect
import json
import math
import random
from typing import Any

import pytest
import torch
import yaml

from lit_lora.cli import main
from lit_lora.training.module import LitLora
from tests.helpers import LEGACY, TOKENIZER, fit_args

SEED = 20261201


def _outcome(capsys, args: list[str], valid: bool) -> None:
    """Valid input trains (exit 0, no error line); invalid input stops with exit 2 and exactly one line, the
    last one written, `lit_lora: error: ...`. Nothing else is accepted: no other exit code, no traceback."""
    code = main(args)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    err = [line for line in lines if line.startswith("lit_lora: error:")]
    assert (code, len(err)) == ((0, 0) if valid else (2, 1)), (valid, code, err, args)
    assert not any(line.startswith("Traceback") for line in lines), (valid, lines[-20:], args)
    if not valid:
        assert lines[-1] == err[0], (lines[-5:], args)


def _mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    kind = rng.choice(["flip", "truncate", "insert", "bom", "nul", "crlf", "empty"])
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif kind == "truncate":
        del data[rng.randrange(len(data)):]
    elif kind == "insert":
        at = rng.randrange(len(data))
        data[at:at] = rng.choice([b"\xff\xfe", b"\xc3", b"{", b"}", b'"', b"\n\n\n", b"[", b"\x00"])
    elif kind == "bom":
        data[0:0] = b"\xef\xbb\xbf"
    elif kind == "nul":
        data = bytearray(data.replace(b" ", b"\x00", rng.randint(1, 20)))
    elif kind == "crlf":
        data = bytearray(data.replace(b"\n", b"\r"))
    else:
        data = bytearray()
    return bytes(data)


def _valid_text(data: bytes) -> bool:
    """A text file lit_lora must train on: UTF-8 (a byte-order mark allowed), no NUL byte, some text."""
    data = data.removeprefix(b"\xef\xbb\xbf")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return "\0" not in text and bool(text.strip())


def _valid_pairs(data: bytes) -> bool:
    """A prompt/completion JSONL file lit_lora must train on: every non-blank line a JSON object with string
    `prompt` and `completion`, and enough of them for the run's validation split."""
    count = 0
    for line in data.removeprefix(b"\xef\xbb\xbf").split(b"\n"):
        try:
            record = json.loads(line.decode("utf-8")) if line.strip() else None
        except (UnicodeDecodeError, json.JSONDecodeError):
            return False
        if record is not None:
            if not (isinstance(record, dict) and all(isinstance(record.get(k), str) for k in ("prompt", "completion"))):
                return False
            count += 1
    return count >= 5


def test_corrupted_data_files(in_tmp, tiny_model_dir, shakespeare, capsys):
    rng = random.Random(SEED)
    text = shakespeare.read_bytes()[:6000]
    jsonl = "".join(json.dumps({"prompt": f"Q{i}:", "completion": f" answer {i}"}) + "\n" for i in range(40)).encode()
    for case in range(10):  # 10 seeded mutations: each is a whole fit, and the suite has 12 minutes
        name, source = ("d.txt", text) if case % 2 else ("d.jsonl", jsonl)
        path = in_tmp / f"{case}-{name}"
        path.write_bytes(_mutate_bytes(rng, source))
        valid = (_valid_text if name == "d.txt" else _valid_pairs)(path.read_bytes())
        _outcome(capsys, fit_args(tiny_model_dir, path, in_tmp, "--trainer.max_steps", "1", "--data.block_size", "8",
                                  "--data.val_fraction", "0.2"), valid)


OPTIONS = ["model.learning_rate", "model.weight_decay", "model.warmup_steps", "model.min_lr_ratio", "model.betas",
           "model.lora.r", "model.lora.alpha", "model.lora.dropout", "model.lora.target_modules", "data.block_size",
           "data.batch_size", "data.val_fraction", "data.num_workers", "trainer.max_steps",
           "trainer.accumulate_grad_batches", "trainer.gradient_clip_val", "trainer.val_check_interval",
           "checkpoint.every_n_train_steps", "samples.max_new_tokens", "samples.temperature", "model.model_config"]
VALUES = [-1, 0, 0.5, 1e30, float("nan"), float("inf"), "abc", [], {}, [1.5, 2], None, True, "", {"n_layer": -1}]


def _number(low: float = -math.inf, high: float = math.inf, *, integer: bool = False, above: bool = False,
            below: bool = False, none: bool = False) -> Any:
    """A predicate: a finite number (an int if `integer`) in [low, high] (open at an end if `above`/`below`)."""
    def ok(v: Any) -> bool:
        if v is None:
            return none
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return False
        if integer and not isinstance(v, int):
            return False
        return (v > low if above else v >= low) and (v < high if below else v <= high)
    return ok


# What each option accepts in this run, from its documentation: the tiny model holds 128 positions, the data makes
# about 100 batches, and a few ranges stop where a larger value would only make the run long.
VALID: dict[str, Any] = {
    "model.learning_rate": _number(0, above=True), "model.weight_decay": _number(0),
    "model.warmup_steps": _number(0, integer=True, none=True), "model.min_lr_ratio": _number(0, 1),
    "model.betas": lambda v: isinstance(v, list) and len(v) == 2 and all(_number(0, 1, below=True)(b) for b in v),
    "model.lora.r": _number(1, integer=True), "model.lora.alpha": _number(0, above=True),
    "model.lora.dropout": _number(0, 1, below=True), "model.lora.target_modules": lambda v: v is None,
    "data.block_size": _number(2, 128, integer=True), "data.batch_size": _number(1, 64, integer=True),
    "data.val_fraction": _number(0, 1, below=True), "data.num_workers": _number(0, 2, integer=True),
    "trainer.max_steps": _number(0, 2, integer=True), "trainer.accumulate_grad_batches": _number(1, 4, integer=True),
    "trainer.gradient_clip_val": _number(0, none=True), "trainer.val_check_interval": _number(0, 1, above=True),
    "checkpoint.every_n_train_steps": _number(0, integer=True, none=True),
    "samples.max_new_tokens": _number(1, 64, integer=True), "samples.temperature": _number(0, 100),
    "model.model_config": lambda v: v is None,
}


def test_corrupted_configs(in_tmp, tiny_model_dir, shakespeare, capsys):
    rng = random.Random(SEED + 1)
    for case in range(16):
        config: dict = {}
        chosen = [(option, rng.choice(VALUES)) for option in rng.sample(OPTIONS, rng.randint(1, 2))]
        for option, value in chosen:
            *groups, name = option.split(".")
            inner = config
            for group in groups:
                inner = inner.setdefault(group, {})
            inner[name] = value
        path = in_tmp / f"config-{case}.yaml"
        path.write_text(yaml.safe_dump(config))
        valid = all(VALID[option](value) for option, value in chosen)
        _outcome(capsys, fit_args(tiny_model_dir, shakespeare, in_tmp, "--trainer.max_steps", "1",
                                  "--config", str(path)), valid)


# What export and generate read of a checkpoint; losing any other section leaves a file they can use.
READ_SECTIONS = ("lit_lora", "hyper_parameters", "state_dict")


def _mutate_checkpoint(rng: random.Random, ckpt: dict) -> tuple[dict, bool]:
    """The damaged checkpoint, and whether export and generate must still take it."""
    kind = rng.choice(["drop-section", "wrong-type", "tensor-shape", "tensor-dtype", "nan", "hparam"])
    valid = False
    if kind == "drop-section":
        section = rng.choice(sorted(ckpt))
        ckpt.pop(section)
        valid = section not in READ_SECTIONS
    elif kind == "wrong-type":
        ckpt[rng.choice(["lit_lora", "hyper_parameters", "state_dict"])] = rng.choice([1, "x", [1], None])
    elif kind in ("tensor-shape", "tensor-dtype", "nan"):
        key = rng.choice(sorted(ckpt["state_dict"]))
        old = ckpt["state_dict"][key]
        ckpt["state_dict"][key] = {"tensor-shape": torch.zeros(old.shape[0] + 1, 2),
                                   "tensor-dtype": old.to(torch.int64), "nan": old * float("nan")}[kind]
    else:
        key = rng.choice(sorted(ckpt["hyper_parameters"]))
        ckpt["hyper_parameters"][key] = value = rng.choice([-1, "x", None, [], {"r": -3}])
        # Only None for an option whose documented default is None leaves a checkpoint that means anything.
        valid = value is None and inspect.signature(LitLora.__init__).parameters[key].default is None
    return ckpt, valid


@pytest.mark.parametrize("command", ["export", "generate"])
def test_corrupted_checkpoints(tmp_path, capsys, monkeypatch, command):
    from tests.conftest import REPO

    monkeypatch.chdir(REPO)  # the legacy run's relative tokenizer path
    rng = random.Random(SEED + 2 + len(command))
    for case in range(10):
        path = tmp_path / f"{case}.ckpt"
        if case % 3 == 0:
            path.write_bytes(_mutate_bytes(rng, LEGACY.read_bytes()))  # a damaged archive: never valid
            valid = False
        else:
            ckpt, valid = _mutate_checkpoint(rng, torch.load(LEGACY, weights_only=True))
            torch.save(ckpt, path)
        args = {"export": ["export", "--ckpt_path", str(path), "--output_dir", str(tmp_path / f"out{case}")],
                "generate": ["generate", "--ckpt_path", str(path), "--prompt", "A", "--max_new_tokens", "2",
                             "--model.tokenizer_name_or_path", TOKENIZER]}[command]
        _outcome(capsys, args, valid)
