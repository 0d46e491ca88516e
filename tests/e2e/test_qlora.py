"""QLoRA on the CPU (bitsandbytes >= 0.50 has a CPU library): a tiny GPT-2 and a tiny Llama, saved with
`save_pretrained` and loaded back through `from_pretrained` with `--model.quantization nf4`, as a user's
folder would be.

One fit per family (6 steps, a checkpoint every 3), resumed from step 3, merged and exported (the session's
`qlora` runs, tests/e2e/conftest.py), shared by the checks: 4-bit layers under float32 LoRA, true counts,
LoRA-only checkpoints, the adapter
on the 4-bit and on the full-precision base, the merge into the full-precision weights, validate, generate
and predict from the checkpoint, the exact static bytes of `summary`, and one line for every bad input.
The exact resume is checked in tests/e2e/resume/, DDP with a quantized base in test_ddp.py. bitsandbytes' CPU inference layout (CPUs with AVX512-BF16) is
forced here on any CPU and run for real where the CPU has it (DEVELOPING.md).
"""

from __future__ import annotations

import json
import re

import pytest
import torch

from lit_lora.cli import main
from tests.conftest import REPO
from tests.helpers import QLORA_FAMILIES as FAMILIES
from tests.helpers import RUN_BLOCK as BLOCK
from tests.helpers import RUN_STEPS as STEPS
from tests.helpers import checkpoints_dir, cli_output, packed_for_cpu_inference, save_qlora_base, scalars

pytest.importorskip("bitsandbytes")  # in the dev extras; a checkout without them skips, saying so

PROMPT = "ROMEO:"


def _nf4():
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)


def _ours(qlora):
    from lit_lora.loading import module_from_checkpoint

    return module_from_checkpoint(str(qlora["last"])).module


def _batch():
    return torch.randint(3, 500, (2, 16), generator=torch.Generator().manual_seed(1))


def test_the_base_is_4bit_under_float32_lora_and_the_counts_are_the_full_precision_ones(qlora):
    from lit_lora.estimate.flops import training_flops_per_token
    from lit_lora.estimate.model_summary import count_parameters
    from lit_lora.training.module import LitLora
    from lit_lora.pretrained.quantization import quantized_layers

    module = _ours(qlora)
    quantized = quantized_layers(module.model)
    assert len(quantized) == (8 if qlora["type"] == "gpt2" else 14)  # every linear layer of the blocks
    assert {m.weight.quant_type for m in quantized} == {"nf4"} and all(m.weight.dtype == torch.uint8 for m in quantized)
    trainable = {n: p for n, p in module.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n and p.dtype == torch.float32 for n, p in trainable.items())
    full = LitLora(model_name_or_path=str(qlora["model_dir"]), block_size=BLOCK)
    counts = count_parameters(full.model)
    assert count_parameters(module.model) == counts
    assert f"lit_lora: {counts.base:,} base, {counts.trainable:,} trainable, {counts.total:,} total" in qlora["fit_out"]
    assert "linear layers nf4 (bitsandbytes, compute float32)" in qlora["fit_out"]
    # The FLOP count is the full-precision model's: the matmuls are the same size.
    assert training_flops_per_token(module.model, BLOCK) == training_flops_per_token(full.model, BLOCK)
    # LoRA-only checkpoints: the 4-bit base is rebuilt from model_name_or_path.
    ckpt = torch.load(qlora["last"], weights_only=True)
    assert set(ckpt["state_dict"]) == {f"model.{n}" for n in trainable}
    assert ckpt["lit_lora"]["quantization"] == "nf4"
    losses = dict(scalars(str(qlora["root"] / "full" / "lightning_logs"), "train_loss"))
    assert losses[STEPS - 1] < losses[0]


