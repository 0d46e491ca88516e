"""`fit` says once, at its start, when the adapter it trains cannot be served as an adapter."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from lit_lora.callbacks.run_summary import RunSummary
from lit_lora.lora import LoraSettings
from lit_lora.objectives.sft import SupervisedNll


@pytest.mark.parametrize("lora, said", [
    (LoraSettings(use_dora=True), "with DoRA do not load in vLLM or llama.cpp; merge the result"),
    (LoraSettings(modules_to_save=["lm_head"]), "with modules_to_save ['lm_head'] do not load"),
    (LoraSettings(use_rslora=True), None),  # export folds rsLoRA: it serves
])
def test_fit_says_when_its_adapter_cannot_be_served(monkeypatch, capsys, lora, said):
    monkeypatch.setattr("lit_lora.callbacks.run_summary.summary_lines", lambda *a: ["model summary"])
    module = SimpleNamespace(model=None, lora_settings=lora, block_size=8, gradient_checkpointing=False,
                             memory_marks={}, device="cpu", reference=None, objective=SupervisedNll())
    RunSummary().on_fit_start(SimpleNamespace(is_global_zero=True, datamodule=None, precision="32"), module)
    serving = [line for line in capsys.readouterr().err.splitlines() if "serving:" in line]
    assert len(serving) == (1 if said else 0), serving
    if said:
        assert said in serving[0] and serving[0].startswith("lit_lora: serving: adapters ")
