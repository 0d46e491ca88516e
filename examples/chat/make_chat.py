"""Regenerates the chat examples (already committed; run only to change them).

    python examples/chat/make_chat.py

The same synthetic conversations in each format lit_lora reads: `messages.jsonl` (role/content),
`sharegpt.jsonl` (from/value), `alpaca.jsonl` (instruction/input/output, one turn each) and
`prompt_completion.jsonl` (TRL's conversational prompt/completion). Questions about a small village whose
facts are fixed here, so the quickstart's tiny model can learn the answers in a minute or two; a turn in
Korean with an emoji and a `tool` message appear now and then, as real data has them.
"""

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SELLS = {"Ada": "lanterns", "Brook": "baskets", "Cyrus": "maps", "Dana": "kettles", "Eli": "boats",
         "Fern": "apples", "Gus": "bells", "Hana": "books", "Ivo": "rope", "June": "coins"}
LIVES = {"Ada": "the river", "Brook": "the old mill", "Cyrus": "the hill", "Dana": "the orchard",
         "Eli": "the harbour", "Fern": "the forest", "Gus": "the market", "Hana": "the hill",
         "Ivo": "the river", "June": "the orchard"}
SYSTEM = "Answer in one sentence."


def turn(rng: random.Random) -> tuple[str, str]:
    name = rng.choice(sorted(SELLS))
    if rng.random() < 0.5:
        return f"What does {name} sell?", f"{name} sells {SELLS[name]}."
    return f"Where does {name} live?", f"{name} lives by {LIVES[name]}."


def conversation(rng: random.Random) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": SYSTEM}] if rng.random() < 0.3 else []
    for _ in range(rng.randint(1, 2)):
        question, answer = turn(rng)
        messages.append({"role": "user", "content": question})
        if rng.random() < 0.05:
            messages.append({"role": "tool", "content": f"village.lookup: {answer}"})
        messages.append({"role": "assistant", "content": answer})
    if rng.random() < 0.05:
        messages += [{"role": "user", "content": "고마워요 😀"}, {"role": "assistant", "content": "천만에요! 😀"}]
    return messages


def write(name: str, records: list[dict]) -> None:
    with open(HERE / name, "w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")


def main() -> None:
    rng = random.Random(0)
    chats = [conversation(rng) for _ in range(600)]
    write("messages.jsonl", [{"messages": c} for c in chats])
    sharegpt_roles = {"system": "system", "user": "human", "assistant": "gpt", "tool": "tool"}
    write("sharegpt.jsonl", [{"conversations": [{"from": sharegpt_roles[m["role"]], "value": m["content"]}
                                                for m in c]} for c in chats])
    write("prompt_completion.jsonl", [{"prompt": c[:-1], "completion": c[-1:]} for c in chats])
    alpaca = []
    for question, answer in (turn(rng) for _ in range(400)):
        alpaca.append({"instruction": question, "input": "", "output": answer})
    write("alpaca.jsonl", alpaca)


if __name__ == "__main__":
    main()
