"""`python -m lit_lora.cli generate`: complete prompts with a fine-tuned model (or the base alone).

    python -m lit_lora.cli generate --ckpt_path CKPT --prompt "Once upon a time" --max_new_tokens 40
    python -m lit_lora.cli generate --adapter_path DIR --prompts_file prompts.txt --output out.jsonl
    python -m lit_lora.cli generate --model_dir MERGED_DIR --prompt "A" --prompt "B" --temperature 0
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from typing import Any, Optional

from lit_lora.errors import LitLoraError
from lit_lora.generation.settings import GenerationSettings

_DEFAULTS = {f.name: f.default for f in fields(GenerationSettings)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lit_lora.cli generate",
        description="Complete prompts with a LoRA checkpoint, an exported adapter, a merged model folder, or the "
        "base model alone. Prints to the terminal as text is produced, or writes JSONL with --output.",
    )
    src = parser.add_argument_group("model (one source; none: the base model alone)")
    src.add_argument("--ckpt_path", help="A lit_lora checkpoint file (.ckpt); the base model from its hyperparameters.")
    src.add_argument("--adapter_path", help="A PEFT adapter folder (`export`'s output, or anyone's).")
    src.add_argument("--model_dir", help="A merged model folder (`merge`'s output) or any transformers model folder.")
    src.add_argument(
        "--model.model_name_or_path", dest="model_name_or_path", default=None,
        help="Base model to load instead of the one the checkpoint/adapter names (same weights, moved); "
        "alone, generate with the base model without any adapter.",
    )
    src.add_argument(
        "--model.tokenizer_name_or_path", dest="tokenizer_name_or_path", default=None,
        help="Tokenizer; default: the one recorded with the model, else the model's folder.",
    )
    io = parser.add_argument_group("prompts and output")
    io.add_argument("--prompt", action="append", default=[], help="A prompt; repeat the flag for several.")
    io.add_argument("--prompts_file",
                    help="Prompts, one per line (blank lines skipped), or JSONL with a 'prompt' field.")
    io.add_argument("--output",
                    help="Write JSONL ({id, sample, prompt, completion} per line) here instead of printing.")
    io.add_argument("--overwrite", action="store_true",
                    help="Replace an earlier --output file of ours (never another file).")
    io.add_argument("--batch_size", type=int, default=8, help="Prompts generated together (left-padded). Default: 8.")
    gen = parser.add_argument_group("generation")
    gen.add_argument("--max_new_tokens", type=int, default=_DEFAULTS["max_new_tokens"],
                     help="Tokens to generate per prompt (fewer if EOS comes first). Default: %(default)s.")
    gen.add_argument("--temperature", type=float, default=_DEFAULTS["temperature"],
                     help="0: greedy (deterministic); > 0: sampling, higher is more random. Default: %(default)s.")
    gen.add_argument("--top_k", type=int, default=_DEFAULTS["top_k"],
                     help="Sample from the k most likely tokens only; 0: no limit. Default: %(default)s.")
    gen.add_argument("--top_p", type=float, default=_DEFAULTS["top_p"],
                     help="Nucleus sampling threshold; 1.0: no limit. Default: %(default)s.")
    gen.add_argument("--seed", type=int, default=_DEFAULTS["seed"],
                     help="Sampling seed: the same seed, prompts and batch size give the same text. "
                     "Default: %(default)s.")
    gen.add_argument("--num_return_sequences", type=int, default=_DEFAULTS["num_return_sequences"],
                     help="Completions per prompt (needs temperature > 0). Default: %(default)s.")
    gen.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto",
                     help="auto: CUDA when available, else CPU. Default: %(default)s.")
    gen.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                     help="Weights and compute dtype (bfloat16 works on CPU too, slower there). Default: %(default)s.")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    # start-up: torch, transformers and peft load only once the options have parsed.
    from lit_lora.generation.prompts import generate_records, read_prompts
    from lit_lora.outputs import check_output_file
    from lit_lora.restore import load_generation_model

    if args.output:
        check_output_file(args.output, "--output", args.overwrite)  # before loading the model
    prompts = list(args.prompt) + (read_prompts(args.prompts_file) if args.prompts_file else [])
    if not prompts:
        raise LitLoraError("no prompts: give --prompt TEXT (repeatable) or --prompts_file FILE")
    settings = GenerationSettings(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        num_return_sequences=args.num_return_sequences, seed=args.seed,
    )
    model, tokenizer = load_generation_model(
        ckpt_path=args.ckpt_path, adapter_path=args.adapter_path, model_dir=args.model_dir,
        model_name_or_path=args.model_name_or_path, tokenizer_name_or_path=args.tokenizer_name_or_path,
        device=args.device, dtype=args.dtype,
    )
    if args.output:
        return _write_jsonl(model, tokenizer, prompts, settings, args.batch_size, args.output, args.overwrite)
    if len(prompts) == 1 and settings.num_return_sequences == 1:
        # One sequence: print tokens as they come.
        from transformers import TextStreamer

        print(prompts[0], end="", flush=True)
        streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        for _ in generate_records(model, tokenizer, prompts, settings, args.batch_size, streamer=streamer):
            pass
        return 0
    # Several: each completion is printed when its batch is done.
    for record in generate_records(model, tokenizer, prompts, settings, args.batch_size):
        sample = f", sample {record['sample']}" if settings.num_return_sequences > 1 else ""
        print(f"=== prompt {record['id']}{sample} ===")
        print(record["prompt"] + record["completion"], flush=True)
    return 0


def _write_jsonl(
    model: Any, tokenizer: Any, prompts: list[str], settings: GenerationSettings, batch_size: int, output: str,
    overwrite: bool,
) -> int:
    # start-up: see main
    from lit_lora.generation.prompts import generate_records
    from lit_lora.generation.writer import open_completions, write_records

    path, fh = open_completions(output, "--output", overwrite)
    with fh:
        count = write_records(fh, generate_records(model, tokenizer, prompts, settings, batch_size))
    print(f"lit_lora: wrote {count} completion(s) to {path}", file=sys.stdout)
    return 0
