"""A preference run that starts from an adapter (`--model.adapter_path`, e.g. an SFT result): its reference is
a frozen copy of that adapter ("ref"), not the base with the adapter off. At step 0 the policy equals the
reference (DPO's loss log 2, rewards 0); training moves only the first copy; the copy never reaches the
optimizer, the checkpoint, the exported adapter or the base fingerprint; a resumed run rebuilds it."""

from __future__ import annotations

import math

import pytest
import torch

from lit_lora.estimate.model_summary import count_parameters, summary_lines
from lit_lora.lora.build import without_weights
from lit_lora.lora.export import export_adapter
from lit_lora.objectives.base import StepLayout
from lit_lora.objectives.kto import KTO
from lit_lora.objectives.logps import concatenated, reference_policy, sequence_logps
from lit_lora.objectives.preference import Preference
from lit_lora.training.module import LitLora

PROMPT, CHOSEN, REJECTED = [5, 6, 7, 8], [9, 10, 11], [12, 13, 14, 15]


@pytest.fixture(scope="module")
def sft_adapter(tiny_model_dir, tmp_path_factory):
    """An adapter whose lora_B is not zero, as an SFT run leaves it: base + adapter != base."""
    folder = tmp_path_factory.mktemp("sft-adapter")
    module = LitLora(model_name_or_path=str(tiny_model_dir), block_size=32, gradient_checkpointing=False)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in module.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    module.model.save_pretrained(str(folder))
    return folder


def _dpo(tiny_model_dir, adapter, objective=None):
    return LitLora(model_name_or_path=str(tiny_model_dir), block_size=32, gradient_checkpointing=False,
                   adapter_path=str(adapter), objective=objective or Preference(beta=0.5))


def _batch():
    def side(answer):
        ids = torch.tensor([PROMPT + answer, PROMPT[::-1] + answer[::-1]])
        return ids, ids.masked_fill(torch.arange(ids.shape[1]) < len(PROMPT), -100)

    (c, cl), (r, rl) = side(CHOSEN), side(REJECTED)
    return {"chosen_input_ids": c, "chosen_labels": cl, "rejected_input_ids": r, "rejected_labels": rl}


def _logps(model, batch, reference=False):
    with torch.no_grad():
        if not reference:
            return sequence_logps(model, *concatenated(batch, "chosen", "rejected")).logps
        with reference_policy(model):
            return sequence_logps(model, *concatenated(batch, "chosen", "rejected")).logps


def _lora(module, adapter):
    return {n: p.detach().clone() for n, p in module.model.named_parameters() if f".{adapter}." in n}


