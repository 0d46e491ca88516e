"""Checkpoint files are written atomically: a failed write keeps the previous file."""

from __future__ import annotations

import errno

import pytest
import torch

from lit_lora.errors import LitLoraError
from lit_lora.training.checkpoint_files import atomic_torch_save


def test_atomic_checkpoint_write_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"a": torch.ones(3)}, path)

    def broken_save(obj, fh):
        fh.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(LitLoraError, match="No space left on device.*previous file there is intact"):
        atomic_torch_save({"a": torch.zeros(3)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
