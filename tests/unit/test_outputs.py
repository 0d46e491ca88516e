"""Nothing lost: outputs never replace files that are not ours, and runs started together get their own
folders. Uses the committed checkpoint of an earlier lit_lora (tests/fixtures), which builds in a second."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from lit_lora.cli import main
from lit_lora.outputs import MANIFEST, check_output_file
from lit_lora.training.checkpoint_files import claim_run_version, find_last_checkpoint
from tests.conftest import REPO
from tests.helpers import start_cli

LEGACY_CKPT = REPO / "tests" / "fixtures" / "legacy-format1.ckpt"


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("command", ["export", "merge"])
def test_export_and_merge_never_delete_a_folder_that_is_not_theirs(tmp_path, capsys, command, monkeypatch):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = run / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(LEGACY_CKPT.read_bytes())
    (run / "events.out.tfevents.1").write_text("events")
    monkeypatch.chdir(run)
    for target in (str(run), ".", str(run / "checkpoints")):
        for extra in ([], ["--overwrite"]):
            code = main([command, "--ckpt_path", str(ckpt), "--output_dir", target, *extra])
            assert code == 2
            line = _error_line(capsys)
            assert "holds files lit_lora did not write" in line and "nothing was changed" in line, line
    assert ckpt.read_bytes() == LEGACY_CKPT.read_bytes()
    assert (run / "events.out.tfevents.1").read_text() == "events"
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "events.out.tfevents.1"]


def test_export_writes_a_manifest_and_replaces_only_its_own_output(tmp_path, capsys):
    out = tmp_path / "adapter"
    out.mkdir()  # an empty folder is fine
    args = ["export", "--ckpt_path", str(LEGACY_CKPT), "--output_dir", str(out)]
    assert main(args) == 0
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["written_by"] == "lit_lora" and manifest["kind"] == "adapter"
    assert set(manifest["files"]) == {p.name for p in out.iterdir()} - {MANIFEST}
    capsys.readouterr()
    assert main(args) == 2  # our own earlier export: replaced only when asked
    assert "pass --overwrite" in _error_line(capsys)
    assert main([*args, "--overwrite"]) == 0
    (out / "notes.txt").write_text("mine")  # a user's file beside our output: never replaced
    capsys.readouterr()
    assert main([*args, "--overwrite"]) == 2
    assert "(notes.txt)" in _error_line(capsys)
    assert (out / "notes.txt").read_text() == "mine" and (out / "adapter_model.safetensors").is_file()


def test_an_adapter_exported_before_manifests_counts_as_ours(tmp_path):
    out = tmp_path / "adapter"
    assert main(["export", "--ckpt_path", str(LEGACY_CKPT), "--output_dir", str(out)]) == 0
    (out / MANIFEST).unlink()  # what earlier versions wrote: PEFT's files, README.md and lit_lora.json
    assert main(["export", "--ckpt_path", str(LEGACY_CKPT), "--output_dir", str(out), "--overwrite"]) == 0


def test_completion_files_replace_only_our_own(tmp_path, capsys):
    theirs = tmp_path / "notes.jsonl"
    theirs.write_text('{"text": "my data"}\n')
    args = ["generate", "--ckpt_path", str(LEGACY_CKPT), "--prompt", "A", "--max_new_tokens", "2",
            "--model.tokenizer_name_or_path", str(REPO / "examples/quickstart/tokenizer"), "--device", "cpu"]
    for extra in ([], ["--overwrite"]):
        assert main([*args, "--output", str(theirs), *extra]) == 2
        assert "not a lit_lora completions file" in _error_line(capsys)
    assert theirs.read_text() == '{"text": "my data"}\n'
    ours = tmp_path / "out.jsonl"
    assert main([*args, "--output", str(ours)]) == 0
    capsys.readouterr()
    assert main([*args, "--output", str(ours)]) == 2
    assert "pass --overwrite" in _error_line(capsys)
    assert main([*args, "--output", str(ours), "--overwrite"]) == 0
    # predict's writer follows the same rule (its option named)
    with pytest.raises(Exception, match="--predict_writer.output_file .* not a lit_lora completions file"):
        check_output_file(theirs, "--predict_writer.output_file", overwrite=True)


def test_version_folders_are_claimed_once_and_last_is_the_newest_complete_run(tmp_path):
    root = tmp_path / "logs" / "lit_lora"
    assert [claim_run_version(str(tmp_path / "logs"), "lit_lora") for _ in range(3)] == [0, 1, 2]
    assert sorted(p.name for p in root.iterdir()) == ["version_0", "version_1", "version_2"]
    assert find_last_checkpoint(str(tmp_path / "logs"), "lit_lora") is None  # claimed, nothing saved yet
    for version, mtime in ((0, 2_000), (1, 1_000)):
        last = root / f"version_{version}" / "checkpoints" / "last.ckpt"
        last.parent.mkdir(parents=True)
        last.write_bytes(b"x")
        os.utime(last, ns=(mtime * 10**9, mtime * 10**9))
    # version_2 has no last.ckpt (a run starting); of the complete ones version_0 saved last
    assert find_last_checkpoint(str(tmp_path / "logs"), "lit_lora") == str(root / "version_0/checkpoints/last.ckpt")


@pytest.mark.slow
def test_two_runs_started_together_get_their_own_folders(tmp_path, tiny_model_dir, shakespeare):
    procs = []
    for lr in ("1e-3", "2e-3"):  # each run's config tells which run wrote it
        procs.append(start_cli(
            tmp_path, "fit", "--model.model_name_or_path", str(tiny_model_dir), "--data.train_files", str(shakespeare),
            "--data.block_size", "32", "--data.batch_size", "4", "--data.cache_dir", str(tmp_path / f"c{lr}"),
            "--model.learning_rate", lr, "--trainer.max_steps", "2", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--samples.prompts", "[]",
            "--trainer.callbacks+=tests.helpers.Barrier", f"--trainer.callbacks.folder={tmp_path / 'barrier'}"))
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-3000:]
    runs = sorted((tmp_path / "lightning_logs" / "lit_lora").iterdir())
    assert [r.name for r in runs] == ["version_0", "version_1"]
    rates = set()
    for run in runs:
        rates.add(yaml.safe_load((run / "config.yaml").read_text())["model"]["learning_rate"])
        assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "adapter" / MANIFEST).is_file()
    assert rates == {1e-3, 2e-3}


def test_a_chosen_logger_version_never_writes_into_another_runs_checkpoints(tmp_path):
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from lit_lora.cli.run_folder import claim_logger_version
    from lit_lora.errors import LitLoraError

    ckpts = tmp_path / "lightning_logs" / "lit_lora" / "version_0" / "checkpoints"
    ckpts.mkdir(parents=True)
    (ckpts / "last.ckpt").write_bytes(b"another run's")
    for cls in (TensorBoardLogger, CSVLogger):
        logger = cls(str(tmp_path / "lightning_logs"), name="lit_lora", version=0)
        with pytest.raises(LitLoraError, match=r"^trainer.logger version 0: .*version_0 holds another run's "
                                               r"checkpoints; leave the version out .* --ckpt_path last$"):
            claim_logger_version(logger, resuming=False)
        claim_logger_version(logger, resuming=True)  # resuming that run is what the folder is for
        claim_logger_version(cls(str(tmp_path / "lightning_logs"), name="lit_lora", version=1), resuming=False)
    assert (ckpts / "last.ckpt").read_bytes() == b"another run's"


def test_export_into_an_existing_empty_folder_keeps_it_and_respects_the_umask(tmp_path, capsys):
    # A mount point (`-v $PWD/out:/out`) cannot be renamed onto: the folder is written in place and kept.
    out = tmp_path / "mount"
    out.mkdir()
    os.chmod(out, 0o750)
    inode = out.stat().st_ino
    umask = os.umask(0o027)
    try:
        for extra in ([], ["--overwrite"]):  # into the empty folder, then over our own output there
            assert main(["export", "--ckpt_path", str(LEGACY_CKPT), "--output_dir", str(out), *extra]) == 0
            assert out.stat().st_ino == inode and out.stat().st_mode & 0o777 == 0o750
            files = sorted(p.name for p in out.iterdir())
            assert "adapter_model.safetensors" in files and MANIFEST in files and not any(f.startswith(".") for f in files)
            assert {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()} == {f: 0o640 for f in files}
    finally:
        os.umask(umask)
    capsys.readouterr()
    (out / "notes.txt").write_text("mine")  # a folder that is not empty and not ours is still refused
    assert main(["export", "--ckpt_path", str(LEGACY_CKPT), "--output_dir", str(out), "--overwrite"]) == 2
    assert "(notes.txt)" in _error_line(capsys)


def test_a_failed_write_in_place_leaves_no_file_under_a_final_name(tmp_path, monkeypatch):
    from lit_lora.errors import LitLoraError
    from lit_lora.outputs import write_dir_atomically

    def fill(folder):
        (folder / "weights.bin").write_bytes(b"part")
        (folder / "config.json").write_text("{}")

    def failing_fill(folder):
        fill(folder)
        raise OSError(28, "No space left on device")

    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(LitLoraError, match="No space left on device; nothing was changed there"):
        write_dir_atomically(out, "adapter", failing_fill, "--output_dir", overwrite=False)
    assert list(out.iterdir()) == []
    # The renames into place fail half-way (the second file): the first one goes back out of sight.
    write_dir_atomically(out, "adapter", fill, "--output_dir", overwrite=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    replace, calls = os.replace, []

    def replace_then_fail(src, dst):
        calls.append(dst)
        if len(calls) == 5:  # the manifest and both files set aside, one new file moved in, then the second
            raise OSError(5, "Input/output error")
        replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_then_fail)
    with pytest.raises(LitLoraError, match="Input/output error; nothing was changed there"):
        write_dir_atomically(out, "adapter", lambda f: (f / "weights.bin").write_bytes(b"new") or
                             (f / "config.json").write_text('{"new": 1}'), "--output_dir", overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the earlier output, whole


def test_a_run_stopped_by_bad_input_leaves_no_folder_unless_it_trained_or_saved(tmp_path, monkeypatch):
    from pathlib import Path

    from lit_lora.cli.run_folder import (RUN_VERSION_ENV, claim_run_folders, forget_claimed_folders,
                                         remove_unused_run_folders)

    monkeypatch.setenv(RUN_VERSION_ENV, "")  # restored afterwards: the claim publishes its version there

    class Trainer:  # what claim_run_folders reads of a Trainer without a logger
        loggers: list = []
        callbacks: list = []

        def __init__(self, global_step: int) -> None:
            self.global_step, self._default_root_dir = global_step, str(tmp_path)

        @property
        def default_root_dir(self) -> str:
            return self._default_root_dir

    (tmp_path / "lightning_logs").mkdir()  # the user's: never removed
    for steps, ckpt, kept in ((0, False, False), (3, False, True), (0, True, True)):
        forget_claimed_folders()
        trainer = Trainer(steps)
        claim_run_folders(trainer, resuming=False, ckpt_path=None)
        run = Path(trainer.default_root_dir)
        (run / "config.yaml").write_text("x")
        if ckpt:
            (run / "checkpoints").mkdir()
            (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
        remove_unused_run_folders()
        assert run.is_dir() == kept, (steps, ckpt)
        if not kept:  # the folders the claim made went too, the user's stayed
            assert sorted(p.name for p in tmp_path.iterdir()) == ["lightning_logs"]
            assert list((tmp_path / "lightning_logs").iterdir()) == []
    forget_claimed_folders()
