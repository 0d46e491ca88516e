"""Preference data: each of TRL's forms gives the expected prompt and completion ids, the tokens that count
are exactly the completion and its EOS (or end-of-turn), conversations render as SFT renders them, long pairs
are cut by the stated policy and counted, bad records are one line naming file and line, and the ids equal
those TRL's own DPOTrainer/KTOTrainer preparation gives (where they differ, the test says how)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from lit_lora.constants import IGNORE_INDEX
from lit_lora.data.batches import RowsView
from lit_lora.data.corpus import build_split
from lit_lora.data.preference import build_preference_split, truncation_line
from lit_lora.data.preference_batches import PreferenceCollator, row_stats
from lit_lora.errors import LitLoraError
from lit_lora.generation.chat import PLAIN
from tests.conftest import QUICKSTART
from tests.helpers import bos_tokenizer_dir


def U(text):
    return {"role": "user", "content": text}


def A(text):
    return {"role": "assistant", "content": text}


SYSTEM = {"role": "system", "content": "Be brief."}
STANDARD = [{"prompt": "What does Fern sell?", "chosen": " Fern sells apples.", "rejected": " Fern sells rope."},
            {"prompt": "Where does Ivo live?", "chosen": " By the river.",
             "rejected": " Ivo lives in a very big house."}]
CONVERSATIONAL = [{"prompt": [SYSTEM, U("What does Fern sell?")], "chosen": [A("Apples.")], "rejected": [A("Rope.")]},
                  {"prompt": [U("Where does Ivo live?")], "chosen": [A("By the river.")],
                   "rejected": [A("In a very big house.")]}]
IMPLICIT = [{"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]} for r in CONVERSATIONAL]
UNPAIRED = [{"prompt": "What does Fern sell?", "completion": " Apples.", "label": True},
            {"prompt": "Where does Ivo live?", "completion": " In a boat on the sea.", "label": False},
            {"prompt": "Who sells rope?", "completion": " Ivo.", "label": True}]


@pytest.fixture(scope="module")
def tok():
    from lit_lora.pretrained.hub import load_tokenizer

    return load_tokenizer(str(QUICKSTART / "tokenizer"))


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def _build(tmp_path, tok, records, block_size=128, report=None, name="d.jsonl"):
    return build_preference_split(tok, block_size, str(tmp_path / "cache"), files=[_write(tmp_path / name, records)],
                                  report=report)


def _batch(ds, tok, block_size=None):
    rows = RowsView(ds).__getitems__(list(range(len(ds))))
    return PreferenceCollator(tok.pad_token_id, block_size)(rows)


def _counted(tok, batch, name, j):
    """The text of the tokens whose log-probabilities count in row j."""
    labels = batch[f"{name}_labels"][j]
    return tok.decode(batch[f"{name}_input_ids"][j][labels != IGNORE_INDEX])


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_standard_pairs_share_the_prompt_and_count_each_completion_with_its_eos(tmp_path, tok):
    report = {}
    ds = _build(tmp_path, tok, STANDARD, report=report)
    assert report == {"format": "preference (standard)", "records": 2, "dropped": 0, "truncated": 0}
    eos = tok.eos_token_id
    assert ds[0]["prompt_ids"] == _ids(tok, "What does Fern sell?")
    assert ds[0]["chosen_ids"] == ds[0]["chosen_labels"] == _ids(tok, " Fern sells apples.") + [eos]
    assert ds[0]["rejected_ids"] == _ids(tok, " Fern sells rope.") + [eos]
    batch = _batch(ds, tok)
    for j, record in enumerate(STANDARD):
        for name in ("chosen", "rejected"):
            assert _counted(tok, batch, name, j) == record[name] + tok.eos_token
            n = len(ds[j]["prompt_ids"])  # the prompt counts nothing, and is the same in both sequences
            assert (batch[f"{name}_labels"][j, :n] == IGNORE_INDEX).all()
            assert batch[f"{name}_input_ids"][j, :n].tolist() == ds[j]["prompt_ids"]


def test_conversational_pairs_render_as_sft_renders_prompt_and_completion(tmp_path, tok):
    ds = _build(tmp_path, tok, CONVERSATIONAL)
    batch = _batch(ds, tok)
    # SFT's conversational prompt/completion records of the same messages: the same ids and the same labels.
    for name in ("chosen", "rejected"):
        sft_records = [{"prompt": r["prompt"], "completion": r[name]} for r in CONVERSATIONAL]
        sft = build_split([_write(tmp_path / f"sft_{name}.jsonl", sft_records)], "prompt_completion", tok, 128,
                          str(tmp_path / "cache"))
        for j in range(len(CONVERSATIONAL)):
            n = len(sft[j]["input_ids"])
            assert batch[f"{name}_input_ids"][j, :n].tolist() == sft[j]["input_ids"]
            labels = batch[f"{name}_labels"][j, :n].tolist()
            assert labels == [IGNORE_INDEX] + sft[j]["labels"][1:]
    # The prompt is the template's text with its generation prompt; the reply and its EOS count, the blank
    # line the template writes after the turn does not.
    assert tok.decode(ds[0]["prompt_ids"]) == "Be brief.\n\nUser: What does Fern sell?\n\nAssistant:"
    assert tok.decode(ds[0]["chosen_ids"]) == " Apples.<|endoftext|>\n\n"
    assert _counted(tok, batch, "chosen", 0) == " Apples.<|endoftext|>"
    assert _counted(tok, batch, "rejected", 1) == " In a very big house.<|endoftext|>"


def test_an_implicit_prompt_is_the_shared_start(tmp_path, tok):
    explicit = _build(tmp_path, tok, CONVERSATIONAL, name="explicit.jsonl")
    report = {}
    implicit = _build(tmp_path, tok, IMPLICIT, report=report, name="implicit.jsonl")
    assert report["format"] == "implicit_preference (conversational)"
    assert implicit.to_list() == explicit.to_list()
    # Texts: TRL's rule, the shared characters, a space before the parting left with the completions.
    texts = _build(tmp_path, tok, [{"chosen": "Q: Fern? A: apples", "rejected": "Q: Fern? A: rope"}], name="t.jsonl")
    assert tok.decode(texts[0]["prompt_ids"]) == "Q: Fern? A:"
    assert tok.decode(texts[0]["chosen_ids"]) == " apples<|endoftext|>"
    assert tok.decode(texts[0]["rejected_ids"]) == " rope<|endoftext|>"


def test_unpaired_rows_carry_their_label_and_kl_pairs_take_the_row_befores_completion(tmp_path, tok):
    report = {}
    ds = _build(tmp_path, tok, UNPAIRED, report=report)
    assert report["format"] == "unpaired_preference (standard)"
    batch = _batch(ds, tok)
    assert batch["label"].tolist() == [True, False, True]
    assert batch["label"].dtype == torch.bool
    for j, record in enumerate(UNPAIRED):
        assert _counted(tok, batch, "completion", j) == record["completion"] + tok.eos_token
        # The KL sequence: this row's prompt, the completion of the row before (row 0: the last row's).
        other = UNPAIRED[j - 1]
        width = int(batch["kl_attention_mask"][j].sum())
        assert tok.decode(batch["kl_input_ids"][j, :width]) == record["prompt"] + other["completion"] + tok.eos_token
        assert _counted(tok, batch, "kl", j) == other["completion"] + tok.eos_token
    lengths, counts = row_stats(ds)
    assert counts.tolist() == [1, 1, 1]  # step_target_tokens counts rows, not tokens
    assert lengths.tolist() == [len(r["prompt_ids"]) + len(r["completion_ids"]) for r in ds]


def test_long_pairs_lose_the_prompts_start_then_the_completions_end_and_are_counted(tmp_path, tok):
    prompt = "One two three four five six seven eight nine ten."
    records = [STANDARD[0], {"prompt": prompt, "chosen": " Yes.", "rejected": " No, not at all."},
               {"prompt": "Hi.", "chosen": " A very long answer indeed, with many words and then more words still.",
                "rejected": " No."}]
    p, c, r = (_ids(tok, records[1][k]) for k in ("prompt", "chosen", "rejected"))
    eos = tok.eos_token_id
    block = len(p) - 3 + len(r) + 1  # three prompt tokens too many for the longer completion and its EOS
    p2, c2 = _ids(tok, "Hi."), _ids(tok, records[2]["chosen"]) + [eos]
    first = len(_ids(tok, STANDARD[0]["prompt"])) + len(_ids(tok, STANDARD[0]["rejected"])) + 1
    assert len(c2) > block and first <= block  # record 2's chosen alone is too long; record 0 fits
    report = {}
    ds = _build(tmp_path, tok, records, block_size=block, report=report)
    assert report["truncated"] == 2 and report["records"] == 3
    assert ds[0]["prompt_ids"] == _ids(tok, STANDARD[0]["prompt"])  # fits: untouched
    assert ds[1]["prompt_ids"] == p[3:]  # the prompt's end stays
    assert ds[1]["chosen_ids"] == c + [eos] and ds[1]["rejected_ids"] == r + [eos]
    # A prompt cut to one token, then the completion's end: the last prompt token still predicts its first.
    assert ds[2]["prompt_ids"] == p2[-1:]
    assert ds[2]["chosen_ids"] == c2[: block - 1] and ds[2]["rejected_ids"] == _ids(tok, " No.") + [eos]
    assert truncation_line(report, block) == (f"2 of 3 pairs were cut to block_size {block}: prompt from the "
                                              "left, then completions")
    assert truncation_line({"format": "preference (standard)", "truncated": 0, "dropped": 0}, block) is None


def test_a_bos_stays_when_the_prompt_is_cut(tmp_path):
    from lit_lora.pretrained.hub import load_tokenizer

    tok = load_tokenizer(str(bos_tokenizer_dir(tmp_path / "bos")))
    bos = tok.bos_token_id
    ds = _build(tmp_path, tok, [{"prompt": "One two three four five six.", "chosen": " Yes.", "rejected": " No."}],
                block_size=8)
    prompt = _ids(tok, "One two three four five six.")
    completion = _ids(tok, " Yes.") + [tok.eos_token_id]
    assert ds[0]["prompt_ids"] == [bos] + prompt[len(prompt) - (7 - len(completion)):]
    assert ds[0]["chosen_ids"] == completion
    # KL sequences of unpaired rows are cut by the same rule in the collator, BOS kept.
    kto = _build(tmp_path, tok, [{"prompt": "One two three four five six.", "completion": " Yes.", "label": True},
                                 {"prompt": "Hi", "completion": " A long reply of words.", "label": False}],
                 block_size=9, name="kto.jsonl")
    # Row 1's 18 completion tokens: its prompt keeps only BOS, its completion 8 tokens.
    assert kto[1]["prompt_ids"] == [bos] and len(kto[1]["completion_ids"]) == 8
    batch = PreferenceCollator(tok.pad_token_id, 9, bos_token_id=bos)(RowsView(kto).__getitems__([0, 1]))
    # Row 0's KL sequence: its prompt (BOS and 2 tokens) with row 1's 8 completion tokens is 11; the prompt goes.
    assert batch["kl_input_ids"][0].tolist() == [bos] + kto[1]["completion_ids"]
    assert _counted(tok, batch, "kl", 0) == tok.decode(kto[1]["completion_ids"])


def test_collated_pairs_are_right_padded_with_the_pad_id_and_masked(tmp_path, tok):
    ds = _build(tmp_path, tok, STANDARD)
    rows = RowsView(ds).__getitems__([(0, 2), (1, 2)])  # with their step's target count, as WithStepTokens gives
    batch = PreferenceCollator(pad_token_id=7)(rows)
    assert batch["step_target_tokens"].item() == 2 and batch["sample_ids"].tolist() == [0, 1]
    for name in ("chosen", "rejected"):
        lengths = [len(ds[j]["prompt_ids"]) + len(ds[j][f"{name}_ids"]) for j in range(2)]
        assert batch[f"{name}_input_ids"].shape == (2, max(lengths))
        assert batch[f"{name}_attention_mask"].sum(1).tolist() == lengths
        for j, n in enumerate(lengths):
            assert (batch[f"{name}_input_ids"][j, n:] == 7).all()
            assert (batch[f"{name}_labels"][j, n:] == IGNORE_INDEX).all()
    # rejected of row 1 is the longest; chosen of row 0 the longest of the chosen
    assert batch["rejected_attention_mask"][1].all() and batch["chosen_attention_mask"][0].all()
    rows = [{**r, "ref_chosen_logps": -1.5, "ref_rejected_logps": -2.5} for r in RowsView(ds).__getitems__([0])]
    batch = PreferenceCollator(0)(rows)
    assert batch["ref_chosen_logps"].dtype == torch.float32 and batch["ref_rejected_logps"].tolist() == [-2.5]


BAD = [
    (STANDARD[0], {"prompt": "x", "chosen": " a"}, "missing field 'rejected' of a preference record"),
    (STANDARD[0], {"prompt": "x", "chosen": "  ", "rejected": " b"}, "empty completion: 'chosen' has no text"),
    (CONVERSATIONAL[0], {"prompt": [U("x")], "chosen": [A("")], "rejected": [A("b")]},
     "empty completion: 'chosen' has no text"),
    (STANDARD[0], {"prompt": "x", "chosen": " same", "rejected": " same"}, "'chosen' and 'rejected' are the same"),
    (IMPLICIT[0], {"chosen": [U("x"), A("a")], "rejected": [U("x")]},
     "empty completion: 'rejected' holds nothing after the prompt"),
    (UNPAIRED[0], {"prompt": "x", "completion": " a", "label": 1}, "'label' must be true or false"),
    (UNPAIRED[0], {"prompt": "x", "completion": " a", "label": "true"}, "'label' must be true or false"),
    (STANDARD[0], UNPAIRED[0], "expected a record of format preference (standard), got fields ['completion', "
                               "'label', 'prompt'] (unpaired_preference (standard)): one format per split"),
    (STANDARD[0], CONVERSATIONAL[0], "expected a record of format preference (standard)"),
]


@pytest.mark.parametrize("first,record,message", BAD, ids=[
    "missing_field", "empty_completion", "empty_reply", "chosen_equals_rejected", "implicit_leaves_nothing",
    "label_int", "label_string", "another_format", "another_kind"])
def test_bad_records_are_one_line_naming_file_and_line(tmp_path, tok, first, record, message):
    path = _write(tmp_path / "bad.jsonl", [first, record])
    with pytest.raises(LitLoraError) as err:
        build_preference_split(tok, 64, str(tmp_path / "cache"), files=[path])
    assert str(err.value).startswith(f"{path}:2: ")
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("kind", ["save_to_disk", "parquet"])
def test_a_hugging_face_dataset_gives_the_rows_of_its_jsonl_file(tmp_path, tok, kind):
    from datasets import Dataset

    from lit_lora.data.sources import _load_splits

    jsonl = _build(tmp_path, tok, CONVERSATIONAL)
    if kind == "save_to_disk":
        Dataset.from_list(CONVERSATIONAL).save_to_disk(str(tmp_path / "saved"))
        name = str(tmp_path / "saved")
    else:
        Dataset.from_list(CONVERSATIONAL).to_parquet(str(tmp_path / "d.parquet"))
        name = str(tmp_path / "d.parquet")
    split = _load_splits(name, None, str(tmp_path / "cache"))["train"]
    ds = build_preference_split(tok, 128, str(tmp_path / "cache"), dataset=split, name=name)
    assert ds.to_list() == jsonl.to_list()
    bad = Dataset.from_list(STANDARD + [{"prompt": "x", "chosen": " a", "rejected": " a"}])
    with pytest.raises(LitLoraError, match=r"^record 2 of dataset 'mine': 'chosen' and 'rejected' are the same"):
        build_preference_split(tok, 128, str(tmp_path / "cache"), dataset=bad, name="mine")


def _trl_prepared(trainer, records, tok):
    """TRL's own preparation of `records` (DPOTrainer's or KTOTrainer's `_prepare_dataset`, untruncated)."""
    from datasets import Dataset

    args = SimpleNamespace(dataset_num_proc=None, max_length=None, truncation_mode="keep_start",
                           per_device_train_batch_size=len(records))
    owner = SimpleNamespace(_tokenizer=tok, calculate_KL=True, desirable_weight=1.0, undesirable_weight=1.0)
    return trainer._prepare_dataset(owner, Dataset.from_list(records), tok, args, "train").to_list()


