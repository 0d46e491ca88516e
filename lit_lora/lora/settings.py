"""LoRA settings in PEFT's own terms (`peft.LoraConfig` names)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Optional, Union

from lit_lora.errors import LitLoraError
from lit_lora.lora.parts import uses_conv1d
from lit_lora.settings import check_number, coerce_settings


@dataclass
class LoraSettings:
    """LoRA adapter settings, passed to `peft.LoraConfig` under PEFT's names.

    Args:
        r: LoRA rank (the inner dimension of A and B).
        alpha: LoRA scaling numerator (`lora_alpha`); the update is scaled by alpha / r. Usually alpha = 2 * r.
        dropout: Dropout on the LoRA branch input (`lora_dropout`).
        target_modules: Module names (or suffixes) to adapt, or "all-linear". Default: the family's own list
            (lora/targets.py): GPT-2 c_attn, c_proj; Llama, Mistral, Qwen2/3, Gemma 2 q/k/v/o_proj and
            gate/up/down_proj; other families in the README's table; a family not listed: all-linear.
        bias: Which biases train: "none", "all" or "lora_only".
        use_rslora: Scale by alpha / sqrt(r) (rank-stabilised LoRA).
        use_dora: Weight-decomposed LoRA (DoRA).
        init_lora_weights: True (B = 0), False (random), or a PEFT init scheme such as "gaussian", "pissa", "olora".
        modules_to_save: Extra modules trained fully and saved with the adapter (e.g. ["lm_head"]).
        extra: Any other `peft.LoraConfig` field, passed through unchanged (e.g. {"layers_to_transform": [0, 1]}).
    """

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: Union[list[str], str, None] = None
    bias: Literal["none", "all", "lora_only"] = "none"
    use_rslora: bool = False
    use_dora: bool = False
    init_lora_weights: Union[bool, str] = True
    modules_to_save: Optional[list[str]] = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.r, int) or self.r <= 0:
            raise LitLoraError(f"model.lora.r must be a positive integer, got {self.r!r}")
        # alpha 0 scales every update to nothing: the adapter could never change the output.
        check_number("model.lora.alpha", self.alpha, above=0)
        check_number("model.lora.dropout", self.dropout, at_least=0, below=1)
        if isinstance(self.target_modules, (list, tuple)) and not self.target_modules:
            raise LitLoraError("model.lora.target_modules is empty; expected module names such as ['c_attn', 'c_proj']")

    @classmethod
    def coerce(cls, value: "LoraSettings | dict | None") -> "LoraSettings":
        return coerce_settings(cls, value, "model.lora")

    @classmethod
    def from_peft_config(cls, config: Any) -> "LoraSettings":
        targets = config.target_modules
        return cls(
            r=config.r,
            alpha=config.lora_alpha,
            dropout=config.lora_dropout,
            target_modules=sorted(targets) if isinstance(targets, (set, list, tuple)) else targets,
            bias=config.bias,
            use_rslora=config.use_rslora,
            use_dora=bool(config.use_dora),
            init_lora_weights=config.init_lora_weights,
            modules_to_save=list(config.modules_to_save) if config.modules_to_save else None,
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_peft_config(self, model: Any) -> Any:
        from peft import LoraConfig, TaskType

        if self.target_modules is None:
            raise LitLoraError("model.lora.target_modules is not resolved; call lora.targets.resolve_targets first")
        targets = self.target_modules if isinstance(self.target_modules, str) else list(self.target_modules)
        kwargs: dict[str, Any] = dict(
            task_type=TaskType.CAUSAL_LM,
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=targets,
            bias=self.bias,
            use_rslora=self.use_rslora,
            use_dora=self.use_dora,
            init_lora_weights=self.init_lora_weights,
            modules_to_save=self.modules_to_save,
            # GPT-2 stores its projections as Conv1D (weight is in x out); PEFT must transpose for them.
            fan_in_fan_out=uses_conv1d(model),
        )
        unknown = set(self.extra) - set(LoraConfig.__dataclass_fields__)
        if unknown:
            raise LitLoraError(f"model.lora.extra has unknown LoraConfig fields {sorted(unknown)}")
        kwargs.update(self.extra)
        try:
            return LoraConfig(**kwargs)
        except (ValueError, TypeError) as err:
            raise LitLoraError(f"invalid LoRA settings for PEFT's LoraConfig: {err}") from err
