"""Regenerates the preference example (already committed; run only to change it).

    python examples/preference/make_pairs.py            # rewrites the JSONL files beside this script
    python examples/preference/make_pairs.py OUT_DIR    # writes the same files under OUT_DIR instead

The rule taught: an answer ends with the sign-off " Bye!". Each prompt is the start of a sentence of the
quickstart's grammar (examples/quickstart/make_quickstart.py) and its answer the rest of that sentence; the
chosen answer carries the sign-off, the rejected one is the same words without it. The quickstart's corpus
never says "Bye", so neither its random base nor its SFT adapter follows the rule, and the two answers differ
only at their end: a preference objective has nothing to learn but the sign-off.

- `train.jsonl`, `val.jsonl`: standard pairs (`prompt`, `chosen`, `rejected`), 480 and 64. No validation
  prompt is a training prompt, so the reward accuracy and the generated answers on it are held out.
- `kto_train.jsonl`, `kto_val.jsonl`: the same pairs unpaired for KTO (`prompt`, `completion`, `label`), a
  desirable and an undesirable row for each pair, as TRL's `unpair_preference_dataset` makes them.

`val.jsonl` doubles as a prompts file for `generate --prompts_file` (it reads the `prompt` field).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SIGN_OFF = " Bye!"
TRAIN_PAIRS, VAL_PAIRS = 480, 64

# The quickstart's words, so its SFT adapter continues these prompts in kind.
sys.path.insert(0, str(HERE.parent / "quickstart"))
from make_quickstart import ADJS, ANIMALS, NAMES, PLACES, THINGS, TIMES, VERBS  # noqa: E402


def prompt_and_answer(rng: random.Random) -> tuple[str, str]:
    """A quickstart sentence cut in two: the prompt ends before a word, the answer starts with its space."""
    n, a, p = rng.choice(NAMES), rng.choice(ANIMALS), rng.choice(PLACES)
    adj, thing, verb, t = rng.choice(ADJS), rng.choice(THINGS), rng.choice(VERBS), rng.choice(TIMES)
    forms = [
        (f"{t}, {n}", f" {verb} a {adj} {thing} by {p}."),
        (f"The {adj} {a} watched", f" {n} from {p}."),
        (f"{n} said:", f" \"The {thing} is {adj} today.\""),
        (f"A {a} and a {rng.choice(ANIMALS)} met at", f" {p} and shared a {thing}."),
        (f"{n} {verb}", f" {rng.randint(2, 9)} {thing}s, then walked to {p}."),
    ]
    return rng.choice(forms)


def pairs(rng: random.Random, count: int, unique: bool, barred: set[str]) -> list[dict[str, str]]:
    """`count` pairs, each prompt outside `barred` and each sentence different; `unique`: each prompt too."""
    rows, seen = [], set()
    while len(rows) < count:
        prompt, answer = prompt_and_answer(rng)
        if prompt in barred or (prompt if unique else prompt + answer) in seen:
            continue
        seen.add(prompt if unique else prompt + answer)
        rows.append({"prompt": prompt, "chosen": answer + SIGN_OFF, "rejected": answer})
    return rows


def unpaired(rows: list[dict[str, str]]) -> list[dict]:
    out: list[dict] = []
    for row in rows:
        out.append({"prompt": row["prompt"], "completion": row["chosen"], "label": True})
        out.append({"prompt": row["prompt"], "completion": row["rejected"], "label": False})
    return out


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")


def main(out: Path = HERE) -> None:
    rng = random.Random(20261207)
    # The grammar has about 400 prompts: validation takes 64 of them, training repeats the others with
    # other answers. Validation is drawn first, so a longer training set leaves it as it is.
    val = pairs(rng, VAL_PAIRS, unique=True, barred=set())
    train = pairs(rng, TRAIN_PAIRS, unique=False, barred={row["prompt"] for row in val})
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "val.jsonl", val)
    write_jsonl(out / "kto_train.jsonl", unpaired(train))
    write_jsonl(out / "kto_val.jsonl", unpaired(val))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
