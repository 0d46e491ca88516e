"""The CLI end to end: a fit on a local model, and --ckpt_path last without a checkpoint."""

from __future__ import annotations

import pytest

from lit_lora.cli import main
from tests.helpers import fit_args, run_cli, scalars


def test_fit_end_to_end_on_local_model(in_tmp, tiny_model_dir, shakespeare, capsys):
    run_cli(fit_args(tiny_model_dir, shakespeare, in_tmp, "--trainer.max_steps", "12",
                     "--trainer.val_check_interval", "6", "--model.learning_rate", "3e-3"))
    out = capsys.readouterr().err
    assert "lit_lora: " in out and "trainable" in out
    run_dir = in_tmp / "lightning_logs" / "lit_lora" / "version_0"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "config.yaml").is_file()
    val = scalars(str(run_dir), "val_loss")
    ppl = scalars(str(run_dir), "val_ppl")
    assert [s for s, _ in val] == [0, 5, 11] and val[2][1] < val[1][1] < val[0][1]  # step 0: the base
    assert ppl[-1][1] == pytest.approx(2.718281828 ** val[-1][1], rel=1e-4)
    assert len(scalars(str(run_dir), "train_loss")) == 12
    assert scalars(str(run_dir), "lr-AdamW")


def test_ckpt_path_last_without_checkpoint_is_an_error(in_tmp, tiny_model_dir, shakespeare, capsys):
    code = main(fit_args(tiny_model_dir, shakespeare, in_tmp, "--ckpt_path", "last"))
    assert code == 2
    assert "no last.ckpt under lightning_logs/lit_lora/version_*/checkpoints" in capsys.readouterr().err
