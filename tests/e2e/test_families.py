"""Every model family we name, end to end on CPU: a tiny random model of each family, saved with
`save_pretrained` and loaded back through `from_pretrained` as a user's folder would be (no hub).

One small fit per family (no target flags: the family's defaults; the session's `family` runs,
tests/e2e/conftest.py), shared by its checks: the printed counts, the exported adapter in PEFT, the merged
model in plain transformers, greedy text from checkpoint, adapter and merged model, gradient
checkpointing, and the FSDP unit. Its resume from a mid-epoch checkpoint (same per-step losses) is checked
in tests/e2e/resume/, with the real kill -9 resume test (GPT-2's).
"""

from __future__ import annotations

import json
import re

import pytest
import torch

from lit_lora.cli import main
from lit_lora.lora.targets import DEFAULT_TARGETS
from tests.conftest import QUICKSTART
from tests.helpers import RUN_BLOCK as BLOCK
from tests.helpers import GEMMA2, cli_output, memtracker_activations

PROMPT = "ROMEO:"


def _ours(family):
    from lit_lora.loading import module_from_checkpoint

    return module_from_checkpoint(str(family["last"])).module


def _tokenizer(family):
    from lit_lora.pretrained.hub import load_tokenizer

    return load_tokenizer(str(family["model_dir"]))


def _batch():
    return torch.randint(3, 500, (2, 16), generator=torch.Generator().manual_seed(1))


