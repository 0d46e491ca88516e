"""Seeded fuzzing of what users hand us: randomly corrupted data files, configs and checkpoints go through
`fit`, `export` and `generate` in-process; the only outcomes allowed are exit 0, or exit 2 with one
`lit_lora: error:` line. A traceback (any other exception) fails the test and names the case."""

from __future__ import annotations

import json
import random

import pytest
import torch
import yaml

from lit_lora.cli import main
from tests.helpers import fit_args
from tests.test_compat import LEGACY, TOKENIZER

SEED = 20261201


def _outcome(capsys, args: list[str]) -> None:
    code = main(args)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lit_lora: error:")]
    assert code == 0 or (code == 2 and len(err) == 1), (code, err, args)


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


def test_corrupted_data_files(in_tmp, tiny_model_dir, shakespeare, capsys):
    rng = random.Random(SEED)
    text = shakespeare.read_bytes()[:6000]
    jsonl = "".join(json.dumps({"prompt": f"Q{i}:", "completion": f" answer {i}"}) + "\n" for i in range(40)).encode()
    for case in range(10):  # 10 seeded mutations: each is a whole fit, and the suite has 12 minutes
        name, source = ("d.txt", text) if case % 2 else ("d.jsonl", jsonl)
        path = in_tmp / f"{case}-{name}"
        path.write_bytes(_mutate_bytes(rng, source))
        _outcome(capsys, fit_args(tiny_model_dir, path, in_tmp, "--trainer.max_steps", "1", "--data.block_size", "8",
                                  "--data.val_fraction", "0.2"))


OPTIONS = ["model.learning_rate", "model.weight_decay", "model.warmup_steps", "model.min_lr_ratio", "model.betas",
           "model.lora.r", "model.lora.alpha", "model.lora.dropout", "model.lora.target_modules", "data.block_size",
           "data.batch_size", "data.val_fraction", "data.num_workers", "trainer.max_steps",
           "trainer.accumulate_grad_batches", "trainer.gradient_clip_val", "trainer.val_check_interval",
           "checkpoint.every_n_train_steps", "samples.max_new_tokens", "samples.temperature", "model.model_config"]
VALUES = [-1, 0, 0.5, 1e30, float("nan"), float("inf"), "abc", [], {}, [1.5, 2], None, True, "", {"n_layer": -1}]


def test_corrupted_configs(in_tmp, tiny_model_dir, shakespeare, capsys):
    rng = random.Random(SEED + 1)
    for case in range(16):
        config: dict = {}
        for option in rng.sample(OPTIONS, rng.randint(1, 2)):
            *groups, name = option.split(".")
            inner = config
            for group in groups:
                inner = inner.setdefault(group, {})
            inner[name] = rng.choice(VALUES)
        path = in_tmp / f"config-{case}.yaml"
        path.write_text(yaml.safe_dump(config))
        _outcome(capsys, fit_args(tiny_model_dir, shakespeare, in_tmp, "--trainer.max_steps", "1",
                                  "--config", str(path)))


def _mutate_checkpoint(rng: random.Random, ckpt: dict) -> dict:
    kind = rng.choice(["drop-section", "wrong-type", "tensor-shape", "tensor-dtype", "nan", "hparam"])
    if kind == "drop-section":
        ckpt.pop(rng.choice(sorted(ckpt)))
    elif kind == "wrong-type":
        ckpt[rng.choice(["lit_lora", "hyper_parameters", "state_dict"])] = rng.choice([1, "x", [1], None])
    elif kind in ("tensor-shape", "tensor-dtype", "nan"):
        key = rng.choice(sorted(ckpt["state_dict"]))
        old = ckpt["state_dict"][key]
        ckpt["state_dict"][key] = {"tensor-shape": torch.zeros(old.shape[0] + 1, 2),
                                   "tensor-dtype": old.to(torch.int64), "nan": old * float("nan")}[kind]
    else:
        key = rng.choice(sorted(ckpt["hyper_parameters"]))
        ckpt["hyper_parameters"][key] = rng.choice([-1, "x", None, [], {"r": -3}])
    return ckpt


@pytest.mark.parametrize("command", ["export", "generate"])
def test_corrupted_checkpoints(tmp_path, capsys, monkeypatch, command):
    from tests.conftest import REPO

    monkeypatch.chdir(REPO)  # the legacy run's relative tokenizer path
    rng = random.Random(SEED + 2 + len(command))
    for case in range(10):
        path = tmp_path / f"{case}.ckpt"
        if case % 3 == 0:
            path.write_bytes(_mutate_bytes(rng, LEGACY.read_bytes()))
        else:
            torch.save(_mutate_checkpoint(rng, torch.load(LEGACY, weights_only=True)), path)
        args = {"export": ["export", "--ckpt_path", str(path), "--output_dir", str(tmp_path / f"out{case}")],
                "generate": ["generate", "--ckpt_path", str(path), "--prompt", "A", "--max_new_tokens", "2",
                             "--model.tokenizer_name_or_path", TOKENIZER]}[command]
        _outcome(capsys, args)
