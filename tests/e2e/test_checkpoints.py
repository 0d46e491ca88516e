"""LoRA-only checkpoints, export to PEFT, merge, start-from-adapter, and checkpoint/flag conflicts."""

from __future__ import annotations

import errno
import json
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from lit_lora.cli import main
from lit_lora.errors import LitLoraError
from lit_lora.loading import module_from_checkpoint
from lit_lora.lora.export import export_adapter, merge_to_dir
from lit_lora.training.module import LitLora
from tests.conftest import QUICKSTART
from tests.helpers import fit_args, run_cli, scalars

IDS = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 8, 300, 11]])


@pytest.fixture(scope="module")
def trained(trained_run):
    return trained_run


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


def test_checkpoint_is_lora_only_and_weights_only_loadable(trained):
    ckpt = torch.load(trained.ckpt, weights_only=True)
    assert ckpt["state_dict"] and all("lora_" in k for k in ckpt["state_dict"])
    assert ckpt["optimizer_states"] and ckpt["lr_schedulers"] and ckpt["loops"]["fit_loop"]
    callbacks = " ".join(ckpt["callbacks"])
    assert "EarlyStopping" in callbacks and "RunCheckpoint" in callbacks
    assert ckpt["LitLoraData"]["batches_done"] == 8 and ckpt["LitLoraData"]["seed"] == 42
    assert set(ckpt["lit_lora"]["rng"]) >= {"torch", "python"} and ckpt["lit_lora"]["seed"] == 1234
    assert ckpt["lit_lora"]["schedule_steps"] == 8  # the learning-rate schedule's length (max_steps)
    assert ckpt["hyper_parameters"]["lora"]["r"] == 8
    assert any(torch.count_nonzero(v) for k, v in ckpt["state_dict"].items() if "lora_B" in k)


def test_gpt2_small_checkpoint_is_megabytes(in_tmp, shakespeare, capsys):
    run_cli(["fit", "--model.model_config", "{}", "--model.tokenizer_name_or_path", str(QUICKSTART / "tokenizer"),
             "--data.train_files", str(shakespeare), "--data.block_size", "8", "--data.batch_size", "1",
             "--data.val_fraction", "0", "--data.cache_dir", str(in_tmp / "c"), "--model.gradient_checkpointing",
             "false", "--trainer.max_steps", "1", "--trainer.enable_progress_bar", "false",
             "--trainer.enable_model_summary", "false"])
    out = capsys.readouterr().err
    assert "811,008 trainable" in out and "LoRA-only: 811,008 weights" in out
    size = (in_tmp / "lightning_logs/lit_lora/version_0/checkpoints/last.ckpt").stat().st_size
    assert size <= 10.5e6, size  # weights + two AdamW moments in fp32: ~9.7 MB, not 500 MB


def test_export_loads_in_plain_peft_with_same_logits(trained, tiny_model_dir, tmp_path):
    from peft import PeftModel

    ours = module_from_checkpoint(str(trained.ckpt)).module
    base_logits = _logits(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    our_logits = _logits(ours.model)
    assert (our_logits - base_logits).abs().max() > 1e-3, "the adapter must have learned something"
    assert main(["export", "--ckpt_path", str(trained.ckpt), "--output_dir", str(tmp_path / "adapter")]) == 0
    files = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md"} <= files
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model_dir) and config["r"] == 8
    card = (tmp_path / "adapter" / "README.md").read_text()
    assert "fingerprint" in card and "r=8" in card and "Steps: 8" in card and "val_loss" in card
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "adapter")
    peft_model.eval()
    assert (_logits(peft_model) - our_logits).abs().max() <= 1e-5
    # fit already exported the best checkpoint next to its logs, its weights and not the last ones
    (best,) = (trained.run / "checkpoints").glob("step*.ckpt")
    best_weights = torch.load(best, weights_only=True)["state_dict"]
    fit_export = load_file(trained.run / "adapter" / "adapter_model.safetensors")
    assert set(fit_export) == {k.removeprefix("model.").replace(".default.", ".") for k in best_weights}
    assert all(torch.equal(fit_export[k.removeprefix("model.").replace(".default.", ".")], v)
               for k, v in best_weights.items())
    assert f"Steps: {int(best.name[4:10])}" in (trained.run / "adapter" / "README.md").read_text()


def test_merge_gives_plain_transformers_model(trained, tmp_path):
    ours = module_from_checkpoint(str(trained.ckpt)).module
    expected = _logits(ours.model)
    assert main(["merge", "--ckpt_path", str(trained.ckpt), "--output_dir", str(tmp_path / "merged")]) == 0
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert type(merged).__name__ == "GPT2LMHeadModel"
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert (_logits(merged.eval()) - expected).abs().max() <= 1e-4
    assert (tmp_path / "merged" / "tokenizer_config.json").is_file()