def test_the_adapter_gives_our_logits_on_the_4bit_base_and_merge_uses_the_full_precision_one(qlora):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = _batch()
    with torch.no_grad():
        ours = _ours(qlora).model.eval()(input_ids=ids).logits
        four_bit = AutoModelForCausalLM.from_pretrained(str(qlora["model_dir"]), quantization_config=_nf4(),
                                                        device_map="cpu")
        peft = PeftModel.from_pretrained(four_bit, str(qlora["adapter"])).eval()
        assert (peft(input_ids=ids).logits - ours).abs().max().item() <= 1e-5
        full = AutoModelForCausalLM.from_pretrained(str(qlora["model_dir"]))
        untrained = full(input_ids=ids).logits
        on_full = PeftModel.from_pretrained(full, str(qlora["adapter"])).eval()(input_ids=ids).logits
        merged = AutoModelForCausalLM.from_pretrained(str(qlora["merged"])).eval()(input_ids=ids).logits
    assert (merged - on_full).abs().max().item() <= 1e-4  # merged into the full-precision weights
    quantization_error = (on_full - ours).abs().max().item()
    assert 1e-4 < quantization_error < (ours - untrained).abs().max().item() * 10
    assert "LoRA merged into the full-precision base; training's base was nf4" in qlora["merge_out"]
    info = json.loads((qlora["adapter"] / "lit_lora.json").read_text())
    assert info["quantization"] == "nf4"
    assert "quantized with bitsandbytes (nf4)" in (qlora["adapter"] / "README.md").read_text()


def test_generate_predict_validate_and_test_run_on_the_quantized_checkpoint(qlora_gpt2, tmp_path):
    texts = [cli_output(qlora_gpt2["root"], "generate", source, str(path), "--prompt", PROMPT, "--max_new_tokens", "6",
                        "--temperature", "0")
             for source, path in (("--ckpt_path", qlora_gpt2["last"]), ("--adapter_path", qlora_gpt2["adapter"]))]
    assert texts[0] == texts[1] and texts[0].strip()
    flags = [f for f in qlora_gpt2["flags"] if f not in ("--model.quantization", "nf4")]
    out = cli_output(tmp_path, "validate", *flags, "--ckpt_path", str(qlora_gpt2["last"]))
    val = dict(scalars(str(qlora_gpt2["root"] / "full" / "lightning_logs"), "val_loss"))
    shown = float(re.search(r"val_loss\s*│\s*([\d.]+)", out).group(1))
    assert shown == pytest.approx(val[max(val)], abs=1e-5)  # the loss training logged after its last step
    val_file = qlora_gpt2["root"] / "val.txt"
    out = cli_output(tmp_path, "test", *flags, "--data.test_files", str(val_file),
                     "--ckpt_path", str(qlora_gpt2["last"]))
    assert float(re.search(r"test_loss\s*│\s*([\d.]+)", out).group(1)) == pytest.approx(shown, abs=1e-6)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"{PROMPT}\n")
    cli_output(tmp_path, "predict", "--ckpt_path", str(qlora_gpt2["last"]), "--data.predict_file", str(prompts),
               "--data.block_size", str(BLOCK), "--model.generation.temperature", "0",
               "--model.generation.max_new_tokens", "6", "--predict_writer.output_file", str(tmp_path / "p.jsonl"),
               "--trainer.enable_progress_bar", "false")
    (record,) = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert texts[0].strip() == (PROMPT + record["completion"]).strip()
    # lm-eval on the checkpoint and on its adapter, the base kept in 4 bits: the same numbers.
    pytest.importorskip("lm_eval")
    tasks = ("--tasks", "lit_lora_quickstart_places", "--include_path", "examples/eval/tasks", "--limit", "8")
    for source, path in (("--ckpt_path", qlora_gpt2["last"]), ("--adapter_path", qlora_gpt2["adapter"])):
        cli_output(REPO, "eval", source, str(path), *tasks, "--output_dir", str(tmp_path / source.strip("-")))
    ckpt, adapter = (json.loads((tmp_path / folder / f"{name}.json").read_text())["results"]
                     for folder, name in (("ckpt_path", qlora_gpt2["last"].stem), ("adapter_path", "adapter")))
    assert ckpt == adapter and 0 <= ckpt["lit_lora_quickstart_places"]["acc,none"] <= 1


