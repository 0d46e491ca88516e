"""Where lit_lora writes folders and files it did not read: never over what is not its own.

Every output folder (an exported adapter, a merged model) gets a manifest, `lit_lora_manifest.json`, that
lists the files we wrote. A folder is written only if it is new, empty, or holds exactly an earlier output
of ours (the manifest's files and nothing else); replacing our own output needs `overwrite`. Output files
(predictions, completions) are replaced only when they are ours and `overwrite` is given. The check is by
content, not by name, so pointing `--output_dir` at a run folder or at `.` fails in one line instead of
deleting the checkpoint being exported.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from lit_lora.errors import LitLoraError

MANIFEST = "lit_lora_manifest.json"
# Hidden folders inside an output folder while it is written in place (check_output_dir ignores them).
_STAGING = ".lit_lora-"


def _contents(folder: Path) -> list[str]:
    """The names in `folder`, without the staging folders of a write in place."""
    return [p.name for p in folder.iterdir() if not p.name.startswith(_STAGING)]
# Exports written before the manifest existed: an adapter folder with our lit_lora.json and PEFT's files only.
_LEGACY_ADAPTER = {"adapter_model.safetensors", "adapter_config.json", "README.md", "lit_lora.json"}
# The fields of every line of our completion files (`generate --output`, `predict`).
COMPLETION_FIELDS = {"id", "sample", "prompt", "completion"}


def shown(path: str | os.PathLike) -> str:
    """A path as we print it: relative to the working folder when it lies inside it (as the `saved ...`
    lines of a run are), else absolute."""
    full = Path(path).resolve()
    try:
        return str(full.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(full)


def _our_files(folder: Path) -> set[str] | None:
    """The names our manifest lists in `folder`, or None if the folder does not hold an output of ours."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = None
    if isinstance(manifest, dict) and manifest.get("written_by") == "lit_lora":
        files = manifest.get("files")
        if isinstance(files, list) and all(isinstance(f, str) for f in files):
            return set(files) | {MANIFEST}
    present = set(_contents(folder))
    if "lit_lora.json" in present and present <= _LEGACY_ADAPTER:
        return present
    return None


def check_output_dir(output_dir: str | os.PathLike, option: str, overwrite: bool) -> Path:
    """The resolved folder, if it may be written; else a one-line error naming `option`."""
    out = Path(output_dir).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise LitLoraError(f"{option} {str(output_dir)!r} is a file, not a folder")
    if not out.exists() or not _contents(out):
        return out
    ours = _our_files(out)
    present = sorted(_contents(out))
    others = [name for name in present if ours is None or name not in ours]
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise LitLoraError(
            f"{option} {str(output_dir)!r} is not empty and holds files lit_lora did not write ({shown}); "
            "choose a new or empty folder (nothing was changed)"
        )
    if not overwrite:
        raise LitLoraError(
            f"{option} {str(output_dir)!r} holds an earlier lit_lora output; pass --overwrite to replace it, "
            "or choose a new folder"
        )
    return out


def write_dir_atomically(
    output_dir: str | os.PathLike, kind: str, fill: Callable[[Path], Any], option: str, overwrite: bool
) -> Path:
    """Call fill(staging folder), add the manifest, then put the files in place: never half an output under
    the final names. A new folder is filled beside the target and renamed into place whole. An existing
    folder (empty, or our earlier output, replaced only as `check_output_dir` allows) is kept, with its
    inode and permissions: it may be a mount point, which cannot be renamed onto. Its files are staged in a
    hidden folder inside it (the same file system) and renamed into place one by one, the manifest, which
    marks a complete output, last. Every file gets the umask's permissions, whatever the writer chose."""
    out = check_output_dir(output_dir, option, overwrite)
    in_place = out.is_dir()
    if in_place:
        for stale in out.glob(f"{_STAGING}*"):  # left by an export that was killed
            shutil.rmtree(stale, ignore_errors=True)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out / f"{_STAGING}new-{os.getpid()}" if in_place else out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        fill(tmp)
        files = sorted(p.name for p in tmp.iterdir())
        (tmp / MANIFEST).write_text(json.dumps({"written_by": "lit_lora", "kind": kind, "files": files}, indent=2),
                                    encoding="utf-8")
        _apply_umask(tmp)
        if in_place:
            _move_in(tmp, out)
        else:
            os.replace(tmp, out)
    except Exception as err:  # a half-written output never stays, whatever the writer raised
        # Writers report a full disk as OSError, RuntimeError (torch) or SafetensorError (safetensors).
        if isinstance(err, LitLoraError) or not isinstance(err, (OSError, RuntimeError)) and \
                type(err).__name__ != "SafetensorError":
            raise
        reason = err.strerror if isinstance(err, OSError) and err.strerror else " ".join(str(err).split())
        raise LitLoraError(f"could not write {str(out)!r}: {reason}; nothing was changed there") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _move_in(staged: Path, out: Path) -> None:
    """Rename the staged files into `out`, our earlier output there (if any) set aside first and the manifest
    last; on any failure the files moved so far go back, and `out` holds what it held before."""
    old = out / f"{_STAGING}old-{os.getpid()}"
    earlier = sorted(_contents(out), key=lambda n: n != MANIFEST)
    new = sorted((p.name for p in staged.iterdir()), key=lambda n: n == MANIFEST)
    set_aside: list[str] = []
    moved: list[str] = []
    try:
        old.mkdir()
        for name in earlier:  # the manifest first: the folder stops claiming a complete output at once
            os.replace(out / name, old / name)
            set_aside.append(name)
        for name in new:
            os.replace(staged / name, out / name)
            moved.append(name)
    except BaseException:
        for name in reversed(moved):
            os.replace(out / name, staged / name)
        for name in reversed(set_aside):
            os.replace(old / name, out / name)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def _apply_umask(folder: Path) -> None:
    """The permissions a file created here would get (0666, folders 0777, less the umask): some writers
    (safetensors) create theirs 0600, which other users of a shared model folder could not read."""
    umask = _umask()
    os.chmod(folder, 0o777 & ~umask)
    for path in folder.rglob("*"):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (setting it to read it back would
    leave other threads, a logger's writer, a moment with another one)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0o077)  # the strictest for that moment
    os.umask(umask)
    return umask


def _is_completions_file(path: Path) -> bool:
    """A JSONL file whose first line is one of our completion records."""
    try:
        with open(path, encoding="utf-8") as fh:
            first = fh.readline()
        record = json.loads(first)
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and set(record) == COMPLETION_FIELDS


def check_output_file(path: str | os.PathLike, option: str, overwrite: bool) -> Path:
    """`path`, if a completions file may be written there: new, empty, or (with `overwrite`) ours."""
    out = Path(path).expanduser()
    if out.is_dir():
        raise LitLoraError(f"{option} {str(path)!r} is a folder; give a file name")
    if out.exists() and out.stat().st_size > 0:
        if not _is_completions_file(out):
            raise LitLoraError(
                f"{option} {str(path)!r} exists and is not a lit_lora completions file; choose another file "
                "(nothing was changed)"
            )
        if not overwrite:
            raise LitLoraError(f"{option} {str(path)!r} exists; pass --overwrite to replace it, or choose another file")
    return out


def ensure_writable(folder: str | os.PathLike) -> None:
    """Create `folder` if needed and write a temporary file in it: OSError now rather than at the first log,
    checkpoint or cache write. Callers turn it into their own one-line message."""
    os.makedirs(folder, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder):
        pass