def test_the_reference_is_the_starting_adapter_and_stays_frozen(tiny_model_dir, sft_adapter):
    module, batch = _dpo(tiny_model_dir, sft_adapter), _batch()
    assert module.reference == (f"reference: a frozen copy of adapter {sft_adapter} (11,264 parameters, "
                                "not trained)")
    model = module.model.eval()
    with torch.no_grad(), model.disable_adapter():
        base = sequence_logps(model, *concatenated(batch, "chosen", "rejected")).logps
    assert (base - _logps(model, batch)).abs().min() > 1e-3  # the adapter changes the model
    # Step 0: the reference is the policy itself, so every reward is 0 and the DPO loss log 2 exactly.
    assert torch.equal(_logps(model, batch, reference=True), _logps(model, batch))
    module.objective.update_eval(model, batch)
    start = module.objective.compute_eval()
    assert float(start["loss"]) == pytest.approx(math.log(2), abs=1e-7)
    assert float(start["rewards/chosen"]) == 0 and float(start["rewards/margins"]) == 0

    model.train()
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(".default." in n for n in trained)
    optimizer = module.configure_optimizers()["optimizer"]
    params = [id(p) for group in optimizer.param_groups for p in group["params"]]
    assert sorted(params) == sorted(id(p) for n, p in model.named_parameters() if n in trained)
    before, ref_before = _lora(module, "default"), _lora(module, "ref")
    for _ in range(3):
        loss, _ = module.objective.training_loss(model, batch, True, StepLayout(1, 1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        # A reference pass activates "ref" (PEFT marks it trainable): afterwards the same weights train.
        assert {n for n, p in model.named_parameters() if p.requires_grad} == trained
    assert model.active_adapter == "default"
    assert all(torch.equal(ref_before[n], p) for n, p in _lora(module, "ref").items())
    assert all(not torch.equal(before[n], p) for n, p in _lora(module, "default").items())
    assert [id(p) for group in optimizer.param_groups for p in group["params"]] == params
    assert (_logps(model.eval(), batch) - _logps(model, batch, reference=True)).abs().max() > 1e-3


def test_the_copy_stays_out_of_checkpoints_exports_counts_and_the_fingerprint(tiny_model_dir, sft_adapter, tmp_path):
    module = _dpo(tiny_model_dir, sft_adapter)
    sft = LitLora(model_name_or_path=str(tiny_model_dir), block_size=32, gradient_checkpointing=False,
                  adapter_path=str(sft_adapter))
    assert sft.reference is None and "ref" not in sft.model.peft_config
    assert module.trainable_keys() == sft.trainable_keys() and all(".default." in k for k in sft.trainable_keys())
    assert module.base_fingerprint() == sft.base_fingerprint()  # a resumed or exported run checks it
    counts, sft_counts = count_parameters(module.model), count_parameters(sft.model)
    assert (counts.base, counts.trainable) == (sft_counts.base, sft_counts.trainable)
    assert counts.total == sft_counts.total + 11_264  # the copy is in memory, frozen
    lines = summary_lines(module.model, module.lora_settings, None, 32, "32-true", "cpu", False, module.reference)
    assert lines[3] == module.reference
    with without_weights():  # `summary` builds the copy's shapes on the meta device
        meta = _dpo(tiny_model_dir, sft_adapter)
    assert count_parameters(meta.model) == counts and meta.reference == module.reference

    # What the end of `fit` does: export the checkpoint's weights with the model in memory.
    checkpoint = {"state_dict": module.trainable_state_dict()}
    out = export_adapter(module, str(tmp_path / "adapter"), checkpoint=checkpoint)
    from safetensors.torch import load_file

    assert not [p.name for p in out.iterdir() if p.is_dir()]  # PEFT writes each other adapter into a subfolder
    saved = load_file(str(out / "adapter_model.safetensors"))
    assert len(saved) == len(checkpoint["state_dict"]) and not [k for k in saved if ".ref" in k]


def test_a_resumed_run_rebuilds_the_same_reference(tiny_model_dir, sft_adapter):
    # `--ckpt_path` keeps the checkpoint's adapter_path (cli/resume.py) and loads the trained LoRA weights
    # over the first copy only: the reference is again the starting adapter, not the trained one.
    first, batch = _dpo(tiny_model_dir, sft_adapter), _batch()
    with torch.no_grad():
        for name, p in first.model.named_parameters():
            if ".default." in name and "lora_B" in name:
                p.add_(0.1)
    resumed = _dpo(tiny_model_dir, sft_adapter)
    resumed.load_state_dict(first.trainable_state_dict(), strict=False)
    first.model.eval(), resumed.model.eval()
    assert torch.equal(_logps(resumed.model, batch), _logps(first.model, batch))
    assert torch.equal(_logps(resumed.model, batch, reference=True), _logps(first.model, batch, reference=True))


@pytest.mark.parametrize("objective", [Preference("orpo"), Preference("simpo"), None, KTO()],
                         ids=["orpo", "simpo", "sft", "kto"])
def test_only_a_loss_with_a_reference_gets_the_copy(objective, tiny_model_dir, sft_adapter):
    module = LitLora(model_name_or_path=str(tiny_model_dir), block_size=32, gradient_checkpointing=False,
                     adapter_path=str(sft_adapter), objective=objective)
    assert ("ref" in module.model.peft_config) == isinstance(objective, KTO)
    assert (module.reference is not None) == isinstance(objective, KTO)
