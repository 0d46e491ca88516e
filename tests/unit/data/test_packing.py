"""Packing without leaks: packed documents never attend to each other, each starts at position 0, and the
end of one does not learn to predict the start of the next."""

from __future__ import annotations

import json

import pytest
import torch

from lit_lora.data.batches import Collator, RowsView
from lit_lora.data.corpus import build_split
from lit_lora.objectives.nll import document_inputs, model_nll
from tests.conftest import QUICKSTART
from tests.helpers import FAMILIES, VOCAB


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_a_packed_blocks_logits_are_each_documents_logits_alone(model_type, attn):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, vocab_size=VOCAB, **FAMILIES[model_type][0])
    try:
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attn).eval()
    except ValueError:
        pytest.skip(f"{model_type} has no {attn} attention")
    docs = [torch.randint(3, 500, (n,), generator=torch.Generator().manual_seed(n)) for n in (5, 9, 1, 7)]
    ids = torch.cat(docs)[None]
    positions = torch.cat([torch.arange(len(d)) for d in docs])[None]
    with torch.no_grad():
        packed = model(input_ids=ids, **document_inputs(model, positions), use_cache=False).logits[0]
        alone = torch.cat([model(input_ids=d[None], use_cache=False).logits[0] for d in docs])
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def chats(tmp_path_factory):
    from lit_lora.pretrained.hub import load_tokenizer

    tmp = tmp_path_factory.mktemp("chats")
    lines = (QUICKSTART.parent / "chat" / "messages.jsonl").read_text(encoding="utf-8").splitlines()[:40]
    (tmp / "chats.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return tmp, load_tokenizer(str(QUICKSTART / "tokenizer"))


def _batches(ds, tokenizer, size):
    rows = RowsView(ds)
    collate = Collator(tokenizer.pad_token_id)
    return [collate([rows[i] for i in range(k, min(k + size, len(rows)))]) for k in range(0, len(rows), size)]


def test_training_on_packed_conversations_gives_the_loss_of_padded_batches(chats):
    from lit_lora.pretrained.hub import load_base_model

    tmp, tokenizer = chats
    args = ([str(tmp / "chats.jsonl")], "messages", tokenizer, 128, str(tmp / "cache"))
    padded, packed = build_split(*args, packing=False), build_split(*args, packing=True)
    assert len(packed) < len(padded) and "position_ids" in packed.column_names
    torch.manual_seed(0)
    model = load_base_model("unused", {"n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 128,
                                       "vocab_size": 512}).eval()

    def total(ds, size):
        nll = n = 0
        with torch.no_grad():
            for b in _batches(ds, tokenizer, size):
                s, c = model_nll(model, b["input_ids"], b.get("attention_mask"), b["labels"],
                                 position_ids=b.get("position_ids"))
                nll, n = nll + float(s), n + int(c)
        return nll, n

    (padded_nll, padded_n), (packed_nll, packed_n) = total(padded, 4), total(packed, 3)
    assert packed_n == padded_n
    assert packed_nll == pytest.approx(padded_nll, rel=1e-5)


def test_text_documents_restart_at_position_0_and_a_document_cut_at_a_block_continues_from_0(tmp_path):
    from lit_lora.pretrained.hub import load_tokenizer

    tokenizer = load_tokenizer(str(QUICKSTART / "tokenizer"))
    path = tmp_path / "docs.jsonl"
    texts = ["a b c d e f g h i j k l m n o p", "q r s", "t u v w x y z a b c d e f g h"]
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) + 1 for t in texts]  # + EOS
    block = lengths[0] - 4  # the first document is cut 4 tokens before its end
    ds = build_split([str(path)], "jsonl", tokenizer, block, str(tmp_path / "cache"))
    batch = Collator(tokenizer.pad_token_id)([RowsView(ds)[i] for i in range(len(ds))])
    positions, labels = batch["position_ids"], batch["labels"]
    # Block 1 holds the first document's last 4 tokens (from position 0: no earlier token in view), then
    # the second document from 0, then the third from 0.
    assert positions[1].tolist()[:4 + lengths[1]] == [0, 1, 2, 3] + list(range(lengths[1]))
    assert positions[1].tolist()[4 + lengths[1]:] == list(range(block - 4 - lengths[1]))
    starts = (positions == 0).nonzero().tolist()
    assert all(labels[r, c] == -100 for r, c in starts), "a document's first token is never a target"
    assert int((labels != -100).sum()) == batch["num_tokens"] - len(starts)
    unpacked = build_split([str(path)], "jsonl", tokenizer, block, str(tmp_path / "cache"), packing=False)
    pieces = [n for length in lengths for n in [block] * (length // block) + [length % block] * bool(length % block)]
    assert [len(x) for x in unpacked["input_ids"]] == pieces, "unpacked, a block never spans two documents"


def test_a_second_build_of_conversations_tokenizes_nothing(chats, monkeypatch):
    import lit_lora.data.corpus as corpus
    from transformers import PreTrainedTokenizerBase

    tmp, tokenizer = chats
    args = ([str(tmp / "chats.jsonl")], "messages", tokenizer, 128, str(tmp / "cache2"))
    first = build_split(*args, packing=True)
    arrow = set((tmp / "cache2").rglob("*.arrow"))

    def boom(*a, **k):
        raise AssertionError("the tokenizer was called on cached conversations")

    monkeypatch.setattr(corpus, "tokenize_conversations", boom)
    monkeypatch.setattr(PreTrainedTokenizerBase, "__call__", boom)
    monkeypatch.setattr(PreTrainedTokenizerBase, "apply_chat_template", boom)
    second = build_split(*args, packing=True)
    assert second["input_ids"] == first["input_ids"]
    assert set((tmp / "cache2").rglob("*.arrow")) == arrow


def test_best_fit_fills_blocks_and_keeps_every_example_once():
    from lit_lora.data.packing import best_fit_bins

    lengths = [5, 6, 5, 4, 4]
    bins = best_fit_bins(lengths, 10)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 10 for b in bins)
    # 24 tokens need 3 blocks of 10; packing in order ([5], [6], [5, 4], [4]) would take 4.
    assert bins == [[1, 3], [0, 2], [4]]