def test_start_training_from_an_adapter_dir(trained, tiny_model_dir, tmp_path):
    ours = module_from_checkpoint(str(trained.ckpt)).module
    export_adapter(ours, str(tmp_path / "a"))
    started = LitLora(model_name_or_path=str(tiny_model_dir), adapter_path=str(tmp_path / "a"), block_size=32)
    got, want = started.trainable_state_dict(), ours.trainable_state_dict()
    assert got.keys() == want.keys() and got
    assert all(torch.equal(got[k], want[k]) for k in got)
    assert all(p.requires_grad for n, p in started.model.named_parameters() if "lora_" in n)
    with pytest.raises(LitLoraError, match="not a PEFT adapter directory"):
        LitLora(model_name_or_path=str(tiny_model_dir), adapter_path=str(tmp_path), block_size=32)


def test_merge_and_export_folders_appear_whole(trained, tmp_path, monkeypatch):
    ours = module_from_checkpoint(str(trained.ckpt)).module
    out = tmp_path / "adapter"
    export_adapter(ours, str(out))
    before = sorted(p.name for p in out.iterdir())

    def disk_full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    # Fails after the weights are already in the temporary folder, as a full disk would.
    monkeypatch.setattr("lit_lora.lora.export.model_card", disk_full)
    with pytest.raises(LitLoraError, match="No space left on device"):
        merge_to_dir(module_from_checkpoint(str(trained.ckpt)).module, str(tmp_path / "merged"))
    with pytest.raises(LitLoraError, match="nothing was changed"):
        export_adapter(ours, str(out), overwrite=True)
    assert not (tmp_path / "merged").exists()
    assert sorted(p.name for p in out.iterdir()) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_bad_checkpoint_files_are_one_line_errors(trained, tiny_model_dir, shakespeare, tmp_path, capsys):
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(trained.ckpt.read_bytes()[:1000])
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    for path, message in ((truncated, "cannot be read (truncated"), (foreign, "was not written by lit_lora"),
                          (tmp_path / "missing.ckpt", "does not exist")):
        assert main(fit_args(tiny_model_dir, shakespeare, tmp_path, "--ckpt_path", str(path))) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and str(path) in err and len(err.splitlines()) == 1


def test_conflicting_lora_flag_stops_but_max_steps_is_honoured(trained, tiny_model_dir, shakespeare, tmp_path,
                                                                capsys):
    tmp = tmp_path  # a copy: the shared run stays as it was
    shutil.copy(trained.ckpt, tmp / "last.ckpt")
    args = fit_args(tiny_model_dir, shakespeare, tmp, "--ckpt_path", str(tmp / "last.ckpt"))
    assert main(args + ["--model.lora.r", "16"]) == 2
    assert "--model.lora.r is 16 but the checkpoint was trained with 8" in capsys.readouterr().err
    cli = run_cli(args + ["--trainer.max_steps", "10", "--model.learning_rate", "1e-3",
                          "--trainer.val_check_interval", "4", "--data.block_size", "16"], cwd=tmp)
    assert cli.trainer.global_step == 10 and cli.model.hparams.learning_rate == 1e-3
    assert cli.model.lora_settings.r == 8
    out = capsys.readouterr().err
    # The schedule keeps the 8 steps it started with (it ended there: the floor), and the step-0 validation
    # was the first run's, not repeated.
    assert "lit_lora: the learning-rate schedule keeps the 8 steps the run started with (these settings plan 10)" in out
    assert "at step 0" not in out
    # The same file (typed as the first run typed it), in blocks of another size: that, and only that, is said.
    assert ("lit_lora: resuming on other data than the checkpoint's run: data.block_size 16 (was 32); training "
            "continues at the same sample position in the new data") in out.splitlines()
    (written,) = (tmp / "lightning_logs").rglob("last.ckpt")
    assert torch.load(written, weights_only=True)["lit_lora"]["schedule_steps"] == 8
    # The rate in use is the recorded one (the restored optimizer and schedule took it, and said so): steps
    # 9 and 10 are on the schedule's floor, min_lr_ratio times the new peak, not the checkpoint's 2e-2.
    assert ("lit_lora: resuming with model.learning_rate 0.001 (was 0.02): the restored optimizer and schedule use "
            "them from the next step on") in out
    recorded = yaml.safe_load((written.parent.parent / "hparams.yaml").read_text())
    floor = recorded["learning_rate"] * recorded["min_lr_ratio"]
    assert recorded["learning_rate"] == 1e-3
    rates = [rate for _, rate in scalars(str(tmp / "lightning_logs"), "lr-AdamW")]
    assert len(rates) == 2 and all(rate == pytest.approx(floor) for rate in rates), rates
    assert cli.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(floor)


def test_the_data_of_a_run_from_a_checkpoint_uses_the_checkpoints_tokenizer(trained, shakespeare, tmp_path):
    """No --model.* flag: the model options come from the checkpoint, and the data options linked to them
    (the tokenizer, trust_remote_code) follow; they used to keep the defaults' `gpt2`."""
    cli = run_cli(["validate", "--ckpt_path", str(trained.ckpt), "--data.val_files", str(shakespeare),
                   "--data.block_size", "32", "--data.cache_dir", str(tmp_path / "c"),
                   "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"),
                   "--trainer.enable_progress_bar", "false"])
    assert cli.datamodule.tokenizer_name_or_path == str(trained.base)
    assert float(cli.trainer.callback_metrics["val_loss"]) > 0
