"""The preference objectives against TRL's own trainers (the oracle): on a tiny GPT-2 with a LoRA adapter whose
weights differ from the base (policy != reference), TRL builds and collates a batch of pairs of different
lengths, computes its loss and metrics, and ours, fed the same token ids, give the same numbers to 1e-5."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from lit_lora.constants import IGNORE_INDEX
from lit_lora.objectives.base import StepLayout
from lit_lora.objectives.kto import KTO
from lit_lora.objectives.logps import concatenated, reference_policy, sequence_logps
from lit_lora.objectives.preference import Preference

os.environ.setdefault("HF_HUB_OFFLINE", "1")
trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")
peft = pytest.importorskip("peft")

TOKENIZER = Path(__file__).resolve().parents[3] / "examples" / "quickstart" / "tokenizer"
PAIRS = {"prompt": ["The cat sat", "Why is the sky blue? Tell me", "Say hi", "Two plus two is"],
         "chosen": [" on the mat.", " Rayleigh scattering of sunlight.", " Hi!", " four."],
         "rejected": [" down", " Because it is, and that is all there is to it.", " No.", " five, I think."]}
UNPAIRED = {"prompt": PAIRS["prompt"], "completion": [" on the mat.", " Because it is.", " Hi!", " five."],
            "label": [True, False, True, False]}
METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
           "logps/rejected")
TOL = 1e-5


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    path = TOKENIZER if TOKENIZER.exists() else Path(__file__).resolve().parents[4] / "shared/data/gpt2-tokenizer"
    tok = AutoTokenizer.from_pretrained(str(path))
    tok.pad_token = tok.pad_token or tok.eos_token
    return tok


def tiny_peft_model(tokenizer: Any) -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=64, vocab_size=len(tokenizer),
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"], lora_dropout=0.0,
                           fan_in_fan_out=True)
    return peft.get_peft_model(GPT2LMHeadModel(config), lora)


def diverge(model: Any) -> None:
    """Give the trained adapter non-zero lora_B, so the policy is not the reference; drop TRL's "ref" copy of
    it, so both sides take the base with the adapter off as the reference."""
    if "ref" in model.peft_config:
        model.delete_adapter("ref")
    model.set_adapter("default")
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def trainer_for(kind: str, tokenizer: Any, data: dict[str, list], tmp_path: Path, **settings: Any) -> Any:
    if kind == "dpo":
        from trl import DPOConfig as Config, DPOTrainer as Trainer
    elif kind == "kto":
        from trl import KTOConfig as Config, KTOTrainer as Trainer
    elif kind == "orpo":
        from trl.experimental.orpo import ORPOConfig as Config, ORPOTrainer as Trainer
    else:
        from trl.experimental.cpo import CPOConfig as Config, CPOTrainer as Trainer
    args = Config(output_dir=str(tmp_path), per_device_train_batch_size=4, report_to=[], use_cpu=True,
                  seed=0, **settings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = Trainer(model=tiny_peft_model(tokenizer), args=args, train_dataset=datasets.Dataset.from_dict(data),
                          processing_class=tokenizer)
    diverge(trainer.model)
    trainer.model.train()
    return trainer


def labelled(ids: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    return ids.masked_fill(completion_mask == 0, IGNORE_INDEX)


def from_dpo_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """TRL's DPO batch is [chosen rows; rejected rows] with a completion mask; ours keeps the two apart."""
    b = batch["input_ids"].shape[0] // 2
    labels = labelled(batch["input_ids"], batch["completion_mask"])
    out = {}
    for side, rows in (("chosen", slice(0, b)), ("rejected", slice(b, None))):
        out[f"{side}_input_ids"] = batch["input_ids"][rows]
        out[f"{side}_attention_mask"] = batch["attention_mask"][rows]
        out[f"{side}_labels"] = labels[rows]
    return out


def from_kto_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"completion_input_ids": batch["input_ids"], "completion_attention_mask": batch["attention_mask"],
            "completion_labels": labelled(batch["input_ids"], batch["completion_mask"]),
            "kl_input_ids": batch["KL_input_ids"], "kl_attention_mask": batch["KL_attention_mask"],
            "kl_labels": labelled(batch["KL_input_ids"], batch["KL_completion_mask"]), "label": batch["label"]}


def first_batch(trainer: Any) -> dict[str, torch.Tensor]:
    batch = next(iter(trainer.get_train_dataloader()))
    return {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}


