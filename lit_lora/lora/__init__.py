"""LoRA in PEFT's terms: settings, default targets per family, wrapping a base model, building the model that
trains (`build`: the base plus new or saved adapters), what a wrapped model is made of (`parts`), export
and merge. Knows nothing of `LitLora`.
"""

from lit_lora.lora.settings import LoraSettings

__all__ = ["LoraSettings"]
