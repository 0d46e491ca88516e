"""`export --format gguf` and `merge --format gguf`: llama.cpp's own converters, from the checkout that
LLAMA_CPP_DIR names (CI unpacks the llama-cpp-python source distribution's vendor/llama.cpp), write GGUF files
that the `gguf` package reads back with the run's tensors, chat template and output type."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lit_lora.cli import main
from lit_lora.lora.gguf import GGUF_FILE
from tests.conftest import REPO
from tests.helpers import GQA, checkpoints_dir, cli_output, llama_tokenizer_dir

if not os.environ.get("LLAMA_CPP_DIR"):
    pytest.skip("LLAMA_CPP_DIR is unset: no llama.cpp checkout to convert with (.ci/run unpacks one)",
                allow_module_level=True)
gguf = pytest.importorskip("gguf")  # in the dev extras
pytestmark = pytest.mark.slow  # each converter run starts a Python that imports torch and transformers

# PEFT's module names in a Llama and llama.cpp's.
LLAMA_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
               "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
               "mlp.down_proj": "ffn_down"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Two steps of a chat fine-tune of a tiny Llama (the built-in `plain` template, recorded in the checkpoint)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    root = tmp_path_factory.mktemp("gguf")
    vocab = llama_tokenizer_dir(root / "model")
    torch.manual_seed(0)
    config = AutoConfig.for_model("llama", vocab_size=vocab, bos_token_id=1, eos_token_id=2,
                                  **dict(GQA, tie_word_embeddings=True))
    AutoModelForCausalLM.from_config(config).save_pretrained(str(root / "model"))
    lines = (REPO / "examples" / "chat" / "messages.jsonl").read_text(encoding="utf-8").splitlines()[:16]
    (root / "chats.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    cli_output(root, "fit", "--model.model_name_or_path", str(root / "model"), "--data.train_files",
               str(root / "chats.jsonl"), "--data.val_fraction", "0", "--data.block_size", "64",
               "--data.batch_size", "8", "--data.cache_dir", str(root / "cache"), "--model.learning_rate", "1e-2",
               "--model.warmup_steps", "1", "--trainer.max_steps", "2", "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false",
               "--trainer.enable_model_summary", "false", "--samples.prompts", "[]")
    ckpt = checkpoints_dir(root) / "last.ckpt"
    return dict(root=root, ckpt=ckpt, checkpoint=torch.load(ckpt, weights_only=True))


def _fields(reader) -> dict:
    return {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}


def _llama_permute(rows: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's order of a query/key projection's output rows (its rotary embedding pairs neighbours)."""
    return rows.reshape(n_head, 2, rows.shape[0] // n_head // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def test_adapter_gguf_holds_the_adapters_tensors(run, monkeypatch, capsys):
    calls, real_run = [], subprocess.run

    def spy(command, **kwargs):  # the real converter, its command line and inputs recorded
        calls.append((command, sorted(p.name for p in Path(command[2]).iterdir()),
                      json.loads((Path(command[command.index("--base") + 1]) / "config.json").read_text())))
        return real_run(command, **kwargs)

    monkeypatch.setattr("lit_lora.lora.gguf.subprocess.run", spy)
    out = run["root"] / "adapter-gguf"
    assert main(["export", "--ckpt_path", str(run["ckpt"]), "--output_dir", str(out), "--format", "gguf"]) == 0
    assert "exported adapter.gguf (f32, by llama.cpp's convert_lora_to_gguf.py) to " in capsys.readouterr().err
    [(command, peft_files, base_config)] = calls
    llama_cpp = Path(os.environ["LLAMA_CPP_DIR"]).resolve()
    assert command[:2] == [sys.executable, str(llama_cpp / "convert_lora_to_gguf.py")] or \
        command[:2] == [sys.executable, str(llama_cpp / "vendor" / "llama.cpp" / "convert_lora_to_gguf.py")]
    assert command[3:7] == ["--outfile", command[4], "--outtype", "f32"] and command[4].endswith("/adapter.gguf")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(peft_files)
    assert base_config["architectures"] == ["LlamaForCausalLM"] and base_config["num_key_value_heads"] == 2
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "adapter.gguf", "chat_template.jinja",
                                                    "lit_lora_manifest.json"]
    template = run["checkpoint"]["lit_lora"]["chat_template"]
    assert template and (out / "chat_template.jinja").read_text(encoding="utf-8") == template

    reader = gguf.GGUFReader(out / GGUF_FILE["adapter"])
    fields = _fields(reader)
    assert fields["general.type"] == "adapter" and fields["adapter.type"] == "lora"
    assert fields["general.architecture"] == "llama" and fields["general.name"] == "Adapter Gguf"
    lora = run["checkpoint"]["hyper_parameters"]["lora"]
    assert fields["adapter.lora.alpha"] == pytest.approx(lora["alpha"])
    expected = {}
    for key, value in run["checkpoint"]["state_dict"].items():  # model.base_model.model.model.layers.0....
        layer, module = key.split(".layers.")[1].split(".", 1)
        module, ab = module.split(".lora_")
        if LLAMA_NAMES[module] in ("attn_q", "attn_k") and ab.startswith("B"):
            value = _llama_permute(value, 4 if module.endswith("q_proj") else 2)
        expected[f"blk.{layer}.{LLAMA_NAMES[module]}.weight.lora_{ab[0].lower()}"] = value
    tensors = {t.name: t for t in reader.tensors}
    assert set(tensors) == set(expected) and len(expected) == 2 * 2 * len(lora["target_modules"] or LLAMA_NAMES)
    for name, tensor in tensors.items():
        assert tensor.tensor_type == gguf.GGMLQuantizationType.F32
        assert np.array_equal(tensor.data, expected[name].numpy()), name  # GGUF shape is reversed: data is not