@pytest.mark.parametrize("options", [None, {"bnb_4bit_use_double_quant": True}, "int8"])
def test_summary_counts_the_quantized_weights_bytes_exactly(qlora, options):
    """`summary` (the meta device) and `fit` (real tensors) count the same bytes, and those are every
    tensor a quantized weight holds: its packed values and each tensor of its quantization state."""
    from lit_lora.estimate.memory import static_bytes
    from lit_lora.training.module import LitLora
    from lit_lora.lora.build import without_weights

    method, opts = ("int8", None) if options == "int8" else ("nf4", options)
    kwargs = dict(model_name_or_path=str(qlora["model_dir"]), block_size=BLOCK, quantization=method,
                  quantization_options=opts)
    real = LitLora(**kwargs).model
    with without_weights():
        meta = LitLora(**kwargs).model
    assert static_bytes(real)[0] == static_bytes(meta)[0] == _bytes_held(real)


def _bytes_held(model):
    """Bytes of every storage the model's parameters and buffers hold, with the tensors bitsandbytes hangs
    on its weights (int8's row scales, each tensor of a 4-bit quant state, nested ones too)."""
    found = {}
    for t in [*model.parameters(), *model.buffers()]:
        tensors, states = [t, getattr(t, "SCB", None)], [getattr(t, "quant_state", None)]
        while states:
            state = states.pop()
            for value in vars(state).values() if state is not None else ():
                if isinstance(value, torch.Tensor):
                    tensors.append(value)
                elif type(value).__name__ == "QuantState":
                    states.append(value)
        for x in tensors:
            if x is not None:
                found[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes()
    return sum(found.values())


# -- bad input: one line, exit 2 ---------------------------------------------------------------------------------


OPTION_CASES = [
    (["--model.quantization", "nf8"], "model.quantization"),
    (["--model.quantization", "nf4", "--model.quantization_options", '{"bnb_4bit_quant_type": "fp4"}'],
     "model.quantization_options has 'bnb_4bit_quant_type', which nf4 does not take; expected "
     "bnb_4bit_compute_dtype, bnb_4bit_quant_storage, bnb_4bit_use_double_quant, llm_int8_skip_modules"),
    (["--model.quantization", "int8", "--model.quantization_options", '{"bnb_4bit_use_double_quant": true}'],
     "model.quantization_options has 'bnb_4bit_use_double_quant', which int8 does not take"),
    (["--model.quantization", "nf4", "--model.quantization_options", '{"bnb_4bit_compute_dtype": "float64"}'],
     "model.quantization_options bnb_4bit_compute_dtype='float64' is not valid; expected float32 or bfloat16 or"),
    (["--model.quantization_options", '{"bnb_4bit_use_double_quant": true}'],
     "model.quantization_options {'bnb_4bit_use_double_quant': True} are set but model.quantization is null"),
    (["--model.quantization", "nf4", "--model.quantization_options",
      '{"llm_int8_skip_modules": ["c_attn", "c_proj", "c_fc", "lm_head"]}'],
     "model.quantization='nf4': bitsandbytes quantized no layer of GPT2LMHeadModel"),
    (["--model.optimizer", "paged_adamw"], "model.optimizer='paged_adamw' pages optimizer state between a CUDA "
                                           "GPU and host memory; this run is on 'cpu': use model.optimizer adamw"),
]


@pytest.mark.parametrize("flags, text", OPTION_CASES, ids=[str(i) for i in range(len(OPTION_CASES))])
def test_bad_quantization_options_are_one_line(in_tmp, tiny_model_dir, shakespeare, capsys, flags, text):
    from tests.helpers import fit_args

    assert main(fit_args(tiny_model_dir, shakespeare, in_tmp, "--trainer.max_steps", "1", *flags)) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("lit_lora: error: ") and text in err[0], err


def test_a_different_base_is_caught_by_the_fingerprint_of_a_quantized_run(qlora_gpt2, tmp_path):
    fields = dict(FAMILIES["gpt2"])
    other = save_qlora_base(tmp_path / "other", fields.pop("model_type"), fields, seed=1)
    err = cli_output(tmp_path, "merge", "--ckpt_path", str(qlora_gpt2["last"]),
                     "--model.model_name_or_path", str(other), "--output_dir", str(tmp_path / "m"), code=2)
    assert "the base model's weights differ from those the checkpoint was trained on" in err
    assert not (tmp_path / "m").exists()


# -- the CPU inference layout (bitsandbytes on CPUs with AVX512-BF16) --------------------------------------------


def _watch_4bit_forwards(monkeypatch):
    """Every 4-bit layer call as (training, the weight in the CPU inference layout when it ran, its tokens)."""
    import bitsandbytes.nn.modules as bnb_modules

    seen, forward = [], bnb_modules.Linear4bit.forward

    def watched(self, x):
        seen.append((self.training and torch.is_grad_enabled(), packed_for_cpu_inference(self), x.shape[-2]))
        return forward(self, x)

    monkeypatch.setattr(bnb_modules.Linear4bit, "forward", watched)
    return seen


def test_training_never_runs_on_the_cpu_inference_layout_bitsandbytes_repacks_to(qlora_gpt2, tmp_path, monkeypatch):
    """On a CPU with AVX512-BF16, bitsandbytes repacks a 4-bit weight for inference the first time its layer runs
    in eval mode without gradients; a training step on that layout fails. The repack is plain torch, so any
    CPU can take that path: the layers are built believing the CPU has the instruction set. The same fit as
    the fixture's (a step-0 validation, one at step 3 with a generated sample) then trains on the same losses,
    and no training forward sees the inference layout; `validate` gives the loss training logged, and `generate`
    still takes the fast layout."""
    import bitsandbytes.nn.modules as bnb_modules

    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: True)
    seen = _watch_4bit_forwards(monkeypatch)
    cli_output(tmp_path, "fit", *qlora_gpt2["flags"], "--samples.prompts", f'["{PROMPT}"]',
                     "--samples.max_new_tokens", "2")  # samples draw from their own generator: same losses
    assert {tokens for training, _, tokens in seen if training} == {BLOCK}
    assert {tokens for training, _, tokens in seen if not training} > {BLOCK}  # validation and the sample
    assert not any(packed for training, packed, _ in seen if training)
    losses = scalars(str(tmp_path / "lightning_logs"), "train_loss")
    assert losses == scalars(str(qlora_gpt2["root"] / "full" / "lightning_logs"), "train_loss")
    last = str(checkpoints_dir(tmp_path) / f"step{STEPS:03d}.ckpt")
    flags = [f for f in qlora_gpt2["flags"] if f not in ("--model.quantization", "nf4")]
    out = cli_output(tmp_path, "validate", *flags, "--ckpt_path", last)
    val = dict(scalars(str(qlora_gpt2["root"] / "full" / "lightning_logs"), "val_loss"))
    assert float(re.search(r"val_loss\s*│\s*([\d.]+)", out).group(1)) == pytest.approx(val[max(val)], abs=1e-5)
    seen.clear()
    cli_output(tmp_path, "generate", "--ckpt_path", last, "--prompt", PROMPT, "--max_new_tokens", "2", "--temperature", "0")
    # Each layer's first call repacks its weight (8 layers); every later one runs on the inference layout.
    assert len(seen) > 8 and all(packed for _, packed, _ in seen[8:])


