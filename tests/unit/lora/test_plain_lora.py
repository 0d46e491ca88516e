"""Export writes every adapter as plain LoRA with the same outputs in PEFT: rsLoRA's scale folded into
alpha (rank and alpha patterns too), and PiSSA/OLoRA adapters converted for the original base weights they
changed. A 2-layer, 32-wide Llama builds and exports in about a second."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from lit_lora.lora import LoraSettings
from lit_lora.lora.build import ModelSettings, build_peft_model
from lit_lora.lora.export import export_adapter

IDS = torch.tensor([[1, 5, 17, 42, 3, 60, 7, 8]])
TARGETS = ["q_proj", "v_proj", "down_proj"]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=64)
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(path)
    # What transformers before 5 wrote for a model loaded from the hub: export names the base by this id.
    saved = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**saved, "_name_or_path": "org/tiny-llama"}))
    return path


def _trained(llama_dir, **lora):
    """A module as export reads it, its LoRA weights moved off their init as training would."""
    model, _, _, initial = build_peft_model(ModelSettings(
        model_name_or_path=str(llama_dir), model_config=None, base_dtype=None, attn_implementation=None,
        trust_remote_code=False, quantization=None, quantization_options=None, adapter_path=None,
        gradient_checkpointing=False, lora=LoraSettings(target_modules=TARGETS, dropout=0.0, **lora)))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    hparams = {"model_name_or_path": str(llama_dir), "lora": lora}
    return SimpleNamespace(model=model.eval(), hparams=hparams, base_fingerprint=lambda: "fp", initial_lora=initial)


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


def _served(llama_dir, folder) -> torch.Tensor:
    """The exported adapter's logits on a freshly loaded, unchanged base, as any PEFT user loads it."""
    from peft import PeftModel

    return _logits(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(llama_dir), folder).eval())


def test_rslora_is_written_with_its_scale_in_alpha(llama_dir, tmp_path):
    module = _trained(llama_dir, r=4, alpha=8, use_rslora=True)
    want = _logits(module.model)
    export_adapter(module, str(tmp_path / "a"))
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert config["use_rslora"] is False and config["r"] == 4 and config["lora_alpha"] == pytest.approx(8 * math.sqrt(4))
    assert config["base_model_name_or_path"] == "org/tiny-llama"
    assert json.loads((tmp_path / "a" / "lit_lora.json").read_text())["base_model"] == str(llama_dir)
    assert (_served(llama_dir, tmp_path / "a") - want).abs().max() <= 1e-6
    # What llama.cpp makes of the unfolded adapter (alpha 8 / r 4, not 8 / sqrt(4)) answers differently.
    config["lora_alpha"] = 8
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps(config))
    assert (_served(llama_dir, tmp_path / "a") - want).abs().max() > 1e-3


def test_rank_and_alpha_patterns_become_one_rank_and_one_scale(llama_dir, tmp_path):
    module = _trained(llama_dir, r=4, alpha=8, use_rslora=True,
                      extra={"rank_pattern": {"q_proj": 8}, "alpha_pattern": {"v_proj": 3}})
    want = _logits(module.model)
    export_adapter(module, str(tmp_path / "a"))
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert (config["r"], config["use_rslora"], config["rank_pattern"], config["alpha_pattern"]) == (8, False, {}, {})
    weights = load_file(tmp_path / "a" / "adapter_model.safetensors")
    assert {tuple(v.shape) for k, v in weights.items() if "v_proj.lora_A" in k} == {(8, 32)}  # zero rows added
    assert (_served(llama_dir, tmp_path / "a") - want).abs().max() <= 1e-5


def test_plain_lora_is_written_as_peft_saves_it(llama_dir, tmp_path):
    module = _trained(llama_dir, r=4, alpha=8)
    export_adapter(module, str(tmp_path / "a"))
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["init_lora_weights"]) == (4, 8, True)
    assert module.initial_lora is None
    assert (_served(llama_dir, tmp_path / "a") - _logits(module.model)).abs().max() <= 1e-6


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_base_changing_inits_are_converted_for_the_original_base(llama_dir, tmp_path, init):
    module = _trained(llama_dir, r=4, alpha=8, init_lora_weights=init)
    want = _logits(module.model)  # the changed base plus the trained adapter
    original = AutoModelForCausalLM.from_pretrained(llama_dir)
    changed = dict(module.model.get_base_model().named_parameters())
    assert not torch.equal(changed["model.layers.0.self_attn.q_proj.base_layer.weight"],
                           original.model.layers[0].self_attn.q_proj.weight)  # the init rewrote the base
    export_adapter(module, str(tmp_path / "a"))
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["init_lora_weights"]) == (8, 16, True)  # [A; A0], [B, -B0]
    # The fingerprint was of the changed base; the converted adapter fits the original one.
    assert json.loads((tmp_path / "a" / "lit_lora.json").read_text())["base_fingerprint"] is None
    assert (_served(llama_dir, tmp_path / "a") - want).abs().max() <= 1e-5


def test_gguf_export_refuses_an_adapter_llama_cpp_cannot_serve(llama_dir, tmp_path):
    from lit_lora.errors import LitLoraError
    from lit_lora.lora.gguf import export_adapter_gguf

    # Refused before llama.cpp's converter runs: the checkout named here has none.
    with pytest.raises(LitLoraError, match=r"^llama.cpp cannot serve this adapter \(DoRA: convert_lora_to_gguf.py "
                       r"stops on lora_magnitude_vector\): merge --format gguf writes the merged model"):
        export_adapter_gguf(_trained(llama_dir, use_dora=True), str(tmp_path / "out"), tmp_path, "f32")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))  # nor a half-written folder
