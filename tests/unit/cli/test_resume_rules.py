"""`--ckpt_path` rules (lit_lora/cli/resume.py) over plain values: no Trainer, no fit."""

from __future__ import annotations

import os
import re

import pytest

from lit_lora.cli.resume import logger_location, merge_checkpoint_hparams, resolve_ckpt_path
from lit_lora.errors import LitLoraError

LORA_DEFAULTS = {
    "r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["c_attn", "c_proj"], "bias": "none",
    "use_rslora": False, "use_dora": False, "modules_to_save": None,
}
DEFAULTS = {"learning_rate": 3e-4, "warmup_steps": 100, "model_config": None, "block_size": 64, "lora": LORA_DEFAULTS}


def lora(**changes):
    return {**LORA_DEFAULTS, **changes}


def hp(**changes):
    return {**DEFAULTS, **changes}


# (id, current, saved, expected merged result)
MERGE_CASES = [
    ("default-takes-checkpoint", hp(), hp(learning_rate=1e-3), hp(learning_rate=1e-3)),
    ("user-set-kept", hp(learning_rate=5e-3), hp(learning_rate=1e-3), hp(learning_rate=5e-3)),
    ("several-options", hp(warmup_steps=7), hp(learning_rate=1e-3, warmup_steps=50), hp(learning_rate=1e-3, warmup_steps=7)),
    ("lora-default-takes-checkpoint", hp(), hp(lora=lora(r=4, alpha=4, dropout=0.2)), hp(lora=lora(r=4, alpha=4, dropout=0.2))),
    ("lora-unprotected-user-set-kept", hp(lora=lora(dropout=0.0)), hp(lora=lora(dropout=0.3)), hp(lora=lora(dropout=0.0))),
    ("lora-protected-default-takes-checkpoint", hp(), hp(lora=lora(use_rslora=True, bias="lora_only")),
     hp(lora=lora(use_rslora=True, bias="lora_only"))),
    ("lora-protected-typed-same-as-checkpoint", hp(lora=lora(r=32)), hp(lora=lora(r=32, alpha=4)), hp(lora=lora(r=32, alpha=4))),
    ("lora-mixed", hp(lora=lora(dropout=0.1)), hp(lora=lora(r=4, target_modules=["c_attn"], dropout=0.3)),
     hp(lora=lora(r=4, target_modules=["c_attn"], dropout=0.1))),
    ("model-config-default-takes-checkpoint", hp(), hp(model_config={"n_layer": 2}), hp(model_config={"n_layer": 2})),
    ("model-config-typed-same", hp(model_config={"n_layer": 2}), hp(model_config={"n_layer": 2}), hp(model_config={"n_layer": 2})),
    ("block-size-not-merged", hp(), hp(block_size=1024), hp()),
    ("underscore-keys-ignored", {**hp(), "_instantiator": "mine"}, {**hp(), "_instantiator": "theirs", "_class_path": "x.Y"},
     {**hp(), "_instantiator": "mine"}),
    ("keys-not-in-current-ignored", hp(), {**hp(learning_rate=2e-3), "removed_option": 1}, hp(learning_rate=2e-3)),
]


@pytest.mark.parametrize("current,saved,expected", [c[1:] for c in MERGE_CASES], ids=[c[0] for c in MERGE_CASES])
def test_merge_checkpoint_hparams(current, saved, expected):
    assert merge_checkpoint_hparams(current, DEFAULTS, saved) == expected


def test_merge_does_not_mutate_its_inputs():
    current, saved = hp(lora=lora(dropout=0.0)), hp(learning_rate=1e-3, lora=lora(r=4))
    before_current, before_saved = repr(current), repr(saved)
    merge_checkpoint_hparams(current, DEFAULTS, saved)
    assert (repr(current), repr(saved)) == (before_current, before_saved)


# (field, typed value, checkpoint value, expected message start)
PROTECTED_CASES = [
    ("r", 16, 8, "--model.lora.r is 16 but the checkpoint was trained with 8"),
    ("alpha", 64, 32, "--model.lora.alpha is 64 but the checkpoint was trained with 32"),
    ("target_modules", ["c_attn"], ["c_fc"], "--model.lora.target_modules is ['c_attn'] but the checkpoint was trained with ['c_fc']"),
    ("use_dora", True, False, "--model.lora.use_dora is True but the checkpoint was trained with False"),
    ("modules_to_save", ["lm_head"], ["wte"], "--model.lora.modules_to_save is ['lm_head'] but the checkpoint was trained with ['wte']"),
    # They change which tensors train or how they scale: the checkpoint's weights would mean something else.
    ("bias", "all", "none", "--model.lora.bias is 'all' but the checkpoint was trained with 'none'"),
    ("use_rslora", True, False, "--model.lora.use_rslora is True but the checkpoint was trained with False"),
]


