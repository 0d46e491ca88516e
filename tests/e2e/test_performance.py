"""The GPU path's speed-ups, checked where a CPU can check them: no host-device synchronisation per step
beyond the model's own, opt-in torch.compile with unchanged checkpoint keys, TF32 only where it exists."""

from __future__ import annotations


import pytest
import torch

from lit_lora.cli import main
from lit_lora.training.module import LitLora
from lit_lora.training.speed import compile_target, is_compiled
from tests.conftest import QUICKSTART, save_tiny_gpt2
from tests.helpers import CountHostReads, HostReads, fit_args, run_cli


def test_training_steps_read_nothing_from_the_device_beyond_the_model_itself(in_tmp, tiny_model_dir, shakespeare):
    # The GPU path of the non-finite loss check (DeferFiniteCheck), progress bar on, logging every 4 steps,
    # checkpoints every 6.
    cli = run_cli(fit_args(tiny_model_dir, shakespeare, in_tmp, "--trainer.max_steps", "13",
                           "--trainer.log_every_n_steps", "4", "--trainer.enable_progress_bar", "true",
                           "--checkpoint.every_n_train_steps", "6",
                           "--trainer.callbacks+=tests.helpers.CountHostReads",
                           "--trainer.callbacks+=tests.helpers.DeferFiniteCheck"))
    per_step = next(c for c in cli.trainer.callbacks if isinstance(c, CountHostReads)).per_step
    # What the model's own forward + backward reads on a batch (transformers' mask preparation reads one
    # value per forward in eager mode; a plain PyTorch loop pays it too).
    module = cli.model
    batch = next(iter(cli.datamodule.train_dataloader()))
    with HostReads() as own:
        nll, n = module.objective.nll(module.model, batch)
        (nll / n).backward()
    quiet = [s for s in range(1, 13) if s % 4 and s % 6]
    assert {s: per_step[s] for s in quiet} == {s: own.count for s in quiet}
    # Logging and checkpoint steps read the loss (and check it) once there.
    assert all(per_step[s] > own.count for s in (4, 6, 8, 12))


def _lora_weights(cli) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in cli.model.trainable_state_dict().items()}


@pytest.mark.slow
def test_compile_is_opt_in_and_keeps_checkpoint_keys(in_tmp, shakespeare):
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    # Without dropout, so both runs must compute the same numbers (dynamo draws dropout masks differently).
    tiny_model_dir = save_tiny_gpt2(in_tmp / "no-dropout", QUICKSTART / "tokenizer", resid_pdrop=0.0,
                                    embd_pdrop=0.0, attn_pdrop=0.0)
    common = ("--trainer.max_steps", "3", "--model.lora.dropout", "0")
    plain = run_cli(fit_args(tiny_model_dir, shakespeare, in_tmp / "plain", *common,
                             "--trainer.default_root_dir", str(in_tmp / "plain")))
    assert not is_compiled(compile_target(plain.model.model))
    # The "eager" backend runs dynamo's captured graphs without generating code: the same maths, seconds to
    # compile on a CPU (inductor, the default, takes minutes here).
    compiled = run_cli(fit_args(tiny_model_dir, shakespeare, in_tmp / "compiled", *common,
                                "--model.compile", "true", "--model.compile_options", '{"backend": "eager"}',
                                "--trainer.logger.init_args.save_dir", str(in_tmp / "compiled" / "lightning_logs")))
    assert is_compiled(compile_target(compiled.model.model))  # the backbone the chunked loss calls
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0
    ckpt_path = compiled.trainer.checkpoint_callback.last_model_path
    ckpt = torch.load(ckpt_path, weights_only=True)
    assert set(ckpt["state_dict"]) == plain.model.trainable_keys()
    assert not any("_orig_mod" in k for k in ckpt["state_dict"])
    # Same seed, same data, same maths.
    a, b = _lora_weights(plain), _lora_weights(compiled)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    # The compiled run's checkpoint loads into an uncompiled module for export/generate.
    reloaded = LitLora.load_from_checkpoint(ckpt_path, weights_only=True)
    assert not is_compiled(compile_target(reloaded.model))


def test_bad_compile_options_are_one_line_errors(in_tmp, tiny_model_dir, shakespeare, capsys):
    args = fit_args(tiny_model_dir, shakespeare, in_tmp, "--model.compile", "true",
                    "--model.compile_options", '{"mode": "fastest"}')
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lit_lora: error: model.compile_options={'mode': 'fastest'} rejected by torch.compile: ")
    assert "Unrecognized mode=fastest" in err[-1]
