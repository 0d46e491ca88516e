"""The memory estimate against torch's MemTracker on a real CPU step, float32, at GPT-2 small's full shape
(12 layers, 768 wide, 50,257-token vocabulary, random init) with the chunked loss.

    python benchmarks/memory_check.py                          # batch 1 and 2 x 512, checkpointing on: ~1 min
    python benchmarks/memory_check.py --batches 1 4 --block_size 320 --no-gradient_checkpointing

The estimate's activations (dry run on fake tensors) against MemTracker's peak less the exact weights and
gradients (`tests/helpers.memtracker_activations`), as tests/unit/estimate/test_budget.py checks at 2 layers (5%).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n_layer", type=int, default=12)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 2])
    p.add_argument("--block_size", type=int, default=512)
    p.add_argument("--gradient_checkpointing", action=argparse.BooleanOptionalAction, default=True)
    args = p.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from lit_lora.constants import MB
    from lit_lora.estimate.memory import estimate_training_memory
    from lit_lora.training.module import LitLora
    from tests.helpers import memtracker_activations  # the tests' measurement, at the full depth

    gc = args.gradient_checkpointing
    print(f"GPT-2 small shape, {args.n_layer} layers, float32, CPU, block {args.block_size}, checkpointing "
          f"{'on' if gc else 'off'}: activations, estimated / MemTracker")
    for batch in args.batches:
        torch.manual_seed(0)
        module = LitLora(model_config={"n_layer": args.n_layer}, tokenizer_name_or_path="unused",
                         gradient_checkpointing=gc, block_size=args.block_size)
        start = time.perf_counter()
        estimate = estimate_training_memory(module.model, batch, args.block_size, "32-true", gc, "cpu")
        estimated_s = time.perf_counter() - start
        measured = memtracker_activations(module, batch, args.block_size, estimate)
        print(f"  batch {batch}: {estimate.activations / MB:,.1f} / {measured / MB:,.1f} MB "
              f"({estimate.activations / measured - 1:+.2%}); total estimated {estimate.total / MB:,.1f} MB "
              f"(estimate took {estimated_s:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