def ours(objective: Any, model: Any, batch: dict[str, torch.Tensor]) -> tuple[dict[str, float], dict[str, float]]:
    """(training metrics with the loss it backpropagates, evaluation metrics) of one batch."""
    loss, metrics = objective.training_loss(model, batch, True, StepLayout(1, 1))
    assert torch.allclose(loss.detach(), metrics["loss"])
    objective.update_eval(model, batch)
    return ({k: float(v) for k, v in metrics.items()}, {k: float(v) for k, v in objective.compute_eval().items()})


def assert_same(trl_values: dict[str, float], train: dict[str, float], val: dict[str, float], names: tuple) -> None:
    diffs = {name: abs(trl_values[name] - train[name]) for name in names}
    print("max abs difference", max(diffs.values()), {k: trl_values[k] for k in names})
    for name in names:
        assert diffs[name] <= TOL, (name, trl_values[name], train[name])
        assert abs(val[name] - train[name]) <= TOL, name


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
def test_dpo_equals_dpotrainer(loss_type: str, tokenizer: Any, tmp_path: Path) -> None:
    beta = {"sigmoid": 0.1, "ipo": 0.5, "hinge": 0.3}[loss_type]
    trainer = trainer_for("dpo", tokenizer, PAIRS, tmp_path, loss_type=[loss_type], beta=beta)
    batch = first_batch(trainer)
    trl_loss = float(trainer.compute_loss(trainer.model, batch).detach())
    trl_values = {"loss": trl_loss, **{k: v[-1] for k, v in trainer._metrics["train"].items()}}
    train, val = ours(Preference(loss_type, beta=beta), trainer.model, from_dpo_batch(batch))
    assert trl_values["rewards/chosen"] != 0 and trl_values["rewards/rejected"] != 0  # policy != reference
    assert_same(trl_values, train, val, ("loss", *METRICS))


def test_dpo_reference_adapter_and_precomputed(tokenizer: Any, tmp_path: Path) -> None:
    """A frozen adapter named "ref" is the reference (TRL's convention, as when training starts from an
    adapter); precomputed reference log-probabilities in the batch give the same loss without that pass."""
    trainer = trainer_for("dpo", tokenizer, PAIRS, tmp_path, loss_type=["sigmoid"], beta=0.2)
    model = trainer.model
    model.add_adapter("ref", model.peft_config["default"])
    model.set_adapter("default")
    with torch.no_grad():  # the reference adapter: half the trained one's lora_B
        for name, p in model.named_parameters():
            if "lora_B.ref" in name:
                p.copy_(dict(model.named_parameters())[name.replace(".ref.", ".default.")] * 0.5)
    batch = first_batch(trainer)
    trl_loss = float(trainer.compute_loss(model, batch).detach())
    trl_values = {"loss": trl_loss, **{k: v[-1] for k, v in trainer._metrics["train"].items()}}
    objective = Preference("sigmoid", beta=0.2)
    train, val = ours(objective, model, from_dpo_batch(batch))
    assert_same(trl_values, train, val, ("loss", *METRICS))
    assert model.active_adapter == "default"
    ours_batch = from_dpo_batch(batch)
    with reference_policy(model):
        ref = sequence_logps(model, *concatenated(ours_batch, "chosen", "rejected")).logps.chunk(2)
    precomputed = {**ours_batch, "ref_chosen_logps": ref[0], "ref_rejected_logps": ref[1]}
    loss, _ = Preference("sigmoid", beta=0.2).training_loss(model, precomputed, True, StepLayout(1, 1))
    assert abs(float(loss) - trl_loss) <= TOL


def test_orpo_equals_orpotrainer(tokenizer: Any, tmp_path: Path) -> None:
    trainer = trainer_for("orpo", tokenizer, PAIRS, tmp_path, beta=0.25)
    batch = first_batch(trainer)
    loss, trl_values = trainer.get_batch_loss_metrics(trainer.model, batch)
    train, val = ours(Preference("orpo", beta=0.25), trainer.model, batch)
    assert_same({"loss": float(loss), **trl_values}, train, val, ("loss", *METRICS))


@pytest.mark.parametrize(("loss_type", "settings"), [
    ("simpo", {"simpo_gamma": 0.5, "cpo_alpha": 0.0, "beta": 2.0}),
    ("simpo", {"simpo_gamma": 0.3, "cpo_alpha": 1.0, "beta": 2.0, "label_smoothing": 0.1}),
])
def test_simpo_equals_cpotrainer(loss_type: str, settings: dict, tokenizer: Any, tmp_path: Path) -> None:
    trainer = trainer_for("cpo", tokenizer, PAIRS, tmp_path, loss_type=loss_type, **settings)
    batch = first_batch(trainer)
    loss, trl_values = trainer.get_batch_loss_metrics(trainer.model, batch)
    train, val = ours(Preference(loss_type, **settings), trainer.model, batch)
    assert_same({"loss": float(loss), **trl_values}, train, val, ("loss", *METRICS))


