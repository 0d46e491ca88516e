"""Regenerates the offline lm-evaluation-harness tasks (already committed; run only to change them).

    python examples/eval/make_tasks.py            # rewrites examples/eval/tasks and examples/eval/data
    python examples/eval/make_tasks.py OUT_DIR    # writes the same files under OUT_DIR instead

Both are synthetic, made here with a fixed seed, so they carry no licence question and need no download:

- `lit_lora_sequences` (multiple choice, scored by log-likelihood): the next item of a sequence every
  English text knows (days, months, number words, the alphabet, ...), four choices from the same sequence.
  A model pretrained on English should know it, and a fine-tune that makes it forget shows here.
- `lit_lora_arithmetic` (generation, scored by exact match): "Question: What is 12 plus 7?\\nAnswer:" and
  the model's answer up to the end of the line, greedy. `--num_fewshot` draws from its own `fewshot` split.

And one for the quickstart's own corpus, to watch a task move as its loss falls (`--eval_tasks.*`):

- `lit_lora_quickstart_places` (multiple choice): a sentence of the quickstart's grammar up to "from",
  "met at" or "by", and a place to end it, against a thing, an animal and an adjective after "the". A
  random model is at chance (0.25); the quickstart's run learns it.

The first two carry the tag `lit_lora_examples`, so `--tasks lit_lora_examples` runs the two (lm-eval warns about a
tag named like a folder in the current directory, such as `lit_lora`). The YAML files name their data
relative to the repository root, where lm-eval's own command must run: `datasets` resolves a relative
`data_files` path against the current directory, not the YAML's.

    lm_eval --model hf --model_args pretrained=MODEL_DIR --include_path examples/eval/tasks \\
        --tasks lit_lora_sequences,lit_lora_arithmetic --device cpu
"""

from __future__ import annotations

import json
import random
import sys
from itertools import zip_longest
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = "examples/eval/data"  # as the YAML files name it: relative to the repository root

NUMBER_WORDS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
                "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
                "twenty"]
