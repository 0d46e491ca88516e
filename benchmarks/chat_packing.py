"""Packing on or off for conversations: tokens per second and the time of one epoch, measured.

    python benchmarks/chat_packing.py [--conversations 2000] [--block 256] [--batch 8] [--steps 30]

A ragged chat set (1 to 6 turns, replies of 2 to 40 words, seeded) is tokenized with the quickstart's
tokenizer and the built-in template through `corpus.build_split`, once padded (length-bucketed batches,
as `fit` samples them) and once packed. Then LoRA trains the quickstart's GPT-2 shape at 4 x 256 wide
for `--steps` optimizer steps on each, in the same process, and the table gives real tokens/s, trained
tokens/s, the padding (or packing) efficiency and the projected time of one epoch. CPU timings are noisy:
compare the two rows of one run.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORDS = "the a fox owl river mill market bright cold lantern basket boat map sells lives by near old".split()


def ragged_chats(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    chats = []
    for _ in range(n):
        messages = []
        for _ in range(rng.randint(1, 6)):
            messages.append({"role": "user", "content": " ".join(rng.choices(WORDS, k=rng.randint(3, 20))) + "?"})
            messages.append({"role": "assistant", "content": " ".join(rng.choices(WORDS, k=rng.randint(2, 40))) + "."})
        chats.append({"messages": messages})
    return chats


def measure(ds, tokenizer, batch: int, steps: int, sampler_kwargs: dict) -> dict:
    import torch

    from lit_lora.data.batches import Collator, RowsView
    from lit_lora.data.report import padding_efficiency, row_stats
    from lit_lora.data.samplers import ResumableSampler
    from lit_lora.training.module import LitLora
    from lit_lora.objectives.nll import model_nll

    torch.manual_seed(0)
    module = LitLora(model_name_or_path="random-init", tokenizer_name_or_path=str(ROOT / "examples/quickstart/tokenizer"),
                     model_config={"n_layer": 4, "n_embd": 256, "n_head": 4, "n_positions": 512, "vocab_size": 512,
                                   "bos_token_id": 0, "eos_token_id": 0},
                     gradient_checkpointing=False, block_size=256)
    model = module.model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    lengths, targets = row_stats(ds)
    order = ResumableSampler(len(ds), seed=0, batch_size=batch, **sampler_kwargs).epoch_order(0)
    batches = [order[k : k + batch] for k in range(0, len(order), batch)]
    rows, collate = RowsView(ds), Collator(tokenizer.pad_token_id)
    tokens = trained = 0
    start = None
    for step, indices in enumerate(batches[: steps + 3]):
        if step == 3:  # three warm-up steps are not timed
            start, tokens, trained = time.perf_counter(), 0, 0
        b = collate([rows[i] for i in indices])
        nll, n = model_nll(model, b["input_ids"], b.get("attention_mask"), b["labels"], position_ids=b.get("position_ids"))
        (nll / n).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += int(lengths[indices].sum())
        trained += int(n)
    seconds = time.perf_counter() - start
    timed = min(steps, len(batches) - 3)
    return {"rows": len(ds), "tokens/s": tokens / seconds, "trained tokens/s": trained / seconds,
            "efficiency": padding_efficiency(lengths, batches), "epoch s": seconds / timed * len(batches),
            "steps/epoch": len(batches), "trained/epoch": int(targets.sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conversations", type=int, default=2000)
    parser.add_argument("--block", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lit_lora.data.corpus import build_split
    from lit_lora.pretrained.hub import load_tokenizer

    tokenizer = load_tokenizer(str(ROOT / "examples/quickstart/tokenizer"))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "chats.jsonl"
        path.write_text("".join(json.dumps(c) + "\n" for c in ragged_chats(args.conversations)))
        split = ([str(path)], "messages", tokenizer, args.block, str(Path(tmp) / "cache"))
        padded = build_split(*split, packing=False)
        packed = build_split(*split, packing=True)
        results = {"padded, length-bucketed": measure(padded, tokenizer, args.batch, args.steps,
                                                      {"lengths": [len(x) for x in padded["input_ids"]],
                                                       "bucket_size": args.batch}),
                   "packed": measure(packed, tokenizer, args.batch, args.steps, {})}
    print(f"{args.conversations} conversations, block {args.block}, batch {args.batch}, {args.steps} timed steps")
    print("| layout | sequences | steps/epoch | efficiency | tokens/s | trained tokens/s | epoch (s) |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['rows']:,} | {r['steps/epoch']:,} | {100 * r['efficiency']:.1f}% | {r['tokens/s']:,.0f} | "
              f"{r['trained tokens/s']:,.0f} | {r['epoch s']:,.0f} |")


if __name__ == "__main__":
    main()
