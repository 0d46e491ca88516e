"""How completions are generated: one settings class for `generate`, `predict` and validation samples."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional, Union

from lit_lora.errors import LitLoraError
from lit_lora.settings import check_number, coerce_settings


@dataclass
class GenerationSettings:
    """How completions are generated (the same for `generate` and `predict`).

    Args:
        max_new_tokens: Tokens generated after each prompt; fewer when the model emits EOS.
        temperature: 0 is greedy decoding (deterministic, no seed needed); above 0 samples, higher is more random.
        top_k: When sampling, draw only from the k most likely tokens; 0 or None: no limit.
        top_p: When sampling, draw from the smallest set of tokens whose probabilities add up to top_p (nucleus);
            1.0: no limit.
        num_return_sequences: Completions per prompt (needs sampling: greedy would repeat one).
        seed: Seed of the sampling RNG, reset before each batch: the same seed, prompts and batch size give
            the same text. None: a different draw every run.
    """

    max_new_tokens: int = 64
    temperature: float = 0.8
    top_k: Optional[int] = 50
    top_p: float = 1.0
    num_return_sequences: int = 1
    seed: Optional[int] = 1234

    def __post_init__(self) -> None:
        check_number("max_new_tokens", self.max_new_tokens, at_least=1, integer=True)
        check_number("temperature", self.temperature, at_least=0)  # 0 is greedy
        if self.top_k is not None:
            check_number("top_k", self.top_k, at_least=0, integer=True)  # 0: no limit
        check_number("top_p", self.top_p, above=0, at_most=1)
        check_number("num_return_sequences", self.num_return_sequences, at_least=1, integer=True)
        if self.seed is not None:
            check_number("seed", self.seed, at_least=0, integer=True)
        if self.greedy and self.num_return_sequences > 1:
            raise LitLoraError(
                "num_return_sequences > 1 needs sampling (temperature > 0): greedy decoding gives one completion"
            )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @classmethod
    def coerce(cls, value: "GenerationSettings | dict | None") -> "GenerationSettings":
        return coerce_settings(cls, value, "generation settings")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def generate_kwargs(self, eos_token_id: Union[int, list[int]]) -> dict[str, Any]:
        """Keyword arguments for `model.generate`; every value is set so the model's own
        generation_config (e.g. the hub's defaults for gpt2) cannot change what the user asked for.
        `eos_token_id`: the id, or ids (EOS first), that end a sequence."""
        stop = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
        kwargs: dict[str, Any] = dict(
            max_new_tokens=self.max_new_tokens,
            num_return_sequences=self.num_return_sequences,
            eos_token_id=stop[0] if len(stop) == 1 else stop,
            pad_token_id=stop[0],  # finished rows are padded with EOS; cut off by decode_completion
        )
        if self.greedy:
            # None, not 1.0/50: transformers warns about sampling settings passed to greedy decoding.
            return kwargs | dict(do_sample=False, temperature=None, top_k=None, top_p=None)
        return kwargs | dict(do_sample=True, temperature=self.temperature, top_k=self.top_k or 0, top_p=self.top_p)