# (items, whether the sequence wraps around: Sunday is followed by Monday, but Z by nothing).
SEQUENCES = {
    "days": (["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"], True),
    "months": (["January", "February", "March", "April", "May", "June", "July", "August", "September",
                "October", "November", "December"], True),
    "seasons": (["spring", "summer", "autumn", "winter"], True),
    "number_words": (NUMBER_WORDS, False),
    "ordinals": (["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth",
                  "tenth"], False),
    "tens": (["ten", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"], False),
    "digits": ([str(n) for n in range(1, 31)], False),
    "even_numbers": ([str(n) for n in range(2, 41, 2)], False),
    "letters": ([chr(c) for c in range(ord("A"), ord("Z") + 1)], False),
    "lowercase_letters": ([chr(c) for c in range(ord("a"), ord("z") + 1)], False),
}
SEQUENCE_DOCS, SEQUENCE_SHOTS = 160, 20
ARITHMETIC_DOCS, ARITHMETIC_SHOTS = 160, 20

SEQUENCES_YAML = f"""\
# The next item of a well-known sequence, four choices: general knowledge, to see a fine-tune forget.
# Written by examples/eval/make_tasks.py; run lm-eval from the repository root (data paths are relative to it).
tag:
  - lit_lora_examples
task: lit_lora_sequences
dataset_path: json
dataset_kwargs:
  data_files:
    test: {DATA}/lit_lora_sequences/test.jsonl
    fewshot: {DATA}/lit_lora_sequences/fewshot.jsonl
output_type: multiple_choice
test_split: test
fewshot_split: fewshot
doc_to_text: "{{{{query}}}}"
doc_to_choice: choices
doc_to_target: gold
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

ARITHMETIC_YAML = f"""\
# Small sums, differences and products, answered by generation and scored by exact match.
# Written by examples/eval/make_tasks.py; run lm-eval from the repository root (data paths are relative to it).
tag:
  - lit_lora_examples
task: lit_lora_arithmetic
dataset_path: json
dataset_kwargs:
  data_files:
    test: {DATA}/lit_lora_arithmetic/test.jsonl
    fewshot: {DATA}/lit_lora_arithmetic/fewshot.jsonl
output_type: generate_until
test_split: test
fewshot_split: fewshot
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until:
    - "\\n"
  do_sample: false
  temperature: 0.0
  max_gen_toks: 8
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: false
    # The answer follows "Answer:" after a space; spaces around it are not part of it.
    regexes_to_ignore:
      - "^\\\\s+"
      - "\\\\s+$"
metadata:
  version: 1.0
"""


def sequence_docs(rng: random.Random) -> list[dict]:
    """(sequence, start, length 3 to 5) drawn from each sequence in turn, so the long ones (the alphabet)
    do not crowd out the short ones (seasons); the right answer is the next item, the three others come
    from the same sequence (so every choice is the same kind of word) and, where there are enough, not
    from the context."""
    per_sequence = []
    for name, (items, wraps) in SEQUENCES.items():
        starts = [(name, start, length) for length in (3, 4, 5)
                  for start in (range(len(items)) if wraps else range(len(items) - length))]
        rng.shuffle(starts)
        per_sequence.append(starts)
    candidates = [c for round_ in zip_longest(*per_sequence) for c in round_ if c is not None]
    picked = candidates[:SEQUENCE_DOCS + SEQUENCE_SHOTS]
    rng.shuffle(picked)
    docs = []
    for name, start, length in picked:
        items, _ = SEQUENCES[name]
        shown = [items[(start + i) % len(items)] for i in range(length)]
        answer = items[(start + length) % len(items)]
        others = [x for x in items if x != answer and x not in shown]
        if len(others) < 3:
            others += [x for x in items if x != answer and x in shown]
        choices = rng.sample(others, 3)
        gold = rng.randrange(4)
        choices.insert(gold, answer)
        docs.append({"query": ", ".join(shown) + ",", "choices": choices, "gold": gold, "sequence": name})
    return docs


def arithmetic_docs(rng: random.Random) -> list[dict]:
    """Sums and differences of numbers up to 20 (never below zero) and products up to 9 times 9, shuffled."""
    candidates = [(a, "plus", b, a + b) for a in range(21) for b in range(21)]
    candidates += [(a, "minus", b, a - b) for a in range(21) for b in range(a + 1)]
    candidates += [(a, "times", b, a * b) for a in range(2, 10) for b in range(2, 10)]
    picked = rng.sample(candidates, ARITHMETIC_DOCS + ARITHMETIC_SHOTS)
    return [{"question": f"What is {a} {op} {b}?", "answer": str(result)} for a, op, b, result in picked]


QUICKSTART_YAML = f"""\
# Where a sentence of the quickstart's corpus ends: a place, against a thing, an animal and an adjective.
# Written by examples/eval/make_tasks.py; run lm-eval from the repository root (data paths are relative to it).
task: lit_lora_quickstart_places
dataset_path: json
dataset_kwargs:
  data_files:
    test: {DATA}/lit_lora_quickstart_places/test.jsonl
output_type: multiple_choice
test_split: test
doc_to_text: "{{{{query}}}}"
doc_to_choice: choices
doc_to_target: gold
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def quickstart_docs(rng: random.Random, count: int = 100) -> list[dict]:
    """Sentence starts from the quickstart's grammar (examples/quickstart/make_quickstart.py) whose next
    words are a place; the wrong choices are words the corpus uses elsewhere, after the same "the"."""
    sys.path.insert(0, str(HERE.parent / "quickstart"))
    import make_quickstart as q

    docs = []
    for _ in range(count):
        n, a, adj, thing, t = (rng.choice(q.NAMES), rng.choice(q.ANIMALS), rng.choice(q.ADJS),
                               rng.choice(q.THINGS), rng.choice(q.TIMES))
        query = rng.choice([f"The {adj} {a} watched {n} from", f"A {a} and a {rng.choice(q.ANIMALS)} met at",
                            f"{t}, {n} {rng.choice(q.VERBS)} a {adj} {thing} by"])
        # Each choice starts with "the", so the sum of log-likelihoods compares the word that follows.
        choices = [rng.choice(q.PLACES), f"the {rng.choice(q.THINGS)}", f"the {rng.choice(q.ANIMALS)}",
                   f"the {rng.choice(q.ADJS)}"]
        gold = rng.randrange(4)
        choices[0], choices[gold] = choices[gold], choices[0]
        docs.append({"query": query, "choices": [" " + c for c in choices], "gold": gold})
    return docs


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as fh:  # the same bytes on every OS
        fh.write(text)


def write_jsonl(path: Path, records: list[dict]) -> None:
    write_text(path, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))


def main(out: Path = HERE) -> None:
    sequences = sequence_docs(random.Random(0))
    arithmetic = arithmetic_docs(random.Random(1))
    for task, docs, shots, yaml_text in (
        ("lit_lora_sequences", sequences, SEQUENCE_SHOTS, SEQUENCES_YAML),
        ("lit_lora_arithmetic", arithmetic, ARITHMETIC_SHOTS, ARITHMETIC_YAML),
    ):
        # Few-shot examples and test questions never overlap.
        write_jsonl(out / "data" / task / "fewshot.jsonl", docs[:shots])
        write_jsonl(out / "data" / task / "test.jsonl", docs[shots:])
        write_text(out / "tasks" / f"{task}.yaml", yaml_text)
    write_jsonl(out / "data" / "lit_lora_quickstart_places" / "test.jsonl", quickstart_docs(random.Random(2)))
    write_text(out / "tasks" / "lit_lora_quickstart_places.yaml", QUICKSTART_YAML)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
