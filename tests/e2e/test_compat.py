"""A checkpoint written by lit_lora before the package was layered (tests/fixtures/legacy-format1.ckpt: the
quickstart at step 4 with LoRA r=4 on c_attn) keeps loading through `--ckpt_path`, `export` and
`generate`, and gives the numbers it gave then."""

from __future__ import annotations

import json

import pytest
import torch

from lit_lora.cli import main
from lit_lora.training.checkpoint_io import load_checkpoint_file
from tests.conftest import REPO
from tests.helpers import run_cli

LEGACY = REPO / "tests" / "fixtures" / "legacy-format1.ckpt"
TOKENIZER = str(REPO / "examples" / "quickstart" / "tokenizer")
# The flags it was trained with, over conf/quickstart.yaml.
TRAINED_WITH = ["--config", str(REPO / "conf" / "quickstart.yaml"), "--model.lora.r", "4", "--model.lora.alpha", "8",
                "--model.lora.target_modules", "[c_attn]", "--trainer.enable_progress_bar", "false",
                "--samples.prompts", "[]"]


def test_generate_from_the_legacy_checkpoint_gives_the_text_it_gave(tmp_path):
    out = tmp_path / "gen.jsonl"
    assert main(["generate", "--ckpt_path", str(LEGACY), "--prompt", "Lena said:", "--temperature", "0",
                 "--max_new_tokens", "12", "--model.tokenizer_name_or_path", TOKENIZER, "--output", str(out)]) == 0
    # Printed by `generate` at commit 60a2c98, before the layout change.
    assert json.loads(out.read_text())["completion"] == "::::::::: old old old"


def test_export_of_the_legacy_checkpoint_holds_its_weights(tmp_path):
    from safetensors.torch import load_file

    assert main(["export", "--ckpt_path", str(LEGACY), "--output_dir", str(tmp_path / "adapter")]) == 0
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    expected = load_checkpoint_file(LEGACY)["state_dict"]
    assert len(saved) == len(expected) == 4
    for key, value in expected.items():
        name = key.removeprefix("model.").replace(".default", "")
        assert torch.equal(saved[name], value)


def test_validate_and_resume_from_the_legacy_checkpoint(tmp_path, capsys):
    logs = ["--trainer.logger.init_args.save_dir", str(tmp_path / "logs"), "--data.cache_dir", str(tmp_path / "c")]
    cli = run_cli(["validate", *TRAINED_WITH, *logs, "--ckpt_path", str(LEGACY)], cwd=REPO)
    # val_loss printed by `validate` at commit 60a2c98
    assert float(cli.trainer.callback_metrics["val_loss"]) == pytest.approx(6.278231620788574, abs=1e-5)
    cli = run_cli(["fit", *TRAINED_WITH, *logs, "--ckpt_path", str(LEGACY), "--trainer.max_steps", "6",
                   "--trainer.val_check_interval", "2"], cwd=REPO)
    assert cli.trainer.global_step == 6 and cli.model.lora_settings.r == 4
