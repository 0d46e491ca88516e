"""Resume of every kind of run: each family's fit, QLoRA on a 4-bit base, the legacy checkpoint format and a
bf16-mixed GPU run continue from a checkpoint with the uninterrupted run's losses (and weights); a QLoRA
checkpoint resumes only with the quantization it was trained with. The family and QLoRA runs are the
session's (tests/e2e/conftest.py), shared with tests/e2e/test_families.py and tests/e2e/test_qlora.py."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO
from tests.helpers import RUN_BLOCK as BLOCK
from tests.helpers import RUN_SAVE_EVERY as SAVE_EVERY
from tests.helpers import RUN_STEPS as STEPS
from tests.helpers import LEGACY, TRAINED_WITH, assert_resume_repeats, cli_output, gpu_fit, run_cli, scalars


def test_resume_from_a_mid_epoch_checkpoint_repeats_the_same_losses(family):
    assert_resume_repeats(family["root"] / "full", family["root"] / "resumed", SAVE_EVERY, f"step{STEPS:03d}.ckpt")


def test_a_resumed_run_repeats_the_same_losses_on_the_4bit_base(qlora):
    assert_resume_repeats(qlora["root"] / "full", qlora["root"] / "resumed", SAVE_EVERY, f"step{STEPS:03d}.ckpt")


def test_a_checkpoint_resumes_only_with_the_quantization_it_was_trained_with(qlora_gpt2, trained_run, tmp_path):
    from lit_lora.errors import LitLoraError
    from lit_lora.training.module import LitLora

    flags = [f for f in qlora_gpt2["flags"] if f not in ("--model.quantization", "nf4")]
    err = cli_output(tmp_path, "fit", *flags, "--model.quantization", "fp4", "--ckpt_path", str(qlora_gpt2["last"]),
                     code=2)
    assert "--model.quantization is 'fp4' but the checkpoint was trained with 'nf4'" in err
    err = cli_output(tmp_path, "fit", *flags, "--model.quantization_options", '{"bnb_4bit_use_double_quant": true}',
                     "--ckpt_path", str(qlora_gpt2["last"]), code=2)
    assert ("the checkpoint was trained with model.quantization 'nf4', this run has "
            "'nf4, bnb_4bit_use_double_quant=True'") in err
    err = cli_output(tmp_path, "fit", *flags[2:], "--model.model_name_or_path", str(trained_run.base),
                     "--model.quantization", "nf4", "--ckpt_path", str(trained_run.ckpt), code=2)
    assert "--model.quantization is 'nf4' but the checkpoint was trained with None" in err
    # Through the Python API the base is what the caller built: a full-precision one is refused too.
    module = LitLora(model_name_or_path=str(qlora_gpt2["model_dir"]), block_size=BLOCK)
    with pytest.raises(LitLoraError, match=r"trained with model.quantization 'nf4', this run has null"):
        module.on_load_checkpoint(torch.load(qlora_gpt2["last"], weights_only=True))
    err = cli_output(tmp_path, "generate", "--ckpt_path", str(qlora_gpt2["last"]), "--prompt", "x",
                     "--dtype", "bfloat16", code=2)
    assert re.search(r"--dtype bfloat16 converts every weight, but this model's base is quantized", err)


def test_validate_and_resume_from_the_legacy_checkpoint(tmp_path, capsys):
    logs = ["--trainer.logger.init_args.save_dir", str(tmp_path / "logs"), "--data.cache_dir", str(tmp_path / "c")]
    cli = run_cli(["validate", *TRAINED_WITH, *logs, "--ckpt_path", str(LEGACY)], cwd=REPO)
    # val_loss printed by `validate` at commit 60a2c98
    assert float(cli.trainer.callback_metrics["val_loss"]) == pytest.approx(6.278231620788574, abs=1e-5)
    cli = run_cli(["fit", *TRAINED_WITH, *logs, "--ckpt_path", str(LEGACY), "--trainer.max_steps", "6",
                   "--trainer.val_check_interval", "2"], cwd=REPO)
    assert cli.trainer.global_step == 6 and cli.model.lora_settings.r == 4


@pytest.mark.gpu
def test_exact_resume_on_gpu_repeats_the_same_losses(in_tmp, tiny_model_dir, shakespeare):
    saving = ("--checkpoint.every_n_train_steps", "3", "--checkpoint.save_top_k", "-1", "--checkpoint.monitor",
              "null", "--checkpoint.filename", "step{step:03d}", "--trainer.log_every_n_steps", "1",
              "--trainer.max_steps", "6")
    full = gpu_fit(in_tmp / "full", tiny_model_dir, shakespeare, *saving)
    checkpoints = Path("lightning_logs") / "lit_lora" / "version_0" / "checkpoints"
    (in_tmp / "resumed" / checkpoints).mkdir(parents=True)
    shutil.copy(in_tmp / "full" / checkpoints / "step003.ckpt", in_tmp / "resumed" / checkpoints / "last.ckpt")
    resumed = gpu_fit(in_tmp / "resumed", tiny_model_dir, shakespeare, *saving, "--ckpt_path", "last")
    assert resumed.trainer.global_step == full.trainer.global_step == 6
    a = dict(scalars(str(in_tmp / "full" / "lightning_logs"), "train_loss"))
    b = dict(scalars(str(in_tmp / "resumed" / "lightning_logs"), "train_loss"))
    assert all(abs(a[s] - b[s]) <= 1e-5 for s in (3, 4, 5))