def test_label_smoothing_equals_cpotrainer_sigmoid(tokenizer: Any, tmp_path: Path) -> None:
    """TRL 1.16's DPOTrainer drops label_smoothing from "sigmoid"; its CPOTrainer keeps conservative DPO's
    formula on log p(c) - log p(r), which is ours with reference log-probabilities of 0."""
    trainer = trainer_for("cpo", tokenizer, PAIRS, tmp_path, loss_type="sigmoid", cpo_alpha=0.0, beta=0.1,
                          label_smoothing=0.2)
    batch = first_batch(trainer)
    loss, trl_values = trainer.get_batch_loss_metrics(trainer.model, batch)
    zeros = torch.zeros(batch["chosen_input_ids"].shape[0])
    ours_batch = {**batch, "ref_chosen_logps": zeros, "ref_rejected_logps": zeros}
    train, val = ours(Preference("sigmoid", beta=0.1, label_smoothing=0.2), trainer.model, ours_batch)
    assert_same({"loss": float(loss), **trl_values}, train, val, ("loss", *METRICS))


def test_kto_equals_ktotrainer(tokenizer: Any, tmp_path: Path) -> None:
    settings = {"beta": 0.3, "desirable_weight": 1.0, "undesirable_weight": 1.5}
    trainer = trainer_for("kto", tokenizer, UNPAIRED, tmp_path, **settings)
    batch = first_batch(trainer)
    trl_loss = float(trainer.compute_loss(trainer.model, batch).detach())
    trl_values = {"loss": trl_loss, **{k: v[-1] for k, v in trainer._metrics["train"].items()}}
    assert trl_values["kl"] > 0  # the KL term is exercised, not clamped away
    train, val = ours(KTO(**settings), trainer.model, from_kto_batch(batch))
    names = ("loss", "kl", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected")
    assert_same(trl_values, train, val, names)


def lora_grads(model: Any) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def sliced(batch: dict[str, torch.Tensor], rows: slice) -> dict[str, torch.Tensor]:
    return {k: v[rows] for k, v in batch.items()}


@pytest.mark.parametrize("objective", [Preference("sigmoid"), Preference("ipo", beta=0.5),
                                       Preference("hinge"), Preference("simpo", beta=2.0), KTO()],
                         ids=["sigmoid", "ipo", "hinge", "simpo", "kto"])
def test_accumulation_gives_one_batch_gradient(objective: Any, tokenizer: Any) -> None:
    """Two micro-batches (1 and 3 pairs) of a step of 4 give the gradient of one batch of all 4."""
    model = tiny_peft_model(tokenizer)
    diverge(model)
    enc = lambda texts: tokenizer(texts, return_tensors="pt", padding=True, padding_side="right")  # noqa: E731
    if isinstance(objective, KTO):
        keys = [("completion", UNPAIRED["completion"])]
    else:
        keys = [("chosen", PAIRS["chosen"]), ("rejected", PAIRS["rejected"])]
    batch: dict[str, torch.Tensor] = {}
    for side, completions in keys:
        texts = [p + c for p, c in zip(PAIRS["prompt"], completions)]
        full = enc(texts)
        prompt_lens = [len(tokenizer(p)["input_ids"]) for p in PAIRS["prompt"]]
        labels = full["input_ids"].masked_fill(full["attention_mask"] == 0, IGNORE_INDEX)
        for row, n in enumerate(prompt_lens):
            labels[row, :n] = IGNORE_INDEX
        batch.update({f"{side}_input_ids": full["input_ids"], f"{side}_attention_mask": full["attention_mask"],
                      f"{side}_labels": labels})
    if isinstance(objective, KTO):
        batch["label"] = torch.tensor(UNPAIRED["label"])
    loss, _ = objective.training_loss(model, batch, True, StepLayout(1, 1))
    loss.backward()
    whole = lora_grads(model)
    model.zero_grad()
    step = {"step_target_tokens": torch.tensor(4)}
    for i, rows in enumerate((slice(0, 1), slice(1, 4))):
        loss, _ = objective.training_loss(model, {**sliced(batch, rows), **step}, i == 0, StepLayout(2, 1))
        (loss / 2).backward()  # Lightning divides each micro-batch's loss by the accumulation
    for name, grad in lora_grads(model).items():
        torch.testing.assert_close(grad, whole[name], rtol=1e-5, atol=1e-7)