def _cpu_has_avx512_bf16():
    from bitsandbytes.functional import has_avx512bf16

    return bool(has_avx512bf16())


@pytest.mark.skipif(not _cpu_has_avx512_bf16(), reason="this CPU has no AVX512-BF16, so bitsandbytes never repacks "
                    "here; test_training_never_runs_on_the_cpu_inference_layout_bitsandbytes_repacks_to forces it")
def test_on_a_cpu_with_avx512_bf16_inference_runs_repacked_and_close_to_the_training_layout(qlora_gpt2):
    """The real path: the fixture's fits and validations ran on such a CPU; here bitsandbytes' own kernel runs on
    the inference layout, in bfloat16, close to the training layout's float32 logits."""
    from lit_lora.pretrained.quantization import hold_training_layout, quantized_layers, release_training_layout

    model = _ours(qlora_gpt2).model.eval()
    layers, ids = quantized_layers(model), _batch()
    held = hold_training_layout(model)
    assert held == layers
    with torch.no_grad():
        exact = model(input_ids=ids).logits
    assert not any(packed_for_cpu_inference(layer) for layer in layers)
    release_training_layout(held)
    with torch.no_grad():
        fast = model(input_ids=ids).logits
    assert all(packed_for_cpu_inference(layer) for layer in layers)
    assert (fast - exact).abs().max().item() <= 0.05 * exact.abs().max().item()