def test_fit_adapts_the_familys_default_targets_and_prints_true_counts(family):
    module = _ours(family)
    targets = DEFAULT_TARGETS[family["type"]]
    line = next(x for x in family["fit_out"].splitlines() if x.startswith("lit_lora: LoRA r=8"))
    assert f" on {', '.join(targets)} (" in line
    assert module.hparams.lora["target_modules"] == targets  # recorded in the checkpoint
    config = json.loads((family["adapter"] / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == sorted(targets)  # and in the exported adapter
    counts = re.search(r"lit_lora: ([\d,]+) base, ([\d,]+) trainable, ([\d,]+) total", family["fit_out"])
    base, trainable, total = (int(g.replace(",", "")) for g in counts.groups())
    params = list(module.model.parameters())
    assert total == sum(p.numel() for p in params) and base + trainable == total
    assert trainable == sum(p.numel() for p in params if p.requires_grad) > 0


def test_exported_adapter_and_merged_model_give_our_logits(family):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = _batch()
    with torch.no_grad():
        ours = _ours(family).model.eval()(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(str(family["model_dir"])).eval()
        untrained = base(input_ids=ids).logits
        peft = PeftModel.from_pretrained(base, str(family["adapter"])).eval()
        assert (peft(input_ids=ids).logits - ours).abs().max().item() <= 1e-5
        merged = AutoModelForCausalLM.from_pretrained(str(family["merged"])).eval()
        assert (merged(input_ids=ids).logits - ours).abs().max().item() <= 1e-4
    assert (ours - untrained).abs().max().item() > 1e-2  # the adapter changed the output


def test_greedy_text_is_the_same_from_checkpoint_adapter_and_merged_model(family):
    from lit_lora.generation.prompts import prompt_ids

    module = _ours(family)
    tokenizer = _tokenizer(family)
    ids = torch.tensor([prompt_ids(tokenizer, PROMPT)])
    if family["tokenizer"] == "bos":
        assert ids[0, 0].item() == tokenizer.bos_token_id and (ids[0, 1:] != tokenizer.bos_token_id).all()
    with torch.no_grad():  # no near-tie can flip the greedy choice between the three sources
        for _ in range(6):
            top2 = module.model.eval()(input_ids=ids).logits[0, -1].topk(2).values
            assert (top2[0] - top2[1]).item() > 1e-4
            ids = torch.cat([ids, module.model(input_ids=ids).logits[:, -1:].argmax(-1)], dim=1)
    texts = [cli_output(family["root"], "generate", source, str(path), "--prompt", PROMPT, "--max_new_tokens", "6",
                        "--temperature", "0")
             for source, path in (("--ckpt_path", family["last"]), ("--adapter_path", family["adapter"]),
                                  ("--model_dir", family["merged"]))]
    assert texts[0] == texts[1] == texts[2] and texts[0].strip()


def test_chunked_loss_and_checkpointing_give_the_full_heads_loss_and_lora_gradients(family, monkeypatch):
    from lit_lora.training.module import LitLora
    from lit_lora.objectives.nll import model_nll, output_head

    ids = _batch()
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0  # right padding, as the prompt/completion collator pads
    labels = ids.masked_fill(mask == 0, -100)
    labels[0, :5] = -100  # a prompt
    monkeypatch.setattr("lit_lora.objectives.nll.LOSS_CHUNK_TOKENS", 5)  # 32 positions: 6 chunks of 5 and one of 2
    results = []
    for gc, chunked in ((False, False), (True, True)):
        torch.manual_seed(0)
        module = LitLora(model_name_or_path=str(family["model_dir"]), gradient_checkpointing=gc, block_size=BLOCK)
        assert output_head(module.model)[0] is not None  # every family we name gets the chunked head
        module.train()
        torch.manual_seed(1)  # the same dropout masks: checkpointing replays the RNG when it recomputes
        nll, n = model_nll(module.model, ids, mask, labels, chunked=chunked)
        (nll / n).backward()
        grads = {k: p.grad.clone() for k, p in module.named_parameters() if p.requires_grad}
        results.append((float(nll.detach() / n), int(n), grads))
    (full_loss, full_n, full), (loss, n, grads) = results
    assert n == full_n == 2 * 15 - 4 - 4 and loss == pytest.approx(full_loss, abs=1e-5)
    assert grads.keys() == full.keys() and any("lora_A" in k for k in grads)
    assert max((grads[k] - full[k]).abs().max().item() for k in grads) <= 1e-5
    assert max(g.abs().max().item() for k, g in grads.items() if "lora_B" in k) > 0


def test_fsdp_wraps_the_familys_decoder_layers(family):
    from lit_lora.training.distributed import DecoderLayerPolicy

    module = _ours(family)
    policy = DecoderLayerPolicy()
    assert policy(module, recurse=True, nonwrapped_numel=0)  # FSDP's first call, with the root
    units = [type(m).__name__ for m in module.modules() if policy(m, recurse=False, nonwrapped_numel=0)]
    assert len(units) == 2 and set(units) <= set(module.model.get_base_model()._no_split_modules)


def test_memory_estimate_is_within_10_percent_of_memtracker_on_a_real_step(family):
    from lit_lora.estimate.memory import estimate_training_memory
    from lit_lora.training.module import LitLora

    batch, block = 4, 80  # 320 positions: the chunked loss runs 2 chunks
    torch.manual_seed(0)
    module = LitLora(model_name_or_path=str(family["model_dir"]), gradient_checkpointing=True, block_size=block)
    estimate = estimate_training_memory(module.model, batch, block, "32-true", True, device_type="cpu")
    measured = memtracker_activations(module, batch, block, estimate)
    assert estimate.activations == pytest.approx(measured, rel=0.10)


def test_flops_per_token_are_within_2_percent_of_flop_counter_on_a_real_step(family):
    from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

    from lit_lora.estimate.flops import training_flops_per_token
    from lit_lora.training.module import LitLora

    aten = torch.ops.aten
    # FlopCounterMode does not list the CPU's SDPA kernels; counted by its own flash-attention formulas.
    cpu_sdpa = {
        aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *a, out_shape=None, **kw: sdpa_flop_count(q, k, v),
        aten._scaled_dot_product_flash_attention_for_cpu_backward:
            lambda g, q, k, v, *a, out_shape=None, **kw: sdpa_backward_flop_count(g, q, k, v),
    }
    module = LitLora(model_name_or_path=str(family["model_dir"]), gradient_checkpointing=False, block_size=BLOCK)
    module.train()
    ids = torch.randint(3, 500, (2, BLOCK), generator=torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False, custom_mapping=cpu_sdpa) as counter:
        nll, n = module.objective.nll(module.model, {"input_ids": ids, "labels": ids})
        (nll / n).backward()
    measured = counter.get_total_flops() / ids.numel()
    assert training_flops_per_token(module.model, BLOCK).model == pytest.approx(measured, rel=0.02)


# -- tokenizers of these families ------------------------------------------------------------------------


def test_a_tokenizer_larger_than_the_models_embedding_is_one_line_for_fit_validate_and_generate(tmp_path,
                                                                                                 tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(QUICKSTART / "tokenizer"))
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.save_pretrained(str(tmp_path / "chatml-tokenizer"))
    line = ("lit_lora: error: the tokenizer has 514 tokens but the model's input embedding has 512 rows: ids from 512 "
            "up have no embedding; resize the model for this tokenizer and save both "
            "(model.resize_token_embeddings(len(tokenizer)), then model.save_pretrained(DIR) and "
            "tokenizer.save_pretrained(DIR)) and train from DIR, or use the model's own tokenizer")
    model = ["--model.model_name_or_path", str(tiny_model_dir), "--model.tokenizer_name_or_path",
             str(tmp_path / "chatml-tokenizer")]
    data = ["--data.cache_dir", str(tmp_path / "cache"), "--data.block_size", "32"]
    for args in (["fit", *model, "--data.train_files", str(QUICKSTART / "val.txt"), *data],
                 ["validate", *model, "--data.val_files", str(QUICKSTART / "val.txt"), *data],
                 ["generate", "--model_dir", str(tiny_model_dir), "--model.tokenizer_name_or_path",
                  str(tmp_path / "chatml-tokenizer"), "--prompt", "Hi", "--max_new_tokens", "2"]):
        assert cli_output(tmp_path, *args, code=2).strip().splitlines() == [line], args[0]
    assert not (tmp_path / "cache").exists(), "refused before anything was tokenized"


# -- bad input: one line, exit 2, before any weights are built ----------------------------------------------


@pytest.fixture(scope="module")
def not_causal(tmp_path_factory):
    from transformers import BertConfig, T5Config

    t5, unknown = tmp_path_factory.mktemp("t5"), tmp_path_factory.mktemp("unknown")
    bert = tmp_path_factory.mktemp("bert")
    T5Config(d_model=32, num_layers=1, num_heads=2, d_ff=64, vocab_size=100).save_pretrained(str(t5))  # no weights
    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
               vocab_size=512).save_pretrained(str(bert))
    (unknown / "config.json").write_text(json.dumps({"model_type": "not_a_family"}))
    return {"t5": t5, "unknown": unknown, "bert": bert}


ENCODER = ("model type 'bert' is an encoder (a masked language model: its attention sees the whole text), not a "
           "causal language model; expected one such as gpt2, gpt_neox, llama, mistral, qwen2, qwen3, phi3, gemma2 "
           "(or a config with is_decoder: true)")


@pytest.mark.parametrize("flags, message", [
    (("--model.model_name_or_path", "{t5}"),
     "model type 't5' is not a causal language model (AutoModelForCausalLM has no class for it); expected one "
     "such as gpt2, gpt_neox, llama, mistral, qwen2, qwen3, phi3, gemma2"),
    (("--model.model_name_or_path", "{unknown}"),
     "model.model_name_or_path '{unknown}' is a local path but could not be loaded: The checkpoint you are trying "
     "to load has model type `not_a_family` but Transformers does not recognize this architecture"),
    (("--model.model_config", '{{"model_type": "llama", "hidden_sise": 32}}'),
     "model.model_config field(s) ['hidden_sise'] are not fields of LlamaConfig (model_type 'llama')"),
    (("--model.model_config", '{{"model_type": "not_a_family"}}'),
     "model.model_config model_type 'not_a_family' is not a model type transformers knows; expected one such as "
     "gpt2, gpt_neox, llama, mistral, qwen2, qwen3, phi3, gemma2"),
    (("--model.model_config", '{{"model_type": "llama", "hidden_size": 30, "num_attention_heads": 4}}'),
     "model.model_config is not a valid LlamaConfig: ValueError: The hidden size (30) is not a multiple of the "
     "number of attention heads (4)."),
    (("--model.model_config", json.dumps(GEMMA2).replace("{", "{{").replace("}", "}}"),
      "--model.attn_implementation", "sdpa"),
     "model.attn_implementation 'sdpa' is not supported by Gemma2ForCausalLM (transformers: Gemma2ForCausalLM "
     "does not support an attention implementation through torch.nn.functional.scaled_dot_product_attention yet)"),
    (("--model.model_config", '{{"model_type": "llama", "hidden_size": 32, "num_attention_heads": 4, '
                              '"num_key_value_heads": 3}}'),
     "model.model_config num_key_value_heads=3 must divide num_attention_heads=4"),
    # BERT has a causal-LM class in transformers, which attends causally only as a decoder.
    (("--model.model_name_or_path", "{bert}"), ENCODER),
    (("--model.model_config", '{{"model_type": "bert", "hidden_size": 32, "num_attention_heads": 2}}'), ENCODER),
], ids=["not-causal", "unknown-local-type", "unknown-field", "unknown-model-type", "bad-shape", "explicit-attention",
        "grouped-heads", "encoder-folder", "encoder-config"])
def test_a_model_that_cannot_be_built_is_one_line(flags, message, not_causal, tmp_path, capsys, monkeypatch):
    import transformers

    def no_weights(*args, **kwargs):
        raise AssertionError("weights were built before the error")

    monkeypatch.setattr(transformers.PreTrainedModel, "post_init", no_weights)
    paths = {k: str(v) for k, v in not_causal.items()}
    monkeypatch.chdir(tmp_path)
    code = main(["fit", *(f.format(**paths) for f in flags), "--model.tokenizer_name_or_path",
                 str(QUICKSTART / "tokenizer"), "--data.train_files", str(QUICKSTART / "train.txt")])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"lit_lora: error: {message.format(**paths)}"]
