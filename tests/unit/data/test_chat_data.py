"""Conversations: each format read as one message list, the chat template's text, and which tokens train.

The expected masks are built by hand: the conversation is written out piece by piece as the `plain`
template renders it, each piece tokenized alone and marked trained or not, and compared token by token
with what lit_lora derives from the tokenizer's offsets (with the real GPT-2 tokenizer when ../shared
has it, and the quickstart's always).
"""

from __future__ import annotations

import json

import pytest

from lit_lora.constants import IGNORE_INDEX
from lit_lora.data.conversations import to_messages, tokenize_conversations
from lit_lora.data.corpus import build_split
from lit_lora.errors import LitLoraError
from lit_lora.generation.chat import PLAIN, render, resolve_template, stop_ids
from tests.conftest import QUICKSTART

SYSTEM = {"role": "system", "content": "Be brief."}
CONVERSATIONS = {
    "system_and_two_turns": [SYSTEM, {"role": "user", "content": "What does Fern sell?"},
                             {"role": "assistant", "content": "Fern sells apples."},
                             {"role": "user", "content": "And Gus?"}, {"role": "assistant", "content": "Bells."}],
    "consecutive_assistant_turns": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                                    {"role": "assistant", "content": "How can I help?"}],
    "korean_emoji_and_a_tool": [{"role": "user", "content": "날씨 어때요? 🌧"},
                                {"role": "tool", "content": "weather: 비 ☔"},
                                {"role": "assistant", "content": "비가 와요 ☔ 우산을 챙기세요!"}],
}


@pytest.fixture(scope="module", params=["quickstart", "gpt2"])
def tokenizer(request, gpt2_tokenizer_dir):
    from lit_lora.pretrained.hub import load_tokenizer

    if request.param == "gpt2":
        return load_tokenizer(str(gpt2_tokenizer_dir))
    return load_tokenizer(str(QUICKSTART / "tokenizer"))


def _pieces(messages, eos, train_on):
    """(text, trained) pieces of the conversation as `plain` renders it, written out by hand."""
    assistant = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    out = []
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            trained = train_on == "all" or train_on == "assistant" or i == assistant[-1]
            out += [("Assistant:", train_on == "all"), (f" {m['content']}{eos}", trained), ("\n\n", train_on == "all")]
        else:
            head = {"system": "", "user": "User: ", "tool": "Tool: "}[m["role"]]
            out.append((f"{head}{m['content']}\n\n", train_on == "all"))
    merged = []  # neighbours of one kind are tokenized together, as they are in the whole text
    for text, trained in out:
        if merged and merged[-1][1] == trained:
            merged[-1] = (merged[-1][0] + text, trained)
        else:
            merged.append((text, trained))
    return merged


@pytest.mark.parametrize("train_on", ["assistant", "last", "all"])
@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_trained_tokens_are_the_hand_built_mask(tokenizer, name, train_on):
    messages = CONVERSATIONS[name]
    ids, expected = [], []
    for text, trained in _pieces(messages, tokenizer.eos_token, train_on):
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        expected += piece if trained else [IGNORE_INDEX] * len(piece)
    rendered = render(tokenizer, PLAIN, messages)
    assert tokenizer(rendered, add_special_tokens=False)["input_ids"] == ids, "the pieces must tokenize as the whole"
    out = tokenize_conversations({"messages": [messages], "prompt_turns": [0], "where": ["test"]}, tokenizer,
                                 PLAIN, train_on, block_size=1024)
    assert out["input_ids"] == [ids]
    assert out["labels"] == [expected]
    trained = [i for i, label in zip(ids, expected) if label != IGNORE_INDEX]
    turns = sum(m["role"] == "assistant" for m in messages)
    assert trained.count(tokenizer.eos_token_id) == (1 if train_on == "last" else turns), \
        "every trained assistant turn ends with its EOS, although EOS is also the pad token"


def test_each_format_reads_as_the_same_messages():
    turns = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    assert to_messages({"messages": turns}, "messages", "f:1") == (turns, 0)
    sharegpt = {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}
    assert to_messages(sharegpt, "sharegpt", "f:1") == (turns, 0)
    alpaca = {"instruction": "Q", "input": "ctx", "output": "A"}
    assert to_messages(alpaca, "alpaca", "f:1") == ([{"role": "user", "content": "Q\n\nctx"}, turns[1]], 0)
    # TRL's conversational prompt/completion: the prompt's messages never train, even an assistant one.
    prompt = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}, {"role": "user", "content": "Q2"}]
    record = {"prompt": prompt, "completion": [{"role": "assistant", "content": "A2"}]}
    messages, prompt_turns = to_messages(record, "prompt_completion", "f:1")
    assert prompt_turns == 3
    from lit_lora.pretrained.hub import load_tokenizer

    tok = load_tokenizer(str(QUICKSTART / "tokenizer"))
    out = tokenize_conversations({"messages": [messages], "prompt_turns": [3], "where": ["f:1"]}, tok, PLAIN,
                                 "assistant", 1024)
    trained = tok.decode([i for i in out["labels"][0] if i != IGNORE_INDEX])
    assert trained == f" A2{tok.eos_token}"


