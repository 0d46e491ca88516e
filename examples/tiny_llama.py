"""Write a tiny, randomly initialised Llama-family model folder (2 layers, 64 wide, grouped-query attention)
with the quickstart's tokenizer, as `save_pretrained` writes a downloaded one. For trying lit_lora on a
family other than GPT-2 with no network:

    python examples/tiny_llama.py tiny-llama
    python -m lit_lora.cli fit --model.model_name_or_path tiny-llama --data.train_files examples/quickstart/train.txt
"""

from __future__ import annotations

import sys
from pathlib import Path

from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

HERE = Path(__file__).resolve().parent


def main(folder: str) -> None:
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=512, max_position_embeddings=256)
    LlamaForCausalLM(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(HERE / "quickstart" / "tokenizer")).save_pretrained(folder)
    print(f"wrote a tiny Llama to {folder}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tiny-llama")