def test_ids_equal_trls_and_where_the_conventions_differ(tmp_path, tok, gpt2_tokenizer_dir):
    pytest.importorskip("trl")
    from trl.trainer.dpo_trainer import DPOTrainer
    from trl.trainer.kto_trainer import KTOTrainer

    from lit_lora.pretrained.hub import load_tokenizer

    # Standard pairs: the same prompt, chosen and rejected ids (TRL appends EOS as text, we as an id).
    ours = _build(tmp_path, tok, STANDARD, name="s.jsonl").to_list()
    trl = _trl_prepared(DPOTrainer, STANDARD, tok)
    assert [[r[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")] for r in ours] == \
           [[r[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")] for r in trl]
    # Conversations (TRL renders with the tokenizer's template): the same ids. TRL counts every token after the
    # prompt; we count the reply and its end-of-turn token, not the text the template writes after it.
    templated = load_tokenizer(str(QUICKSTART / "tokenizer"))
    templated.chat_template = PLAIN
    ours = _build(tmp_path, templated, CONVERSATIONAL, name="c.jsonl").to_list()
    trl = _trl_prepared(DPOTrainer, CONVERSATIONAL, templated)
    for o, t in zip(ours, trl):
        assert [o[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")] == \
               [t[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")]
        after = _ids(templated, "\n\n")
        assert o["chosen_ids"][-len(after):] == after
        assert o["chosen_labels"] == o["chosen_ids"][: -len(after)] + [IGNORE_INDEX] * len(after)
    # KTO: the same prompt and completion ids, and the same KL completions (rotated by one within a batch).
    ours = _build(tmp_path, tok, UNPAIRED, name="u.jsonl")
    trl = _trl_prepared(KTOTrainer, UNPAIRED, tok)
    assert [r["prompt_ids"] for r in ours] == [r["prompt_ids"] for r in trl]
    assert [r["completion_ids"] for r in ours] == [r["completion_ids"] for r in trl]
    batch = _batch(ours, tok)
    for j, t in enumerate(trl):
        width = int(batch["kl_attention_mask"][j].sum())
        assert batch["kl_input_ids"][j, :width].tolist() == t["prompt_ids"] + t["KL_completion_ids"]
    # Where tokenizing prompt and completion apart differs from TRL's tokenizing them joined: a prompt that
    # ends in a space. GPT-2 joins " " and "Yes" into " Yes"; TRL then drops the prompt's last token (its
    # common prefix), we keep the prompt's own tokens, so chosen and rejected share them exactly.
    gpt2 = load_tokenizer(str(gpt2_tokenizer_dir))
    record = {"prompt": "Answer: ", "chosen": "Yes", "rejected": "No"}
    ours = _build(tmp_path, gpt2, [record], name="g.jsonl")[0]
    trl = _trl_prepared(DPOTrainer, [record], gpt2)[0]
    eos = gpt2.eos_token_id
    assert ours["prompt_ids"] == _ids(gpt2, "Answer: ") and ours["chosen_ids"] == _ids(gpt2, "Yes") + [eos]
    assert trl["prompt_ids"] == _ids(gpt2, "Answer:") and trl["chosen_ids"] == _ids(gpt2, " Yes") + [eos]


def test_conversational_unpaired_rows_and_their_kl_pairs_render_with_the_template(tmp_path, tok):
    records = [{"prompt": [U("Hi?")], "completion": [A("Hello.")], "label": True},
               {"prompt": [U("Who?")], "completion": [A("Me.")], "label": False}]
    ds = _build(tmp_path, tok, records)
    batch = _batch(ds, tok)
    assert tok.decode(ds[0]["prompt_ids"]) == "User: Hi?\n\nAssistant:"
    assert _counted(tok, batch, "completion", 0) == " Hello.<|endoftext|>"
    width = int(batch["kl_attention_mask"][0].sum())
    assert tok.decode(batch["kl_input_ids"][0, :width]) == "User: Hi?\n\nAssistant: Me.<|endoftext|>\n\n"
    assert _counted(tok, batch, "kl", 0) == " Me.<|endoftext|>"
