"""lit_lora: LoRA fine-tuning of GPT-2-class causal LMs with PyTorch Lightning and PEFT.

Heavy libraries (torch, lightning, transformers, peft, datasets) are imported by the modules that
need them, not here, so `python -m lit_lora.cli --help` and input errors stay fast.
"""

__version__ = "0.1.0"
