"""Faults at the edges: a full disk while saving (torch's zip writer raises RuntimeError), a cache folder
that cannot be written, and `kill -9` during tokenization leaving no worker process behind."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest
import torch

import lit_lora.training.checkpoint_io as checkpoint_io
from lit_lora.cli import main
from lit_lora.errors import LitLoraError
from lit_lora.training.checkpoint_io import atomic_torch_save
from tests.helpers import fit_args, start_cli

ZIP_WRITER = "[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/0: file write failed"


def _full_disk(obj, fh):
    fh.write(b"x" * 4096)  # part of the file made it, as on a disk that fills up mid-write
    raise RuntimeError(ZIP_WRITER)


def test_a_full_disk_in_torchs_zip_writer_is_one_line_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"a": torch.ones(3)}, path)
    monkeypatch.setattr(checkpoint_io.torch, "save", _full_disk)
    with pytest.raises(LitLoraError, match="PytorchStreamWriter failed writing file .*disk full.*previous file"):
        atomic_torch_save({"a": torch.zeros(3)}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(3))


def test_fit_on_a_full_disk_stops_with_one_line(in_tmp, tiny_model_dir, shakespeare, capsys, monkeypatch):
    monkeypatch.setattr(checkpoint_io.torch, "save", _full_disk)
    assert main(fit_args(tiny_model_dir, shakespeare, in_tmp, "--trainer.max_steps", "2")) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "could not write checkpoint" in err[0] and "disk full" in err[0], err
    leftovers = [p.name for p in in_tmp.rglob("*.tmp-*")]
    assert leftovers == []


def test_an_unwritable_cache_folder_is_one_line(in_tmp, tiny_model_dir, shakespeare, capsys):
    # As root (CI) a chmod'ed folder stays writable; a path under a file cannot be written by anyone.
    (in_tmp / "a-file").write_text("x")
    args = fit_args(tiny_model_dir, shakespeare, in_tmp, "--trainer.max_steps", "1")
    args[args.index("--data.cache_dir") + 1] = str(in_tmp / "a-file" / "cache")
    assert main(args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "data.cache_dir" in err[0] and "is not writable" in err[0], err


def _cpu(p: psutil.Process) -> float:
    try:
        return p.cpu_times().user
    except psutil.Error:
        return 0.0


@pytest.mark.slow
def test_kill_9_during_tokenization_leaves_no_worker_behind(tmp_path, tiny_model_dir, shakespeare):
    corpus = tmp_path / "big.txt"
    corpus.write_text(shakespeare.read_text(encoding="utf-8") * 400, encoding="utf-8")  # ~12 MB: seconds
    proc = start_cli(tmp_path, "fit", "--model.model_name_or_path", str(tiny_model_dir), "--data.train_files",
                     str(corpus), "--data.num_proc", "2", "--data.cache_dir", str(tmp_path / "c"),
                     "--data.block_size", "32", "--trainer.max_steps", "1")
    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + 240
    workers: list[psutil.Process] = []
    while len(workers) < 2:  # wait until two workers are tokenizing (each has used some CPU)
        assert proc.poll() is None and time.monotonic() < deadline, "tokenization never started in parallel"
        workers = [c for c in parent.children(recursive=True) if _cpu(c) > 0.5]
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    gone, alive = psutil.wait_procs(workers, timeout=60)
    for p in alive:
        p.kill()
    assert alive == [], f"{len(alive)} worker(s) outlived their killed parent"
