"""`python -m lit_lora.cli merge --ckpt_path CKPT --output_dir DIR`: a full transformers model, LoRA merged in."""

from __future__ import annotations

from typing import Optional

from lit_lora.cli.export import build_parser, gguf_plan
from lit_lora.notes import print_note


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser(
        "merge", "Merge the LoRA weights into the base model and save it with its tokenizer (loads without PEFT; "
        "with --format gguf, one model.gguf for llama.cpp).",
    ).parse_args(argv)
    # start-up: torch, transformers and peft load only once the options have parsed.
    from lit_lora.lora.export import merge_to_dir
    from lit_lora.lora.gguf import merge_gguf
    from lit_lora.outputs import check_output_dir, shown
    from lit_lora.loading import module_from_checkpoint

    gguf = gguf_plan(args, "merge", "merged")
    check_output_dir(args.output_dir, "--output_dir", args.overwrite)  # before the minutes of loading a model
    # Into the full-precision weights: merging into 4-bit ones would round the LoRA update away.
    restored = module_from_checkpoint(args.ckpt_path, args.model.model_name_or_path, dequantized=True)
    if gguf:
        out = merge_gguf(restored.module, args.output_dir, *gguf, checkpoint=restored.checkpoint,
                         overwrite=args.overwrite)
        what = f"model.gguf ({gguf[1]}, by llama.cpp's convert_hf_to_gguf.py)"
    else:
        out = merge_to_dir(restored.module, args.output_dir, checkpoint=restored.checkpoint,
                           overwrite=args.overwrite)
        what = "model"
    trained_on = restored.checkpoint["lit_lora"].get("quantization")
    print_note(f"merged {what} written to {shown(out)}"
               + (f" (LoRA merged into the full-precision base; training's base was {trained_on})" if trained_on else ""))
    return 0