def _write(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


GOOD = {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}


@pytest.mark.parametrize("record, fmt, message", [
    ({"messages": [{"role": "bot", "content": "x"}]}, "messages",
     "t.jsonl:2: message 1 has role 'bot'; expected one of system, user, assistant, tool"),
    ({"messages": [{"role": "user"}, {"role": "assistant", "content": "A"}]}, "messages",
     "t.jsonl:2: message 1 (user) has no string 'content'"),
    ({"messages": [{"role": "user", "content": "Q"}]}, "messages", "t.jsonl:2: no assistant turn: nothing to train on"),
    ({"instruction": "Q", "output": "A"}, "messages",
     "t.jsonl:2: expected a record of format messages, got fields ['instruction', 'output'] (those of the alpaca format)"),
    ({"instruction": "Q"}, "alpaca", "t.jsonl:2: an alpaca record needs a string 'output' field"),
    ({"conversations": [{"from": "robot", "value": "x"}]}, "sharegpt", "t.jsonl:2: message 1 has from 'robot'"),
])
def test_bad_records_are_one_line_naming_the_file_and_line(tmp_path, record, fmt, message):
    from lit_lora.pretrained.hub import load_tokenizer

    first = {"messages": GOOD, "alpaca": {"instruction": "Q", "output": "A"},
             "sharegpt": {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}}[fmt]
    path = _write(tmp_path / "t.jsonl", [first, record])
    with pytest.raises(LitLoraError) as err:
        build_split([str(path)], fmt, load_tokenizer(str(QUICKSTART / "tokenizer")), 64, str(tmp_path / "cache"))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_templates_that_cannot_be_used_are_one_line(tmp_path):
    from lit_lora.pretrained.hub import load_tokenizer

    tok = load_tokenizer(str(QUICKSTART / "tokenizer"))
    broken = tmp_path / "broken.jinja"
    broken.write_text("{% for m in messages %}{{ m.content }")
    with pytest.raises(LitLoraError, match=r"data.chat_template '.*broken.jinja' does not render a conversation"):
        resolve_template(tok, str(broken))
    with pytest.raises(LitLoraError, match="is not a file, nor one of auto, tokenizer, plain"):
        resolve_template(tok, "chatml-please")
    # A template that writes the messages last first is not rendered turn by turn: refused, never a wrong mask.
    last_only = "{% for m in messages | reverse %}{{ m.content }}|{% endfor %}{% if add_generation_prompt %}>{% endif %}"
    path = _write(tmp_path / "t.jsonl", [GOOD])
    with pytest.raises(LitLoraError, match=r"t.jsonl:1: the chat template does not render turn by turn"):
        build_split([str(path)], "messages", tok, 64, str(tmp_path / "cache"), chat_template=last_only)


def test_long_conversations_keep_their_start_and_those_left_with_nothing_to_train_are_counted(tmp_path):
    from lit_lora.pretrained.hub import load_tokenizer

    tok = load_tokenizer(str(QUICKSTART / "tokenizer"))
    long_question = {"messages": [{"role": "user", "content": "word " * 80}, {"role": "assistant", "content": "A"}]}
    long_answer = {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "word " * 80}]}
    path = _write(tmp_path / "t.jsonl", [GOOD, long_question, long_answer])
    report = {}
    ds = build_split([str(path)], "messages", tok, 32, str(tmp_path / "cache"), report=report)
    assert report == {"conversations": 3, "examples": 3, "dropped": 1, "truncated": 1}
    assert len(ds) == 2 and max(len(x) for x in ds["input_ids"]) == 32


