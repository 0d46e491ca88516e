"""Checkpoint files: atomic writes, safe loading (with the format checked), and where a run's checkpoints
and version folders live.

What goes *into* a checkpoint (LoRA weights, RNG, data position) is decided by `LitLora.on_save_checkpoint`
and `LitLoraData.state_dict`; this module only moves bytes safely through Lightning's CheckpointIO hook.
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lit_lora.constants import CHECKPOINT_FORMAT
from lit_lora.errors import LitLoraError
from lit_lora.notes import print_note


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> int:
    """torch.save to a temporary file beside `path`, fsync, then os.replace: a reader (or a crash) sees the
    old file or the new one, never half of one. Returns the size in bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        # A full disk reaches us as OSError from write/fsync, or as RuntimeError from torch's zip writer
        # ("PytorchStreamWriter failed writing file ..."): either way the partial temporary file goes.
        tmp.unlink(missing_ok=True)
        reason = err.strerror if isinstance(err, OSError) and err.strerror else " ".join(str(err).split())
        raise LitLoraError(
            f"could not write checkpoint {str(path)!r}: {reason} (disk full?); the previous file there is intact"
        ) from err
    return path.stat().st_size


def load_checkpoint_file(path: str | os.PathLike) -> dict[str, Any]:
    """Load a lit_lora checkpoint with weights_only=True, turning every failure into one clear line."""
    path = str(path)
    if not os.path.isfile(path):
        raise LitLoraError(f"checkpoint {path!r} does not exist")
    try:
        _check_crc(path)
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError... for bad files
        raise LitLoraError(
            f"checkpoint {path!r} cannot be read (truncated, corrupt or not a PyTorch checkpoint): "
            f"{type(err).__name__}"
        ) from err
    if not isinstance(ckpt, dict) or "lit_lora" not in ckpt:
        raise LitLoraError(f"checkpoint {path!r} was not written by lit_lora (no 'lit_lora' section)")
    _check_structure(ckpt, path)
    fmt = ckpt["lit_lora"].get("format")
    if fmt != CHECKPOINT_FORMAT:
        raise LitLoraError(
            f"checkpoint {path!r} has lit_lora format {fmt!r}; this version reads format {CHECKPOINT_FORMAT} "
            "(written by another lit_lora version?)"
        )
    return ckpt


def _check_crc(path: str) -> None:
    """torch.save writes a zip archive with a CRC-32 of every record, but torch.load does not check them: a
    flipped byte inside a tensor would load as a silently different weight. zipfile checks them."""
    with zipfile.ZipFile(path) as archive:
        bad = archive.testzip()
    if bad is not None:
        raise ValueError(f"record {bad} fails its CRC check")


def _check_structure(ckpt: dict[str, Any], path: str) -> None:
    """The sections we read have the types we read them as: one line instead of a TypeError later."""
    expected = {"lit_lora": dict, "hyper_parameters": dict, "state_dict": dict}
    for key, kind in expected.items():
        if key in ckpt and not isinstance(ckpt[key], kind):
            raise LitLoraError(
                f"checkpoint {path!r} is malformed: its {key!r} section is a {type(ckpt[key]).__name__}, "
                "expected a mapping"
            )
    bad = [k for k, v in ckpt.get("state_dict", {}).items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise LitLoraError(f"checkpoint {path!r} is malformed: state_dict entry {bad[0]!r} is not a tensor")
    # Loading casts to the parameter's dtype, so integer weights would load without a word.
    bad = [(k, v.dtype) for k, v in ckpt.get("state_dict", {}).items() if not v.is_floating_point()]
    if bad:
        raise LitLoraError(f"checkpoint {path!r} is malformed: state_dict entry {bad[0][0]!r} holds "
                           f"{str(bad[0][1]).removeprefix('torch.')}, expected floating-point weights")


def check_resumable(ckpt: dict[str, Any], path: str) -> None:
    """`fit --ckpt_path` needs the optimizer and loop state, not only weights."""
    missing = [k for k in ("optimizer_states", "lr_schedulers", "loops") if not ckpt.get(k)]
    if missing or "state_dict" not in ckpt:
        raise LitLoraError(
            f"checkpoint {path!r} cannot resume training: it has no {', '.join(missing) or 'state_dict'}; "
            "to start from its weights with a new optimizer, export it and pass --model.adapter_path"
        )


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's CheckpointIO with atomic writes, size reporting and weights_only loading."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        size = atomic_torch_save(checkpoint, path)
        n_weights = sum(v.numel() for v in checkpoint.get("state_dict", {}).values())
        print_note(f"saved {path} ({size / 1e6:.2f} MB, LoRA-only: {n_weights:,} weights)")

    def __init__(self) -> None:
        super().__init__()
        self._preloaded: Optional[tuple[str, dict[str, Any]]] = None

    def preload(self, path: Optional[str], checkpoint: Optional[dict[str, Any]]) -> None:
        """The checkpoint at `path`, already read (and checked) by the CLI: the restore takes this copy
        instead of reading the file again."""
        self._preloaded = (str(path), checkpoint) if path and checkpoint is not None else None

    def load_checkpoint(self, path: Any, map_location: Optional[Any] = None, weights_only: Optional[bool] = None) -> dict:
        if self._preloaded is not None and self._preloaded[0] == str(path):
            checkpoint, self._preloaded = self._preloaded[1], None  # once: a later load reads the file
            return checkpoint
        return load_checkpoint_file(path)


_VERSION = re.compile(r"^version_(\d+)$")
# The folder MLflow's runs get under their experiment (Lightning's ModelCheckpoint saves into it): the run id.
_MLFLOW_RUN = re.compile(r"^[0-9a-f]{32}$")


def find_last_checkpoint(save_dir: str, name: str) -> Optional[str]:
    """The newest complete run's `last.ckpt` under save_dir/name, in a run folder of any logger (`version_N`
    for TensorBoard and CSV, the run id for MLflow; nothing else): the one saved most recently (runs started
    together finish in any order). A run folder with no `last.ckpt` yet (a run that is starting, or one that
    stopped before its first save) is passed over; files appear whole (atomic writes)."""
    root = Path(save_dir) / name
    if not root.is_dir():
        return None
    found = []
    for d in root.iterdir():
        last = d / "checkpoints" / "last.ckpt"
        m = _VERSION.match(d.name)
        if (m or _MLFLOW_RUN.match(d.name)) and last.is_file():
            found.append((last.stat().st_mtime_ns, int(m.group(1)) if m else -1, str(last)))
    return max(found)[2] if found else None


def claim_run_version(save_dir: str, name: str) -> int:
    """Create save_dir/name/version_N for the lowest free N and return N. `mkdir` either creates the folder
    or fails because it exists, so two runs started at the same moment never get the same one (the
    loggers' own choice, the next number after the folders they see, gave both `version_0`)."""
    root = Path(save_dir) / name
    try:
        root.mkdir(parents=True, exist_ok=True)
        taken = [int(m.group(1)) for d in root.iterdir() if (m := _VERSION.match(d.name))]
        version = max(taken, default=-1) + 1
        while True:
            try:
                (root / f"version_{version}").mkdir()
                return version
            except FileExistsError:
                version += 1
    except OSError as err:
        raise LitLoraError(f"log directory {str(root)!r} is not writable: {err.strerror or err}") from err


def run_version_of(ckpt_path: str) -> Optional[int]:
    """The logger version a checkpoint was written under, if it lives in `.../version_N/checkpoints/`."""
    p = Path(ckpt_path).resolve()
    m = _VERSION.match(p.parent.parent.name) if p.parent.name == "checkpoints" else None
    return int(m.group(1)) if m else None
