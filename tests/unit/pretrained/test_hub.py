"""Building a family's model from its config: the causal-LM class of an encoder-decoder family, published
config fields, and the fallbacks of a family without sdpa attention or without a default target table."""

from __future__ import annotations

import json

from tests.helpers import GEMMA2, VOCAB


def test_an_encoder_decoder_family_keeps_its_causal_lm_class():
    from transformers import BartConfig, BertConfig

    from lit_lora.pretrained.hub import causal_lm_class

    assert causal_lm_class(BartConfig()).__name__ == "BartForCausalLM"  # its decoder, causal by itself
    assert causal_lm_class(BertConfig(is_decoder=True)).__name__ == "BertLMHeadModel"


def test_published_config_fields_are_accepted_and_the_callers_dict_is_left_alone():
    from lit_lora.pretrained.hub import build_config

    # Keys real config.json files carry: read by the family (Phi-3's partial_rotary_factor), translated by
    # transformers (rope_theta), or kept and unused (GPT-2's n_ctx, Qwen2's use_mrope).
    build_config({"model_type": "phi3", "hidden_size": 32, "num_attention_heads": 4, "partial_rotary_factor": 0.5})
    build_config({"n_ctx": 1024})
    build_config({"model_type": "qwen2", "use_mrope": False})
    fields = {"model_type": "llama", "rope_theta": 1e4, "rope_scaling": {"rope_type": "linear", "factor": 2.0}}
    given = json.loads(json.dumps(fields))
    build_config(fields)
    assert fields == given  # resuming with the same model_config must match the checkpoint's


def test_a_family_without_sdpa_falls_back_to_eager_and_one_without_a_table_to_all_linear(capsys):
    from lit_lora.pretrained.hub import load_base_model
    from lit_lora.lora.settings import LoraSettings
    from lit_lora.lora.targets import resolve_targets
    from lit_lora.objectives.nll import output_head

    model = load_base_model("unused", model_config=GEMMA2)
    assert model.config._attn_implementation == "eager"
    assert capsys.readouterr().err == ("lit_lora: Gemma2ForCausalLM has no SDPA attention in transformers; using "
                                       "eager attention\n")
    starcoder = load_base_model("unused", model_config={"model_type": "starcoder2", "hidden_size": 32,
                                                        "intermediate_size": 64, "num_hidden_layers": 1,
                                                        "num_attention_heads": 4, "num_key_value_heads": 2,
                                                        "vocab_size": VOCAB})
    lora, note = resolve_targets(LoraSettings(), starcoder)
    assert lora.target_modules == "all-linear" and note == (
        "lit_lora: no default LoRA targets for model type 'starcoder2'; adapting all-linear (every linear layer "
        "but the output head). Set --model.lora.target_modules to choose")
    assert resolve_targets(LoraSettings(target_modules=["c_fc"]), starcoder) == (LoraSettings(target_modules=["c_fc"]),
                                                                                  None)
    # A head we have not checked runs in full (Starcoder2's is plain, but others scale their logits).
    assert output_head(starcoder) == (None, "lit_lora: the loss computes the full logits for model type 'starcoder2' "
                                            "(the chunked output head is checked for gpt2, llama and the README's "
                                            "other families only)")


def test_the_base_models_dropout_is_set_in_its_config():
    import torch

    from lit_lora.pretrained.hub import load_base_model

    shape = {"n_layer": 1, "n_embd": 16, "n_head": 2, "vocab_size": VOCAB}
    model = load_base_model("unused", model_config=shape, dropout=0.0)
    assert {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)} == {0.0}
    assert (model.config.attn_pdrop, model.config.resid_pdrop, model.config.summary_first_dropout) == (0.0, 0.0, 0.1)
    model = load_base_model("unused", model_config=shape)
    assert {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)} == {0.1}
    # Llama's attention reads a float from its config, not a Dropout module.
    llama = load_base_model("unused", model_config={"model_type": "llama", "hidden_size": 16, "intermediate_size": 32,
                                                    "num_hidden_layers": 1, "num_attention_heads": 2,
                                                    "vocab_size": VOCAB, "attention_dropout": 0.2}, dropout=0.0)
    assert llama.model.layers[0].self_attn.attention_dropout == 0.0


def test_training_steps_draw_dropout_only_in_lora_by_default():
    """Two forward passes in train mode: equal outputs when only LoRA's dropout is left and it is 0, so no
    randomness is left in the base; different ones with the config's dropout kept."""
    import torch

    from lit_lora.training.module import LitLora
    from tests.helpers import TOKENIZER

    shape = {"n_layer": 1, "n_embd": 16, "n_head": 2, "vocab_size": VOCAB}
    x = torch.randint(0, 100, (2, 8))
    for base_dropout, same in ((0.0, True), (None, False)):
        module = LitLora(model_config=shape, tokenizer_name_or_path=TOKENIZER,
                         lora={"dropout": 0.0}, base_dropout=base_dropout).train()
        first, second = (module.model(input_ids=x).logits for _ in range(2))
        assert torch.equal(first, second) is same