def test_a_template_end_of_turn_token_stops_replies(tmp_path):
    """ChatML closes a turn with <|im_end|>, not EOS: both stop a reply."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(QUICKSTART / "tokenizer"))
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    chatml = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    assert stop_ids(tok, chatml) == [tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")]
    assert stop_ids(tok, PLAIN) == [tok.eos_token_id]
    out = tokenize_conversations({"messages": [GOOD["messages"]], "prompt_turns": [0], "where": ["x"]}, tok, chatml,
                                 "assistant", 64)
    assert tok.decode([i for i in out["labels"][0] if i != IGNORE_INDEX]) == "A<|im_end|>"


@pytest.mark.parametrize("kind", ["save_to_disk", "parquet"])
def test_a_hugging_face_dataset_of_conversations_trains_as_its_jsonl_file_does(tmp_path, kind):
    from datasets import Dataset

    from lit_lora.data.datamodule import LitLoraData

    name = "messages" if kind == "save_to_disk" else "alpaca"
    source = QUICKSTART.parent / "chat" / f"{name}.jsonl"
    records = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines()[:20]]
    path = _write(tmp_path / f"{name}.jsonl", records)
    if kind == "save_to_disk":
        Dataset.from_list(records).save_to_disk(str(tmp_path / "saved"))
        dataset = tmp_path / "saved"
    else:
        dataset = tmp_path / "alpaca.parquet"
        Dataset.from_list(records).to_parquet(str(dataset))
    common = dict(tokenizer_name_or_path=str(QUICKSTART / "tokenizer"), cache_dir=str(tmp_path / "cache"),
                  block_size=128, val_fraction=0.2)
    modules = [LitLoraData(dataset_name=str(dataset), **common), LitLoraData(train_files=str(path), **common)]
    for dm in modules:
        dm.setup("fit")
        assert dm.data_format == name and dm.counts["conversations"] == 20
    assert modules[0].train_ds["labels"] == modules[1].train_ds["labels"]


# A tool-calling template in the shape published ones have: the record's tools listed up front, each call
# written into the assistant's turn, tool results as their own turns.
TOOL_TEMPLATE = (
    "{% if tools %}Tools: {% for t in tools %}{{ t.function.name }} {% endfor %}\n\n{% endif %}"
    "{% for m in messages %}{{ m.role }}: {{ m.content }}"
    "{% for tc in m.tool_calls or [] %}<tool_call>{{ tc.function.name }}({{ tc.function.arguments | tojson }})"
    "{% endfor %}{% if m.role == 'assistant' %}{{ eos_token }}{% endif %}\n\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
TOOL_RECORD = {"tools": [WEATHER], "messages": [
    {"role": "user", "content": "Rain in Oslo?"},
    {"role": "assistant", "content": None,
     "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
    {"role": "tool", "content": "rain", "name": "get_weather"},
    {"role": "assistant", "content": "Yes, it rains."}]}


def _trained_texts(tok, ds):
    return [tok.decode([i for i in labels if i != IGNORE_INDEX]) for labels in ds["labels"]]


def test_tool_calls_train_as_the_assistants_turn_from_a_file_and_a_dataset(tmp_path):
    from datasets import Dataset

    from lit_lora.data.sources import _dataset_rows
    from lit_lora.pretrained.hub import load_tokenizer

    tok = load_tokenizer(str(QUICKSTART / "tokenizer"))
    records = [TOOL_RECORD, GOOD]
    path = _write(tmp_path / "t.jsonl", records)
    ds = build_split([str(path)], "messages", tok, 256, str(tmp_path / "cache"), chat_template=TOOL_TEMPLATE)
    text = tok.decode(ds["input_ids"][0])
    assert text.startswith("Tools: get_weather \nuser: Rain in Oslo?"), "the record's tools reach the template"
    call = '<tool_call>get_weather({"city": "Oslo"})'
    # The call is the assistant's turn and trains; the tool's result ("rain") does not.
    assert _trained_texts(tok, ds) == [f" {call}{tok.eos_token} Yes, it rains.{tok.eos_token}", f" A{tok.eos_token}"]
    # The same records as a Hugging Face dataset: one table, its second record with no tool fields (None).
    rows = _dataset_rows(Dataset.from_list(records), "messages", {"dataset_name": "d"})
    from_dataset = build_split([], "messages", tok, 256, str(tmp_path / "cache"), hf_rows=rows,
                               chat_template=TOOL_TEMPLATE)
    assert from_dataset["labels"] == ds["labels"]


def test_a_template_that_drops_tool_calls_or_the_replys_text_is_one_line_naming_the_record(tmp_path):
    from lit_lora.pretrained.hub import load_tokenizer

    tok = load_tokenizer(str(QUICKSTART / "tokenizer"))
    path = _write(tmp_path / "t.jsonl", [GOOD, TOOL_RECORD])
    with pytest.raises(LitLoraError) as err:  # plain writes content only: the call would train as an empty reply
        build_split([str(path)], "messages", tok, 256, str(tmp_path / "cache"), chat_template=PLAIN)
    assert str(err.value) == (
        f"{path}:2: assistant message 2 calls tool 'get_weather', but the chat template does not render "
        "tool_calls (no such name in its turn), so the call would not train; use a template that renders tool "
        "calls (a tool-calling model's own) or leave the record out")
    # Trained whole, the turn is the whole text, where the tools' list names the tool too: still refused.
    listing = "{% for t in tools or [] %}{{ t.function.name }} {% endfor %}" + PLAIN
    with pytest.raises(LitLoraError, match=r"t.jsonl:2: assistant message 2 calls tool 'get_weather', but the chat"):
        build_split([str(path)], "messages", tok, 256, str(tmp_path / "cache"), chat_template=listing, train_on="all")
    # A template that writes the same reply for every assistant turn is refused when chosen: the sample
    # conversation's replies are missing.
    fixed = ("{% for m in messages %}{% if m.role == 'assistant' %}{{ 'Assistant: OK' }}{% else %}"
             "{{ m.role }}: {{ m.content }}{% endif %}\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}")
    with pytest.raises(LitLoraError) as err:
        build_split([str(path)], "messages", tok, 256, str(tmp_path / "cache"), chat_template=fixed)
    assert str(err.value) == ("data.chat_template renders a conversation without its messages' content (no 'Aq3' in "
                              "'system: Sq1user: Uq2Assistant: OKtool: Tq4Assistant: OKAssistant:')")
    # Each real record is checked as it is rendered, whatever the sample showed: a reply the template cuts
    # short (here to 5 characters, longer than any sample reply) is one line naming the record and the text.
    short = "{% for m in messages %}{{ m.role }}: {{ m.content[:5] }}\n{% endfor %}" \
            "{% if add_generation_prompt %}assistant:{% endif %}"
    long_reply = {"messages": [{"role": "user", "content": "Q"},
                               {"role": "assistant", "content": "  Fern sells apples, pears and plums at the market.\n"}]}
    path = _write(tmp_path / "short.jsonl", [GOOD, long_reply])
    with pytest.raises(LitLoraError) as err:
        build_split([str(path)], "messages", tok, 256, str(tmp_path / "cache"), chat_template=short)
    assert str(err.value) == (
        f"{path}:2: the chat template does not write assistant message 2's text 'Fern sells apples, pears and "
        "plums at...' into its turn, so the turn would train on other text; use a template that renders each "
        "message's content (--data.chat_template plain, a Jinja file)")
    for train_on in ("last", "all"):
        with pytest.raises(LitLoraError, match=r"short.jsonl:2: the chat template does not write assistant message 2"):
            build_split([str(path)], "messages", tok, 256, str(tmp_path / "cache"), chat_template=short,
                        train_on=train_on)


CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_every_shipped_chat_example_renders_its_replies_inside_their_turns(tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(QUICKSTART / "tokenizer"))
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    for name, template in [("messages", CHATML), ("sharegpt", PLAIN), ("alpaca", PLAIN),
                           ("prompt_completion", PLAIN)]:
        # The first 100 records of each: every shape the files hold (system, tool turns, several replies).
        lines = (QUICKSTART.parent / "chat" / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()[:100]
        path, report = tmp_path / f"{name}.jsonl", {}
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        build_split([str(path)], name, tok, 256, str(tmp_path / "cache"), chat_template=template, report=report)
        assert report["examples"] == 100 and not report["dropped"]


def test_an_end_of_turn_marker_the_tokenizer_splits_is_said_at_fit(tmp_path):
    from transformers import AutoTokenizer

    from lit_lora.data.datamodule import LitLoraData
    from lit_lora.generation.chat import end_of_turn_note

    tok = AutoTokenizer.from_pretrained(str(QUICKSTART / "tokenizer"))
    note = ("the chat template ends a reply with '<|im_end|>', which this tokenizer splits into 8 tokens: "
            "generated replies will stop only at EOS ('<|endoftext|>'); add '<|im_end|>' to the tokenizer as a "
            "special token (and resize the model's embeddings) to stop on it")
    assert stop_ids(tok, CHATML) == [tok.eos_token_id]
    assert len(tok("<|im_end|>", add_special_tokens=False)["input_ids"]) == 8
    assert end_of_turn_note(tok, CHATML) == note
    assert end_of_turn_note(tok, PLAIN) is None  # plain ends a reply with EOS itself
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    assert end_of_turn_note(tok, CHATML) is None
    template = tmp_path / "chatml.jinja"
    template.write_text(CHATML, encoding="utf-8")
    dm = LitLoraData(train_files=str(_write(tmp_path / "t.jsonl", [GOOD] * 8)), chat_template=str(template),
                     tokenizer_name_or_path=str(QUICKSTART / "tokenizer"), cache_dir=str(tmp_path / "cache"),
                     block_size=64, batch_size=4)
    dm.setup("fit")
    assert f"data: {note}" in dm.data_lines(4)
