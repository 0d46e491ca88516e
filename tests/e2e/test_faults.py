"""Faults: non-finite loss, signals, unwritable folders, untrusted files. Each asserts the message the user
sees and that earlier checkpoints are intact."""

from __future__ import annotations

import inspect
import os
import re
import signal

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from lit_lora.cli import main
from lit_lora.training.module import LitLora
from tests.helpers import fit_args, run_cli, scalars


@pytest.mark.parametrize("defer", [False, True], ids=["checked-at-once", "checked-before-saving"])
def test_non_finite_loss_stops_without_overwriting_last_checkpoint(in_tmp, tiny_model_dir, shakespeare, capsys,
                                                                   defer):
    extra = ["--trainer.callbacks+=tests.helpers.DeferFiniteCheck"] if defer else []
    args = fit_args(tiny_model_dir, shakespeare, in_tmp, "--trainer.max_steps", "8", "--trainer.log_every_n_steps",
                    "5", "--checkpoint.every_n_train_steps", "1", "--checkpoint.save_on_exception", "true",
                    "--trainer.callbacks+=tests.helpers.Poison", "--trainer.callbacks.at_step", "3", *extra)
    assert main(args) == 2
    err = capsys.readouterr().err
    when = "noticed after step 4 and stopped before saving a checkpoint" if defer else "stopped before updating weights"
    assert re.search(rf"lit_lora: error: non-finite training loss \(nan\) at step 4 \(learning rate 0\.00\d+\); {when}\.", err)
    last = in_tmp / "lightning_logs/lit_lora/version_0/checkpoints/last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
    assert not list(last.parent.glob("*exception*")) and not list(last.parent.glob(".*tmp*"))


class SigintInValidation(Callback):
    """Test callback: Ctrl-C (SIGINT to this process) while the validation after step `at_step` runs its
    first batch; counts the validation and training batches that start afterwards."""

    last = None  # the instance the CLI built

    def __init__(self, at_step: int) -> None:
        self.at_step, self.sent, self.after = at_step, False, []
        SigintInValidation.last = self

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self.sent:
            self.after.append(("val", batch_idx))
        elif trainer.global_step == self.at_step and not trainer.sanity_checking:
            self.sent = True
            os.kill(os.getpid(), signal.SIGINT)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.sent:
            self.after.append(("train", trainer.global_step))


def test_ctrl_c_during_validation_stops_within_the_batch_and_saves(in_tmp, tiny_model_dir, shakespeare, capsys):
    args = fit_args(tiny_model_dir, shakespeare, in_tmp, "--trainer.max_steps", "6",
                    "--trainer.val_check_interval", "2", "--trainer.num_sanity_val_steps", "0",
                    "--trainer.limit_val_batches", "3")
    assert main([*args, "--trainer.callbacks+=tests.e2e.test_faults.SigintInValidation",
                 "--trainer.callbacks.at_step", "2"]) == 0
    out = capsys.readouterr().err
    stopper = SigintInValidation.last
    assert stopper.sent and stopper.after == []  # no other validation batch, no training step after Ctrl-C
    assert "lit_lora: received SIGINT; stopping after the current batch" in out
    run = in_tmp / "lightning_logs/lit_lora/version_0"
    (saved,) = [line for line in out.splitlines() if line.startswith("lit_lora: received SIGINT; saved")]
    assert saved.endswith("checkpoints/last.ckpt at step 2. Resume with --ckpt_path last"), saved
    assert "exported" not in out
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt"]
    assert torch.load(run / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 2
    # It resumes from there, skipping the interrupted validation, and validates at the next interval.
    cli = run_cli([*args, "--ckpt_path", "last"], cwd=in_tmp)
    assert cli.trainer.global_step == 6
    # The validations after steps 4 and 6 (Lightning logs them at the step index before: 3 and 5), once each.
    assert [step for step, _ in scalars(str(run), "val_loss")] == [3, 5]
    assert [step for step, _ in scalars(str(run), "train_loss")] == list(range(6))


def test_unwritable_log_directory_is_reported(in_tmp, tiny_model_dir, shakespeare, capsys):
    (in_tmp / "afile").write_text("not a directory")
    args = fit_args(tiny_model_dir, shakespeare, in_tmp, "--trainer.max_steps", "1",
                    "--trainer.logger.init_args.save_dir", str(in_tmp / "afile" / "logs"))
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "lit_lora: error: log directory" in err and "afile" in err and "not writable" in err


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_checkpoints_never_unpickle_code(tmp_path, tiny_model_dir, shakespeare, capsys):
    evil = tmp_path / "evil.ckpt"
    torch.save({"lit_lora": {"format": 1}, "state_dict": {}, "payload": _Payload()}, evil)
    assert main(fit_args(tiny_model_dir, shakespeare, tmp_path, "--ckpt_path", str(evil))) == 2
    captured = capsys.readouterr()
    assert "cannot be read" in captured.err and "pwned" not in captured.out


def test_remote_code_is_off_by_default():
    assert inspect.signature(LitLora).parameters["trust_remote_code"].default is False


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model.lora.rr", "3"], "unrecognized arguments: --model.lora.rr 3"),
        (["--data.block_size", "4096"], "data.block_size=4096 is larger than the model's context of 128 tokens"),
        (["--model.lora.r", "0"], "model.lora.r must be a positive integer, got 0"),
        (["--model.model_name_or_path", "no-such-org/no-such-model"],
         "'no-such-org/no-such-model' is neither a local directory nor loadable from the hub: the Hugging Face hub "
         "is unreachable"),
        (["--model.lora.target_modules", "[q_proj]"], "match no module of the model; its linear/Conv1D module names"),
    ],
    ids=["unknown-key", "block-size", "rank", "unreachable-model", "targets"],
)
def test_bad_options_are_one_line_errors_before_training(in_tmp, tiny_model_dir, shakespeare, capsys, extra, message):
    assert main(fit_args(tiny_model_dir, shakespeare, in_tmp, *extra)) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lit_lora: error:")]
    assert len(err) == 1 and message in err[0], err
    assert not (in_tmp / "lightning_logs").exists()  # stopped before any training or logging
