"""On a CUDA GPU (skipped without one; benchmarks/gpu_check.py runs them): a bf16-mixed fit with fused
AdamW writes LoRA-only float32 checkpoints and resumes (exactly: tests/e2e/resume/), CUDA memory and MFU tags, `--model.compile`,
FSDP on one GPU, Liger's fused loss against the chunked one, QLoRA with paged AdamW, and the peak allocated
against the estimate."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from tests.helpers import fit_args, gpu_fit, run_cli

pytestmark = pytest.mark.gpu


def test_bf16_mixed_fit_keeps_lora_in_float32_and_resumes(in_tmp, tiny_model_dir, shakespeare, capsys):
    gpu = ("--trainer.accelerator", "gpu", "--trainer.devices", "1", "--trainer.precision", "bf16-mixed")
    cli = run_cli(fit_args(tiny_model_dir, shakespeare, in_tmp, *gpu, "--trainer.max_steps", "4"))
    assert "precision bf16-mixed, device cuda" in capsys.readouterr().err
    optimizer = cli.trainer.optimizers[0]
    assert optimizer.defaults["fused"] is True
    last = in_tmp / "lightning_logs/lit_lora/version_0/checkpoints/last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["global_step"] == 4 and all(v.dtype == torch.float32 for v in ckpt["state_dict"].values())
    resumed = run_cli(fit_args(tiny_model_dir, shakespeare, in_tmp, *gpu, "--trainer.max_steps", "6",
                               "--ckpt_path", "last"))
    assert resumed.trainer.global_step == 6


def test_qlora_on_gpu_moves_the_4bit_base_trains_with_paged_adamw_and_resumes(in_tmp, tiny_model_dir, shakespeare):
    """The 4-bit base is quantized on the CPU as it loads and moved by Lightning; paged AdamW steps it."""
    pytest.importorskip("bitsandbytes")
    from tests.helpers import scalars

    qlora = ("--model.quantization", "nf4", "--model.quantization_options", '{"bnb_4bit_compute_dtype": "bfloat16"}',
             "--model.optimizer", "paged_adamw", "--checkpoint.every_n_train_steps", "2", "--checkpoint.save_top_k",
             "-1", "--checkpoint.monitor", "null", "--checkpoint.filename", "step{step:03d}",
             "--trainer.log_every_n_steps", "1", "--trainer.max_steps", "4")
    full = gpu_fit(in_tmp / "full", tiny_model_dir, shakespeare, *qlora)
    layers = [m for m in full.model.model.modules() if type(m).__name__ == "Linear4bit"]
    assert layers and all(m.weight.device.type == "cuda" and m.weight.quant_state.absmax.is_cuda for m in layers)
    assert type(full.trainer.optimizers[0]).__name__ == "PagedAdamW"
    checkpoints = Path("lightning_logs") / "lit_lora" / "version_0" / "checkpoints"
    (in_tmp / "resumed" / checkpoints).mkdir(parents=True)
    shutil.copy(in_tmp / "full" / checkpoints / "step002.ckpt", in_tmp / "resumed" / checkpoints / "last.ckpt")
    gpu_fit(in_tmp / "resumed", tiny_model_dir, shakespeare, *qlora, "--ckpt_path", "last")
    a = dict(scalars(str(in_tmp / "full" / "lightning_logs"), "train_loss"))
    b = dict(scalars(str(in_tmp / "resumed" / "lightning_logs"), "train_loss"))
    assert all(abs(a[s] - b[s]) <= 1e-5 for s in (2, 3))


def test_cuda_memory_and_mfu_tags_are_logged(in_tmp, tiny_model_dir, shakespeare):
    from tests.helpers import scalars

    gpu_fit(in_tmp, tiny_model_dir, shakespeare, "--trainer.max_steps", "6")
    logs = str(in_tmp / "lightning_logs")  # run_cli ran there
    for tag in ("memory/allocated_mb", "memory/peak_allocated_mb", "memory/reserved_mb", "memory/free_mb"):
        assert scalars(logs, tag) and all(v > 0 for _, v in scalars(logs, tag)), tag
    mfu = scalars(logs, "throughput/mfu")
    assert mfu and all(0 < v < 1 for _, v in mfu)


def test_compile_trains_on_gpu(in_tmp, tiny_model_dir, shakespeare):
    cli = gpu_fit(in_tmp, tiny_model_dir, shakespeare, "--trainer.max_steps", "3", "--model.compile", "true")
    from lit_lora.training.speed import compile_target, is_compiled

    assert is_compiled(compile_target(cli.model.model)) and cli.trainer.global_step == 3


def test_fsdp_on_one_gpu_trains_and_saves_lora_only(in_tmp, tiny_model_dir, shakespeare):
    cli = gpu_fit(in_tmp, tiny_model_dir, shakespeare, "--trainer.max_steps", "3", "--trainer.strategy", "fsdp")
    ckpt = torch.load(cli.trainer.checkpoint_callback.last_model_path, weights_only=True)
    assert ckpt["global_step"] == 3 and set(ckpt["state_dict"]) == cli.model.trainable_keys()


def test_liger_fused_loss_equals_the_chunked_loss():
    pytest.importorskip("liger_kernel")
    from lit_lora.objectives.nll import chunked_head_nll

    torch.manual_seed(0)
    head = torch.nn.Linear(64, 1000, bias=False, device="cuda")
    labels = torch.randint(0, 1000, (4, 300), device="cuda")
    labels[0, :50] = -100
    results = []
    for fused in (False, True):
        hidden = torch.randn(4, 300, 64, device="cuda", generator=torch.Generator("cuda").manual_seed(1),
                             requires_grad=True)
        head.zero_grad()
        nll, n = chunked_head_nll(hidden, head, labels, fused=fused)
        (nll / n).backward()
        results.append((nll.item() / n.item(), hidden.grad.clone(), head.weight.grad.clone()))
    (loss, gh, gw), (fused_loss, fgh, fgw) = results
    assert fused_loss == pytest.approx(loss, abs=1e-4)
    assert (gh - fgh).abs().max().item() <= 1e-4 and (gw - fgw).abs().max().item() <= 1e-4


def test_peak_allocated_is_near_the_estimate(tiny_model_dir):
    from lit_lora.estimate.memory import estimate_training_memory
    from lit_lora.training.module import LitLora

    module = LitLora(model_name_or_path=str(tiny_model_dir), block_size=64, gradient_checkpointing=True).cuda()
    module.train()
    estimate = estimate_training_memory(module.model, 8, 64, "bf16-mixed", True, "cuda")
    ids = torch.randint(3, 500, (8, 64), device="cuda")
    torch.cuda.reset_peak_memory_stats()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        nll, n = module.objective.nll(module.model, {"input_ids": ids, "labels": ids, "attention_mask": torch.ones_like(ids)})
    (nll / n).backward()
    measured = torch.cuda.max_memory_allocated()
    assert measured == pytest.approx(estimate.weights + estimate.gradients + estimate.activations, rel=0.25)
