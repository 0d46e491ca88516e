"""Faults at the edges: a full disk while saving (torch's zip writer raises RuntimeError), a cache folder
that cannot be written, and `kill -9` during tokenization leaving no worker process behind."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest
import torch

import lit_lora.training.checkpoint_files as checkpoint_io
from lit_lora.cli import main
from lit_lora.errors import LitLoraError
from lit_lora.training.checkpoint_files import atomic_torch_save
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
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    err = [line for line in lines if line.startswith("lit_lora: error:")]
    assert all(line.startswith("lit_lora: ") for line in lines), lines  # notes before it, never a traceback
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


@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory, shakespeare):
    path = tmp_path_factory.mktemp("big") / "big.txt"
    path.write_text(shakespeare.read_text(encoding="utf-8") * 400, encoding="utf-8")  # ~12 MB: seconds
    return path


def _tokenizing(parent: psutil.Process, alive, busy: float = 0.5) -> list[psutil.Process]:
    """Every descendant of `parent`, once two of them are tokenizing (each has used `busy` s of CPU)."""
    deadline = time.monotonic() + 240
    while len([c for c in parent.children(recursive=True) if _cpu(c) > busy]) < 2:
        assert alive() and time.monotonic() < deadline, "tokenization never started in parallel"
        time.sleep(0.05)
    return parent.children(recursive=True)


def _outliving(processes: list[psutil.Process]) -> list[str]:
    gone, alive = psutil.wait_procs(processes, timeout=60)
    names = []
    for p in alive:
        try:
            names.append(f"{p.pid} {' '.join(p.cmdline())[:80]}")
            p.kill()
        except psutil.Error:
            pass
    return names


@pytest.mark.slow
def test_kill_9_during_tokenization_leaves_no_worker_behind(tmp_path, tiny_model_dir, big_corpus):
    proc = start_cli(tmp_path, "fit", "--model.model_name_or_path", str(tiny_model_dir), "--data.train_files",
                     str(big_corpus), "--data.num_proc", "2", "--data.cache_dir", str(tmp_path / "c"),
                     "--data.block_size", "32", "--trainer.max_steps", "1")
    # All of them, not only the busy workers: the pool's idle manager process outlived its parent too.
    descendants = _tokenizing(psutil.Process(proc.pid), lambda: proc.poll() is None)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _outliving(descendants) == [], "processes outlived their killed parent"


def test_ctrl_c_during_tokenization_is_one_line(in_tmp, tiny_model_dir, big_corpus, capfd, monkeypatch):
    """Ctrl-C as a terminal sends it, to every process of the group: this one and its tokenizing workers. It is
    sent from the first tokenized batch, so it lands there whatever the machine's speed."""
    from lit_lora.data import corpus

    me, tokenize, run_pid = psutil.Process(), corpus._tokenize_text, os.getpid()
    before = {p.pid for p in me.children(recursive=True)}

    def ctrl_c_while_tokenizing(batch, tokenizer):
        os.kill(run_pid, signal.SIGINT)
        if os.getpid() != run_pid:  # a worker of the pool
            os.kill(os.getpid(), signal.SIGINT)
        return tokenize(batch, tokenizer)

    monkeypatch.setattr(corpus, "_tokenize_text", ctrl_c_while_tokenizing)
    args = fit_args(tiny_model_dir, big_corpus, in_tmp, "--data.num_proc", "2", "--trainer.max_steps", "1")
    handler = signal.getsignal(signal.SIGINT)
    # A Python SIGTERM handler in this process, as a training run's graceful stop installs: the workers must
    # still end when their pool terminates them.
    term = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        assert main(args) == 130
    finally:  # Lightning ignores SIGINT from its KeyboardInterrupt on (the process would exit): not the tests'
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, term)
    err = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert err == ["lit_lora: interrupted (Ctrl-C) before finishing; nothing was saved"]
    assert _outliving([p for p in me.children(recursive=True) if p.pid not in before]) == []
    assert not list(in_tmp.rglob("*.ckpt")) and not (in_tmp / "lightning_logs").exists()
    assert not list((in_tmp / "hf-cache").rglob("tmp*"))  # no half-written tokenized shard


def test_ctrl_c_during_merge_is_one_line(trained_run, tmp_path, capsys, monkeypatch):
    from transformers import PreTrainedModel

    save = PreTrainedModel.save_pretrained

    def ctrl_c_while_saving(self, *args, **kwargs):  # a real SIGINT, with Python's own handler
        os.kill(os.getpid(), signal.SIGINT)
        return save(self, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", ctrl_c_while_saving)
    out = tmp_path / "merged"
    assert main(["merge", "--ckpt_path", str(trained_run.ckpt), "--output_dir", str(out)]) == 130
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err == ["lit_lora: interrupted (Ctrl-C) before finishing; nothing was saved"]
    assert not out.exists()
