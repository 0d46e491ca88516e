"""The README's table of model families: default LoRA targets and trainable parameters at r=8 for a
reference model of each family, built on the meta device from its published shape (no weights, no hub).

    python benchmarks/family_counts.py

Shapes: the fields of each model's config.json on the hub (SmolLM2-135M, Qwen2.5-0.5B, Qwen3-0.6B,
Phi-3-mini-4k and Pythia-160m were checked against copies of it; the others are the models' well-known
shapes). Only the fields that change parameter counts are given.
"""

from __future__ import annotations

REFERENCE = {
    "gpt2": ("GPT-2 small", {}),
    "gpt_neo": ("GPT-Neo 125M", dict(hidden_size=768, num_layers=12, num_heads=12, vocab_size=50257,
                                     max_position_embeddings=2048, attention_types=[[["global", "local"], 6]])),
    "gpt_neox": ("Pythia-160m", dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                     num_attention_heads=12, vocab_size=50304, max_position_embeddings=2048,
                                     rotary_pct=0.25, tie_word_embeddings=False)),
    "opt": ("OPT-125m", dict(hidden_size=768, ffn_dim=3072, num_hidden_layers=12, num_attention_heads=12,
                             vocab_size=50272, max_position_embeddings=2048, word_embed_proj_dim=768)),
    "llama": ("SmolLM2-135M", dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                   num_attention_heads=9, num_key_value_heads=3, head_dim=64, vocab_size=49152,
                                   tie_word_embeddings=True, max_position_embeddings=8192)),
    "mistral": ("Mistral-7B-v0.1", dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                        num_attention_heads=32, num_key_value_heads=8, vocab_size=32000,
                                        tie_word_embeddings=False)),
    "qwen2": ("Qwen2.5-0.5B", dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                   num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                                   tie_word_embeddings=True)),
    "qwen3": ("Qwen3-0.6B", dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                                 num_attention_heads=16, num_key_value_heads=8, head_dim=128, vocab_size=151936,
                                 tie_word_embeddings=True)),
    "phi3": ("Phi-3-mini-4k", dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
                                   num_attention_heads=32, num_key_value_heads=32, vocab_size=32064,
                                   tie_word_embeddings=False, pad_token_id=32000)),
    "gemma2": ("Gemma-2-2B", dict(hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                                  num_attention_heads=8, num_key_value_heads=4, head_dim=256, vocab_size=256000,
                                  tie_word_embeddings=True)),
}


def rows() -> list[tuple[str, str, str, int, int]]:
    """(model_type, reference model, default targets, base parameters, trainable at r=8)."""
    import torch

    from lit_lora.pretrained.hub import build_config
    from lit_lora.lora.settings import LoraSettings
    from lit_lora.lora.targets import DEFAULT_TARGETS
    from lit_lora.lora.wrap import apply_lora
    from lit_lora.estimate.model_summary import count_parameters
    from transformers import AutoModelForCausalLM

    out = []
    for model_type, (name, fields) in REFERENCE.items():
        with torch.device("meta"):
            base = AutoModelForCausalLM.from_config(build_config({"model_type": model_type, **fields}))
            counts = count_parameters(apply_lora(base, LoraSettings(r=8, alpha=16)))
        out.append((model_type, name, ", ".join(DEFAULT_TARGETS[model_type]), counts.base, counts.trainable))
    return out


if __name__ == "__main__":
    print("| family (`model_type`) | reference model | default targets | base parameters | trainable at r=8 |")
    print("|---|---|---|---|---|")
    for model_type, name, targets, base, trainable in rows():
        print(f"| `{model_type}` | {name} | {targets} | {base:,} | {trainable:,} |")
