"""LoRA in PEFT's terms: settings, wrapping a base model, what a wrapped model is made of, export and merge.
Takes an `nn.Module`; knows nothing of Lightning or of `LitLora`."""

from lit_lora.lora.settings import LoraSettings

__all__ = ["LoraSettings"]
