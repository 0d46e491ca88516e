"""On a CUDA GPU (skipped without one): a bf16-mixed fit with fused AdamW writes LoRA-only float32
checkpoints, and resuming it continues from the saved step."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import fit_args, run_cli

pytestmark = pytest.mark.gpu


def test_bf16_mixed_fit_keeps_lora_in_float32_and_resumes(in_tmp, tiny_model_dir, shakespeare, capsys):
    gpu = ("--trainer.accelerator", "gpu", "--trainer.devices", "1", "--trainer.precision", "bf16-mixed")
    cli = run_cli(fit_args(tiny_model_dir, shakespeare, in_tmp, *gpu, "--trainer.max_steps", "4"))
    assert "precision bf16-mixed, device cuda" in capsys.readouterr().out
    optimizer = cli.trainer.optimizers[0]
    assert optimizer.defaults["fused"] is True
    last = in_tmp / "lightning_logs/lit_lora/version_0/checkpoints/last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["global_step"] == 4 and all(v.dtype == torch.float32 for v in ckpt["state_dict"].values())
    resumed = run_cli(fit_args(tiny_model_dir, shakespeare, in_tmp, *gpu, "--trainer.max_steps", "6",
                               "--ckpt_path", "last"))
    assert resumed.trainer.global_step == 6
