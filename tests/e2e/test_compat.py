"""A checkpoint written by lit_lora before the package was layered (tests/fixtures/legacy-format1.ckpt: the
quickstart at step 4 with LoRA r=4 on c_attn) keeps loading through `--ckpt_path`, `export` and
`generate`, and gives the numbers it gave then (its `validate` and resume: tests/e2e/resume/)."""

from __future__ import annotations

import json

import torch

from lit_lora.cli import main
from lit_lora.training.checkpoint_files import load_checkpoint_file
from tests.helpers import LEGACY, TOKENIZER


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
