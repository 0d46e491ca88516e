"""Regenerates the quickstart's corpus and tokenizer (already committed; run only to change them).

    python examples/quickstart/make_quickstart.py

The corpus is synthetic, made here from a small grammar with a fixed seed, so it carries no licence
question and has structure a tiny model learns within a minute. The tokenizer is a byte-level BPE
(GPT-2's scheme) with a 512-token vocabulary trained on that corpus with `tokenizers`.
"""

import random
from pathlib import Path

HERE = Path(__file__).resolve().parent

NAMES = ["Ada", "Brook", "Cyrus", "Dana", "Eli", "Fern", "Gus", "Hana", "Ivo", "June", "Kai", "Lena"]
ANIMALS = ["fox", "owl", "heron", "badger", "otter", "wren", "hare", "lynx", "crow", "mole"]
PLACES = ["the river", "the old mill", "the hill", "the orchard", "the harbour", "the forest", "the market"]
ADJS = ["quiet", "bright", "cold", "golden", "narrow", "silver", "busy", "gentle", "dark", "green"]
THINGS = ["lantern", "basket", "letter", "boat", "bell", "map", "kettle", "rope", "coin", "book"]
VERBS = ["found", "carried", "mended", "lost", "painted", "sold", "hid", "opened", "counted", "kept"]
TIMES = ["In the morning", "At noon", "Before dusk", "Late at night", "On market day", "After the rain"]


def sentence(rng: random.Random) -> str:
    n, a, p = rng.choice(NAMES), rng.choice(ANIMALS), rng.choice(PLACES)
    adj, thing, verb, t = rng.choice(ADJS), rng.choice(THINGS), rng.choice(VERBS), rng.choice(TIMES)
    forms = [
        f"{t}, {n} {verb} a {adj} {thing} by {p}.",
        f"The {adj} {a} watched {n} from {p}.",
        f"{n} said: \"The {thing} is {adj} today.\"",
        f"A {a} and a {rng.choice(ANIMALS)} met at {p} and shared a {thing}.",
        f"{n} {verb} {rng.randint(2, 9)} {thing}s, then walked to {p}.",
    ]
    return rng.choice(forms)


def story(rng: random.Random) -> str:
    paragraphs = []
    for _ in range(rng.randint(2, 4)):
        paragraphs.append(" ".join(sentence(rng) for _ in range(rng.randint(3, 6))))
    return "\n\n".join(paragraphs) + "\n"


def main() -> None:
    rng = random.Random(20261128)
    (HERE / "train.txt").write_text("\n".join(story(rng) for _ in range(450)), encoding="utf-8")
    (HERE / "val.txt").write_text("\n".join(story(rng) for _ in range(40)), encoding="utf-8")

    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train([str(HERE / "train.txt")], vocab_size=512, min_frequency=2, special_tokens=["<|endoftext|>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                  unk_token="<|endoftext|>", pad_token="<|endoftext|>")
    tok.save_pretrained(HERE / "tokenizer")


if __name__ == "__main__":
    main()