@pytest.mark.parametrize("field,typed,saved_value,message", PROTECTED_CASES, ids=[c[0] for c in PROTECTED_CASES])
def test_protected_lora_field_changed_raises(field, typed, saved_value, message):
    current = hp(lora=lora(**{field: typed}))
    saved = hp(lora=lora(**{field: saved_value}))
    with pytest.raises(LitLoraError, match="^" + re.escape(message)) as err:
        merge_checkpoint_hparams(current, DEFAULTS, saved)
    assert "drop the flag to resume" in str(err.value)


def test_protected_field_against_checkpoint_trained_with_default_value_raises():
    # The checkpoint's r is the default (8); the user typed 16: still a mismatch.
    with pytest.raises(LitLoraError, match=re.escape("--model.lora.r is 16 but the checkpoint was trained with 8")):
        merge_checkpoint_hparams(hp(lora=lora(r=16)), DEFAULTS, hp())


def test_different_model_config_raises():
    with pytest.raises(LitLoraError) as err:
        merge_checkpoint_hparams(hp(model_config={"n_layer": 4}), DEFAULTS, hp(model_config={"n_layer": 2}))
    assert str(err.value) == (
        "--model.model_config is {'n_layer': 4} but the checkpoint was trained with {'n_layer': 2}; "
        "drop the flag to resume, or start a new run without --ckpt_path"
    )


# -- resolve_ckpt_path ----------------------------------------------------------------------------------


def _last(root, version, mtime_ns=None):
    path = root / f"version_{version}" / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def test_last_without_checkpoint_names_the_folder(tmp_path):
    (tmp_path / "lit_lora" / "version_0" / "checkpoints").mkdir(parents=True)  # a run that never saved
    with pytest.raises(LitLoraError) as err:
        resolve_ckpt_path("last", str(tmp_path), "lit_lora")
    assert str(err.value).startswith(f"--ckpt_path last: no last.ckpt under {tmp_path}/lit_lora/version_*/checkpoints")


def test_last_without_log_folder_names_the_folder(tmp_path):
    with pytest.raises(LitLoraError, match=re.escape(f"no last.ckpt under {tmp_path}/nothing_here/version_*")):
        resolve_ckpt_path("last", str(tmp_path), "nothing_here")


@pytest.mark.parametrize("special", ["best", "hpc", "registry"])
def test_lightning_special_names_refused(tmp_path, special):
    with pytest.raises(LitLoraError) as err:
        resolve_ckpt_path(special, str(tmp_path), "lit_lora")
    assert str(err.value) == f"--ckpt_path {special!r} is not supported here; give a checkpoint file or 'last'"


@pytest.mark.parametrize("path", ["run/epoch=1-step=20.ckpt", "/abs/last.ckpt", "does-not-exist.ckpt"])
def test_file_path_returned_as_is(tmp_path, path):
    assert resolve_ckpt_path(path, str(tmp_path), "lit_lora") == (path, False)


def test_last_is_newest_by_mtime_skipping_versions_without_one(tmp_path):
    root = tmp_path / "lit_lora"
    base = 1_700_000_000 * 10**9
    _last(root, 0, base + 3 * 10**9)  # newest last.ckpt, lowest version number
    _last(root, 1, base + 1 * 10**9)
    _last(root, 5, base + 2 * 10**9)  # highest version number with a last.ckpt, but older
    # Newer folders without a last.ckpt: a run starting, a run that stopped before its first save.
    (root / "version_7" / "checkpoints").mkdir(parents=True)
    other = root / "version_8" / "checkpoints" / "epoch=0-step=1.ckpt"
    other.parent.mkdir(parents=True)
    other.write_bytes(b"x")
    os.utime(other, ns=(base + 9 * 10**9,) * 2)
    # Not a version folder: never chosen, even if newest.
    stray = root / "scratch" / "checkpoints" / "last.ckpt"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"x")
    os.utime(stray, ns=(base + 10 * 10**9,) * 2)

    found, was_last = resolve_ckpt_path("last", str(tmp_path), "lit_lora")
    assert (found, was_last) == (str(root / "version_0" / "checkpoints" / "last.ckpt"), True)

    _last(root, 1, base + 4 * 10**9)  # version_1 saves again: now it is the newest
    assert resolve_ckpt_path("last", str(tmp_path), "lit_lora") == (str(root / "version_1" / "checkpoints" / "last.ckpt"), True)


# -- logger_location ------------------------------------------------------------------------------------

