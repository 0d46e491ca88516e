"""Precomputed reference log-probabilities (`callbacks.reference_logps`): the columns hold what `sequence_logps`
gives each pair under the reference (the adapter off), a second start reuses them from the cache, the cache
key changes with the data, the template, the block size and the starting adapter, and an objective without a
reference says it ignores the option."""

from __future__ import annotations

import contextlib
import json
from types import SimpleNamespace

import pytest
import torch

from lit_lora.callbacks.reference_logps import ReferenceLogps, reference_fingerprint
from lit_lora.data.batches import RowsView
from lit_lora.data.preference import build_preference_split
from lit_lora.data.preference_batches import PreferenceCollator
from lit_lora.data.reference_logps import reference_key
from lit_lora.generation.chat import PLAIN
from lit_lora.objectives.kto import KTO
from lit_lora.objectives.logps import reference_policy, sequence_logps
from lit_lora.objectives.preference import Preference
from lit_lora.pretrained.hub import load_tokenizer
from lit_lora.training.module import LitLora

PAIRS = [{"prompt": f"What does {n} sell?", "chosen": f" {n} sells apples. Bye!", "rejected": f" {n} sells a very long rope."}
         for n in ("Ann", "Bob", "Cid", "Dee", "Eve")]


def _write(path, records):
    if path.exists():  # rewritten, a file is other data (its fingerprint holds its time)
        return str(path)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def module(tiny_model_dir):
    lit = LitLora(model_name_or_path=str(tiny_model_dir), block_size=64)
    torch.manual_seed(0)
    with torch.no_grad():  # LoRA's B starts at zero: move it, so the policy differs from the reference
        for name, p in lit.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return lit.eval()  # the tiny model has dropout; the precomputed reference runs without it


def _split(tmp_path, tok, records, block_size=64, template=None, name="pairs.jsonl"):
    return build_preference_split(tok, block_size, str(tmp_path / "cache"), files=[_write(tmp_path / name, records)],
                                  chat_template=template)


def _trainer(data, objective=None):
    return SimpleNamespace(global_rank=0, world_size=1, is_global_zero=True, precision="32-true", datamodule=data,
                           precision_plugin=SimpleNamespace(forward_context=contextlib.nullcontext),
                           strategy=SimpleNamespace(broadcast=lambda value: value))


def _data(tok, tmp_path, train):
    data = SimpleNamespace(train_ds=train, val_ds=None, batch_size=2, load_tokenizer=lambda: tok,
                           hparams=SimpleNamespace(block_size=64, cache_dir=str(tmp_path / "cache")))
    return data


def _row_logps(model, ds, j, side):
    batch = PreferenceCollator(0)([RowsView(ds)[j]])
    return sequence_logps(model, batch[f"{side}_input_ids"], batch[f"{side}_attention_mask"],
                          batch[f"{side}_labels"]).logps[0].item()


def test_columns_hold_each_pairs_reference_logps_and_are_reused(tiny_model_dir, module, tmp_path, capsys):
    tok = load_tokenizer(str(tiny_model_dir))
    train = _split(tmp_path, tok, PAIRS)
    data = _data(tok, tmp_path, train)
    module.objective = Preference()
    callback = ReferenceLogps(True, precompute_ref_batch_size=3)
    callback.on_fit_start(_trainer(data), module)
    assert "reference log-probs: computed for 5 train pairs in " in capsys.readouterr().err
    model = module.model
    for j in range(len(train)):
        row = data.train_ds[j]
        for side in ("chosen", "rejected"):
            with reference_policy(model):
                expected = _row_logps(model, train, j, side)
            assert row[f"ref_{side}_logps"] == pytest.approx(expected, abs=1e-5)
            # The adapter was off: the policy (LoRA's B moved) gives another value.
            with torch.no_grad():
                assert abs(_row_logps(model, train, j, side) - expected) > 1e-3
    again = _data(tok, tmp_path, train)
    callback.on_fit_start(_trainer(again), module)
    assert "reference log-probs: reused from cache for 5 train pairs" in capsys.readouterr().err
    assert again.train_ds["ref_chosen_logps"] == data.train_ds["ref_chosen_logps"]


def test_kto_rows_get_ref_logps_and_the_line_says_kl_pairs_still_run(tiny_model_dir, module, tmp_path, capsys):
    tok = load_tokenizer(str(tiny_model_dir))
    rows = [{"prompt": r["prompt"], "completion": r["chosen"], "label": j % 2 == 0} for j, r in enumerate(PAIRS)]
    data = _data(tok, tmp_path, _split(tmp_path, tok, rows, name="kto.jsonl"))
    module.objective = KTO()
    ReferenceLogps(True).on_fit_start(_trainer(data), module)
    assert "ref_logps" in data.train_ds.column_names and "ref_kl_logps" not in data.train_ds.column_names
    assert "KTO's KL pairs still run the reference each step" in capsys.readouterr().err


def test_an_objective_without_a_reference_ignores_the_option(tiny_model_dir, module, tmp_path, capsys):
    tok = load_tokenizer(str(tiny_model_dir))
    data = _data(tok, tmp_path, _split(tmp_path, tok, PAIRS))
    module.objective = Preference(loss_type="orpo")
    ReferenceLogps(True).on_fit_start(_trainer(data), module)
    assert capsys.readouterr().err.strip() == (
        "lit_lora: reference log-probs: not computed, the Preference (orpo) objective has no reference "
        "(reference.precompute_ref_log_probs is ignored)")
    assert "ref_chosen_logps" not in data.train_ds.column_names


def test_the_cache_key_changes_with_data_template_block_size_and_starting_adapter(tiny_model_dir, tmp_path):
    tok = load_tokenizer(str(tiny_model_dir))
    lit = LitLora(model_name_or_path=str(tiny_model_dir), block_size=64)
    trainer = _trainer(None)
    reference = reference_fingerprint(trainer, lit)
    chats = [{"prompt": [{"role": "user", "content": r["prompt"]}], "chosen": [{"role": "assistant", "content": r["chosen"]}],
              "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in PAIRS]
    (tmp_path / "other.jinja").write_text("{{ 'Chat.\\n' }}" + PLAIN, encoding="utf-8")
    splits = [_split(tmp_path, tok, PAIRS), _split(tmp_path, tok, PAIRS[:4], name="fewer.jsonl"),
              _split(tmp_path, tok, PAIRS, block_size=12),
              _split(tmp_path, tok, chats, template="plain", name="chats.jsonl"),
              _split(tmp_path, tok, chats, template=str(tmp_path / "other.jinja"), name="chats.jsonl")]
    keys = [reference_key(ds, reference) for ds in splits]
    assert len(set(keys)) == len(keys)
    assert reference_key(_split(tmp_path, tok, PAIRS), reference) == keys[0]  # the same data: the same key
    # A run that starts from an adapter keeps a frozen copy named "ref" as its reference: its weights count.
    lit.model.add_adapter("ref", lit.model.peft_config["default"])
    with_ref = reference_fingerprint(trainer, lit)
    with torch.no_grad():
        next(p for n, p in lit.model.named_parameters() if ".ref." in n).add_(1.0)
    assert len({reference, with_ref, reference_fingerprint(trainer, lit)}) == 3
