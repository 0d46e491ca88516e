"""The per-engine lines `export` prints and the line `fit` starts with, for each LoRA variant, from the
adapter config alone (what vLLM's PEFTHelper refuses, what llama.cpp's converter stops on)."""

from __future__ import annotations

import pytest

from lit_lora.lora.serving import engine_lines, fit_line, vllm_max_lora_rank

PLAIN = {"r": 8, "lora_alpha": 16, "use_rslora": False, "use_dora": False, "modules_to_save": None,
         "rank_pattern": {}, "alpha_pattern": {}, "bias": "none", "init_lora_weights": True}


@pytest.mark.parametrize("changes, vllm, llama", [
    ({}, "loads as a LoRA adapter (pass --max-lora-rank 8; its largest rank is 8)", "converts with"),
    ({"r": 16, "lora_alpha": 64.0}, "--max-lora-rank 16; its largest rank is 16", "converts with"),
    ({"r": 17}, "--max-lora-rank 32; its largest rank is 17", "converts with"),
    ({"r": 300}, "--max-lora-rank 320;", "converts with"),
    # As PEFT saves it; export rewrites it as plain LoRA (the first row).
    ({"use_rslora": True}, "loads as a LoRA adapter", "cannot serve this adapter (rsLoRA: llama.cpp scales by lora_alpha/r"),
    ({"use_dora": True}, "cannot serve this adapter (DoRA: vLLM does not support lora_magnitude_vector); merge serves it",
     "cannot serve this adapter (DoRA: convert_lora_to_gguf.py stops on lora_magnitude_vector); merge serves it"),
    ({"modules_to_save": ["lm_head"]}, "cannot serve this adapter (modules_to_save ['lm_head']: vLLM only loads",
     "cannot serve this adapter (modules_to_save ['lm_head']: convert_lora_to_gguf.py stops on full"),
    ({"rank_pattern": {"q_proj": 64}}, "cannot serve this adapter (rank_pattern/alpha_pattern: vLLM scales every",
     "converts with"),  # llama.cpp scales by each tensor's own rank
    ({"alpha_pattern": {"q_proj": 4}}, "rank_pattern/alpha_pattern", "(alpha_pattern: llama.cpp reads one lora_alpha"),
    ({"r": 1024}, "cannot serve this adapter (rank 1024 is above vLLM's largest --max-lora-rank (512))", "converts"),
    ({"init_lora_weights": "pissa"}, "(init pissa: the adapter fits the base that init changed", "(init pissa:"),
    ({"bias": "lora_only"}, "loads as a LoRA adapter", "(bias lora_only: convert_lora_to_gguf.py stops on the bias"),
])
def test_engine_lines_for_each_lora_variant(changes, vllm, llama):
    got_vllm, got_llama = engine_lines({**PLAIN, **changes})
    assert got_vllm.startswith("vLLM: ") and vllm in got_vllm, got_vllm
    assert got_llama.startswith("llama.cpp: ") and llama in got_llama, got_llama
    for line in (got_vllm, got_llama):
        assert ("cannot" in line) == line.endswith("; merge serves it")


def test_max_lora_rank_is_the_smallest_value_vllm_accepts():
    assert [vllm_max_lora_rank(r) for r in (1, 2, 8, 9, 256, 257, 321, 512, 513)] == [1, 8, 8, 16, 256, 320, 512, 512, None]


def test_fit_names_what_cannot_be_served_as_an_adapter():
    assert fit_line(False, None) is None and fit_line(False, []) is None
    assert fit_line(True, None) == ("serving: adapters with DoRA do not load in vLLM or llama.cpp; merge the result "
                                    "(python -m lit_lora.cli merge) to serve it")
    assert "with DoRA and modules_to_save ['lm_head'] do not load" in fit_line(True, ["lm_head"])