TB = "lightning.pytorch.loggers.TensorBoardLogger"
LOGGER_CASES = [
    ("dict", {"class_path": TB, "init_args": {"save_dir": "runs", "name": "exp"}}, ("runs", "exp")),
    ("dict-save-dir-only", {"class_path": TB, "init_args": {"save_dir": "runs"}}, ("runs", "lit_lora")),
    ("dict-name-only", {"class_path": TB, "init_args": {"name": "exp"}}, ("lightning_logs", "exp")),
    ("dict-no-init-args", {"class_path": TB}, ("lightning_logs", "lit_lora")),
    ("dict-init-args-none", {"class_path": TB, "init_args": None}, ("lightning_logs", "lit_lora")),
    ("list-first", [{"class_path": TB, "init_args": {"save_dir": "a", "name": "first"}},
                    {"class_path": TB, "init_args": {"save_dir": "b", "name": "second"}}], ("a", "first")),
    ("empty-list", [], ("lightning_logs", "lit_lora")),
    ("none", None, ("lightning_logs", "lit_lora")),
    ("true", True, ("lightning_logs", "lit_lora")),
    ("false", False, ("lightning_logs", "lit_lora")),
]


@pytest.mark.parametrize("logger,expected", [c[1:] for c in LOGGER_CASES], ids=[c[0] for c in LOGGER_CASES])
def test_logger_location(logger, expected):
    assert logger_location(logger) == expected


# -- what a resume does with each option (RESUME_RULES) ---------------------------------------------------


def test_every_model_option_has_a_resume_rule():
    import dataclasses
    import inspect

    from lit_lora.cli.resume import LORA_RULES, RESUME_RULES
    from lit_lora.lora.settings import LoraSettings
    from lit_lora.training.module import LitLora

    options = [name for name in inspect.signature(LitLora.__init__).parameters if name != "self"]
    assert sorted(options) == sorted(RESUME_RULES)
    assert sorted(f.name for f in dataclasses.fields(LoraSettings)) == sorted(LORA_RULES)


# (option, typed, checkpoint's): another optimizer, another starting adapter, another base
REFUSED_CASES = [
    ("optimizer", "paged_adamw", "adamw"),
    ("adapter_path", "other/adapter", None),
    ("quantization", "nf4", None),
]


@pytest.mark.parametrize("key,typed,saved_value", REFUSED_CASES, ids=[c[0] for c in REFUSED_CASES])
def test_option_a_resume_cannot_honour_is_one_line(key, typed, saved_value):
    defaults = {**DEFAULTS, key: saved_value if saved_value is not None else None}
    with pytest.raises(LitLoraError) as err:
        merge_checkpoint_hparams({**hp(), key: typed}, defaults, {**hp(), key: saved_value})
    assert str(err.value) == (f"--model.{key} is {typed!r} but the checkpoint was trained with {saved_value!r}; "
                              "drop the flag to resume, or start a new run without --ckpt_path")


def test_optimizer_and_schedule_changes_are_said_in_one_line():
    from lit_lora.cli.resume import applied_changes

    saved = hp(weight_decay=0.0, betas=[0.9, 0.999], min_lr_ratio=0.1)
    merged = merge_checkpoint_hparams(hp(learning_rate=0.1, weight_decay=0.01, betas=(0.9, 0.999)),
                                      {**DEFAULTS, "weight_decay": 0.0, "betas": (0.9, 0.999)}, saved)
    assert applied_changes(merged, saved) == (
        "lit_lora: resuming with model.learning_rate 0.1 (was 0.0003), model.weight_decay 0.01 (was 0.0): the "
        "restored optimizer and schedule use them from the next step on"
    )
    assert applied_changes(saved, {**saved, "betas": (0.9, 0.999)}) is None  # YAML lists equal tuples


def test_other_data_is_said_in_one_line(tmp_path, monkeypatch):
    from lit_lora.cli.resume import data_changes

    (tmp_path / "a.txt").write_text("a")
    monkeypatch.chdir(tmp_path)
    saved = {"train_files": str(tmp_path / "a.txt"), "block_size": 32, "batch_size": 4, "cache_dir": "c"}
    same = {**saved, "train_files": "a.txt", "batch_size": 8, "cache_dir": "d"}  # the same file, typed relative
    assert data_changes(same, saved) is None
    assert data_changes(same, None) is None  # a checkpoint without the data's settings
    other = {**saved, "train_files": "b.txt", "block_size": 64}
    assert data_changes(other, saved) == (
        f"lit_lora: resuming on other data than the checkpoint's run: data.train_files 'b.txt' (was "
        f"'{tmp_path / 'a.txt'}'), data.block_size 64 (was 32); training continues at the same sample position "
        "in the new data"
    )
