"""Which serving engines load an adapter as it is, read from its `adapter_config.json` (PEFT's names): one
line per engine for `export`, and one line at the start of `fit` when the chosen options cannot be served
as an adapter. The rules are data: what vLLM's `PEFTHelper` refuses or ignores, and what llama.cpp's
`convert_lora_to_gguf.py` stops on or ignores. A merged model (`merge`) serves in both in every case."""

from __future__ import annotations

from typing import Any, Callable, Optional

# vLLM's `MaxLoRARanks`: the only values its `--max-lora-rank` takes.
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)

# Inits that rewrite the base weights in memory: their adapter fits only that changed base.
BASE_CHANGING_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga")

Rule = tuple[Callable[[dict[str, Any]], bool], str]


def _init_changes_base(config: dict[str, Any]) -> bool:
    return str(config.get("init_lora_weights")).lower().startswith(BASE_CHANGING_INITS)


# (test on the adapter config, why the engine cannot serve it), first match wins.
VLLM_RULES: list[Rule] = [
    (lambda c: bool(c.get("use_dora")), "DoRA: vLLM does not support lora_magnitude_vector"),
    (lambda c: bool(c.get("modules_to_save")),
     "modules_to_save {modules_to_save}: vLLM only loads adapters without modules_to_save"),
    (_init_changes_base, "init {init_lora_weights}: the adapter fits the base that init changed, not the original"),
    (lambda c: bool(c.get("rank_pattern") or c.get("alpha_pattern")),
     "rank_pattern/alpha_pattern: vLLM scales every module by lora_alpha/r and would answer differently"),
    (lambda c: max_rank(c) > VLLM_MAX_LORA_RANKS[-1], "rank {rank} is above vLLM's largest --max-lora-rank (512)"),
]
LLAMA_CPP_RULES: list[Rule] = [
    (lambda c: bool(c.get("use_dora")), "DoRA: convert_lora_to_gguf.py stops on lora_magnitude_vector"),
    (lambda c: bool(c.get("modules_to_save")),
     "modules_to_save {modules_to_save}: convert_lora_to_gguf.py stops on full (non-LoRA) weights"),
    (lambda c: c.get("bias", "none") != "none",
     "bias {bias}: convert_lora_to_gguf.py stops on the bias tensors the adapter holds"),
    (_init_changes_base, "init {init_lora_weights}: the adapter fits the base that init changed, not the original"),
    (lambda c: bool(c.get("alpha_pattern")), "alpha_pattern: llama.cpp reads one lora_alpha for every module"),
    (lambda c: bool(c.get("use_rslora")), "rsLoRA: llama.cpp scales by lora_alpha/r, rsLoRA by lora_alpha/sqrt(r)"),
]


def max_rank(config: dict[str, Any]) -> int:
    """The adapter's largest rank: `r` or any `rank_pattern` value."""
    return max([int(config.get("r") or 0), *(int(v) for v in (config.get("rank_pattern") or {}).values())])


def vllm_max_lora_rank(rank: int) -> Optional[int]:
    """The smallest `--max-lora-rank` vLLM accepts that holds `rank`; None above 512."""
    return next((allowed for allowed in VLLM_MAX_LORA_RANKS if allowed >= rank), None)


def _refusal(rules: list[Rule], config: dict[str, Any]) -> Optional[str]:
    for test, why in rules:
        if test(config):
            named = {k: config.get(k) for k in ("modules_to_save", "init_lora_weights", "bias")}
            return why.format(rank=max_rank(config), **named)
    return None


def llama_cpp_refusal(config: dict[str, Any]) -> Optional[str]:
    """Why llama.cpp cannot serve the adapter `config` describes; None when it can."""
    return _refusal(LLAMA_CPP_RULES, config)


def engine_lines(config: dict[str, Any]) -> list[str]:
    """One line per engine for the adapter `config` describes: how it loads, or why not and that `merge`
    serves it."""
    vllm, llama = _refusal(VLLM_RULES, config), llama_cpp_refusal(config)
    rank = max_rank(config)
    return [
        f"vLLM: cannot serve this adapter ({vllm}); merge serves it" if vllm else
        f"vLLM: loads as a LoRA adapter (pass --max-lora-rank {vllm_max_lora_rank(rank)}; its largest rank is {rank})",
        f"llama.cpp: cannot serve this adapter ({llama}); merge serves it" if llama else
        "llama.cpp: converts with llama.cpp's convert_lora_to_gguf.py",
    ]


def fit_line(use_dora: bool, modules_to_save: Optional[list[str]]) -> Optional[str]:
    """What `fit` says once at its start when its adapter will not serve in vLLM or llama.cpp; None if it will."""
    why = [what for what, chosen in (("DoRA", use_dora), (f"modules_to_save {modules_to_save}", modules_to_save))
           if chosen]
    if not why:
        return None
    return (f"serving: adapters with {' and '.join(why)} do not load in vLLM or llama.cpp; merge the result "
            "(python -m lit_lora.cli merge) to serve it")