def test_merged_gguf_holds_the_merged_model_and_the_chat_template(run, capsys):
    from lit_lora.loading import module_from_checkpoint

    out = run["root"] / "merged-gguf"
    assert main(["merge", "--ckpt_path", str(run["ckpt"]), "--output_dir", str(out), "--format", "gguf",
                 "--outtype", "q8_0", "--llama_cpp", os.environ["LLAMA_CPP_DIR"]]) == 0
    assert "merged model.gguf (q8_0, by llama.cpp's convert_hf_to_gguf.py) written to " in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "lit_lora_manifest.json", "model.gguf"]
    assert "convert_hf_to_gguf.py --outtype q8_0" in (out / "README.md").read_text(encoding="utf-8")

    reader = gguf.GGUFReader(out / GGUF_FILE["merged"])
    fields = _fields(reader)
    assert fields["tokenizer.chat_template"] == run["checkpoint"]["lit_lora"]["chat_template"]
    assert fields["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q8_0 and fields["llama.block_count"] == 2
    merged = module_from_checkpoint(str(run["ckpt"])).module.model.merge_and_unload().state_dict()
    checked = 0
    for name, module in LLAMA_NAMES.items():
        if module in ("attn_q", "attn_k"):
            continue  # rows reordered (_llama_permute); the adapter test checks that order
        for layer in range(2):
            want = merged[f"model.layers.{layer}.{name}.weight"].numpy()
            tensor = next(t for t in reader.tensors if t.name == f"blk.{layer}.{module}.weight")
            assert tensor.tensor_type == gguf.GGMLQuantizationType.Q8_0
            got = gguf.dequantize(tensor.data, tensor.tensor_type).reshape(want.shape)
            # Q8_0: blocks of 32 values, each a multiple of the block's max |w| / 127.
            assert np.abs(got - want).max() <= np.abs(want).max() / 127 / 2 * 1.01, name
            checked += 1
    assert checked == 10


def test_gguf_errors_are_one_line_before_loading_a_model(run, monkeypatch, capsys):
    out = str(run["root"] / "never")
    monkeypatch.delenv("LLAMA_CPP_DIR")
    assert main(["export", "--ckpt_path", str(run["ckpt"]), "--output_dir", out, "--format", "gguf"]) == 2
    err = capsys.readouterr().err
    assert "error: --format gguf runs llama.cpp's convert_lora_to_gguf.py: name a llama.cpp checkout with " \
           "--llama_cpp DIR or LLAMA_CPP_DIR; get one with `git clone" in err and "pip download" in err
    assert main(["merge", "--ckpt_path", str(run["ckpt"]), "--output_dir", out, "--format", "gguf",
                 "--outtype", "q4_0"]) == 2
    assert "error: --outtype 'q4_0' is not one of f32, f16, bf16, q8_0" in capsys.readouterr().err
    assert main(["merge", "--ckpt_path", str(run["ckpt"]), "--output_dir", out, "--format", "gguf",
                 "--llama_cpp", str(run["root"])]) == 2
    assert f"error: --llama_cpp {str(run['root'])!r} holds no convert_hf_to_gguf.py" in capsys.readouterr().err
    assert main(["export", "--ckpt_path", str(run["ckpt"]), "--output_dir", out, "--outtype", "f16"]) == 2
    assert "error: --outtype and --llama_cpp apply to --format gguf only" in capsys.readouterr().err
    assert not Path(out).exists()


def test_a_failing_converter_says_its_last_error_and_writes_nothing(run, tmp_path, capsys):
    (tmp_path / "convert_lora_to_gguf.py").write_text(
        "import sys\nprint('INFO:lora-to-gguf:Loading base model')\n"
        "raise NotImplementedError('BPE pre-tokenizer was not recognized')\n", encoding="utf-8")
    out = run["root"] / "failed"
    assert main(["export", "--ckpt_path", str(run["ckpt"]), "--output_dir", str(out), "--format", "gguf",
                 "--llama_cpp", str(tmp_path)]) == 2
    assert "error: llama.cpp's convert_lora_to_gguf.py failed (exit 1): NotImplementedError: BPE pre-tokenizer " \
           "was not recognized; nothing was written" in capsys.readouterr().err
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*"))


@pytest.mark.parametrize("family", ["qwen2"], indirect=True)  # the family tests' shared Qwen2 run
def test_qwen2_adapter_gguf_holds_the_adapters_tensors_unpermuted(family, tmp_path):
    out = tmp_path / "qwen2-gguf"
    assert main(["export", "--ckpt_path", str(family["last"]), "--output_dir", str(out), "--format", "gguf",
                 "--outtype", "bf16"]) == 0
    reader = gguf.GGUFReader(out / GGUF_FILE["adapter"])
    assert _fields(reader)["general.architecture"] == "qwen2"
    weights = torch.load(family["last"], weights_only=True)["state_dict"]
    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == len(weights)
    for key, value in weights.items():
        layer, module = key.split(".layers.")[1].split(".", 1)
        module, ab = module.split(".lora_")
        tensor = tensors[f"blk.{layer}.{LLAMA_NAMES[module]}.weight.lora_{ab[0].lower()}"]
        assert tensor.tensor_type == gguf.GGMLQuantizationType.BF16
        got = torch.from_numpy(tensor.data.copy()).view(torch.bfloat16).reshape(value.shape)  # Qwen2: no permutation
        assert torch.equal(got, value.to(torch.bfloat16)), key
