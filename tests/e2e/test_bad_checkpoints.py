"""Checkpoints that load with weights_only but do not fit: each is one line (exit 2) in fit, export, merge and
generate, never a traceback, a silent swap of the base model, or an exported NaN. Built by editing the
committed legacy checkpoint (tests/fixtures), which rebuilds its base in a second."""

from __future__ import annotations

import pytest
import torch

from lit_lora.cli import main
from tests.conftest import REPO
from tests.helpers import LEGACY, TOKENIZER, TRAINED_WITH, fit_args


def _edited(tmp_path, edit) -> str:
    ckpt = torch.load(LEGACY, weights_only=True)
    edit(ckpt)
    path = tmp_path / "edited.ckpt"
    torch.save(ckpt, path)
    return str(path)


def _wrong_shape(ckpt):
    key = next(k for k in ckpt["state_dict"] if "lora_A" in k)
    ckpt["state_dict"][key] = torch.zeros(3, 5)


def _nan(ckpt):
    key = next(k for k in ckpt["state_dict"] if "lora_B" in k)
    ckpt["state_dict"][key] = torch.full_like(ckpt["state_dict"][key], float("nan"))


EDITS = {
    "wrong-shape": (_wrong_shape, "has shape (3, 5), this model's (4, 128)"),
    "lit_lora-not-a-mapping": (lambda c: c.update(lit_lora=1), "its 'lit_lora' section is a int, expected a mapping"),
    "hparams-not-a-mapping": (lambda c: c.update(hyper_parameters=[1, 2]),
                              "its 'hyper_parameters' section is a list, expected a mapping"),
    "tensor-not-a-tensor": (lambda c: c["state_dict"].update({"model.x": [1.0]}), "entry 'model.x' is not a tensor"),
}


def _commands(ckpt: str, tmp_path) -> dict[str, list[str]]:
    return {
        "fit": ["fit", *TRAINED_WITH, "--ckpt_path", ckpt, "--trainer.max_steps", "6", "--data.cache_dir",
                str(tmp_path / "c"), "--trainer.logger.init_args.save_dir", str(tmp_path / "logs")],
        "export": ["export", "--ckpt_path", ckpt, "--output_dir", str(tmp_path / "adapter")],
        "merge": ["merge", "--ckpt_path", ckpt, "--output_dir", str(tmp_path / "merged")],
        "generate": ["generate", "--ckpt_path", ckpt, "--prompt", "A", "--max_new_tokens", "2",
                     "--model.tokenizer_name_or_path", TOKENIZER],
    }


def _one_line_error(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lit_lora: error:")]
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("edit", list(EDITS))
@pytest.mark.parametrize("command", ["fit", "export", "merge", "generate"])
def test_malformed_checkpoints_are_one_line_errors_everywhere(tmp_path, capsys, monkeypatch, edit, command):
    monkeypatch.chdir(REPO)  # the quickstart config's relative paths
    change, message = EDITS[edit]
    ckpt = _edited(tmp_path, change)
    assert main(_commands(ckpt, tmp_path)[command]) == 2
    assert message in _one_line_error(capsys)
    assert not (tmp_path / "adapter").exists() and not (tmp_path / "merged").exists()


def test_a_checkpoint_without_optimizer_state_cannot_resume(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    ckpt = _edited(tmp_path, lambda c: c.pop("optimizer_states"))
    assert main(_commands(ckpt, tmp_path)["fit"]) == 2
    assert "cannot resume training: it has no optimizer_states" in _one_line_error(capsys)
    assert main(_commands(ckpt, tmp_path)["export"]) == 0  # its weights are fine to export
    assert main(["summary", *TRAINED_WITH, "--ckpt_path", ckpt]) == 0  # and summary resumes nothing


@pytest.mark.parametrize("command", ["export", "merge"])
def test_export_and_merge_refuse_non_finite_weights(tmp_path, capsys, monkeypatch, command):
    monkeypatch.chdir(REPO)
    ckpt = _edited(tmp_path, _nan)
    assert main(_commands(ckpt, tmp_path)[command]) == 2
    assert "LoRA tensors hold NaN or Inf values" in _one_line_error(capsys)
    assert not (tmp_path / "adapter").exists() and not (tmp_path / "merged").exists()


def test_a_typed_base_wins_over_the_checkpoints_random_init_shape(tmp_path, capsys, tiny_model_dir, shakespeare):
    """The legacy run was a random-init base (model_config). Resuming it with a pretrained model's folder
    used to take the checkpoint's model_config silently and crash with IndexError; the typed base now wins,
    and its weights do not fit the checkpoint: one line."""
    args = fit_args(tiny_model_dir, shakespeare, tmp_path, "--ckpt_path", str(LEGACY), "--trainer.max_steps", "6",
                    "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"))
    assert main(args) == 2
    line = _one_line_error(capsys)
    assert "this model's (4, 64)" in line, line  # the typed 64-wide model was built, not the 128-wide one
