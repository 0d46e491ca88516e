"""`python -m lit_lora.cli export --ckpt_path CKPT --output_dir DIR`: a LoRA-only checkpoint to PEFT's format."""

from __future__ import annotations

import json
from typing import Any, Optional

from jsonargparse import ArgumentParser

from lit_lora.cli.tool_parser import tool_parser
from lit_lora.errors import LitLoraError
from lit_lora.notes import print_note


# Each command's own output format (the default), then GGUF.
FORMATS = {"export": ("peft", "gguf"), "merge": ("transformers", "gguf")}


def build_parser(prog: str, what: str) -> ArgumentParser:
    """The options of `export` and `merge`."""
    formats = FORMATS[prog]
    parser = tool_parser(prog, what)
    parser.add_argument("--ckpt_path", type=str, required=True, help="A lit_lora checkpoint file (.ckpt).")
    parser.add_argument("--output_dir", type=str, required=True,
                        help="Folder to write: new, empty, or an earlier output of ours (with --overwrite).")
    parser.add_argument("--overwrite", action="store_true",
                        help="Replace an earlier export/merge of lit_lora in --output_dir (never other files).")
    parser.add_argument(
        "--model.model_name_or_path", type=Optional[str], default=None,
        help="Load the base model from here instead of the path saved in the checkpoint (same weights, moved).",
    )
    parser.add_argument("--format", type=Optional[str], default=formats[0],
                        help=f"{formats[0]}, or gguf: one GGUF file for llama.cpp, written by llama.cpp's own "
                             "converter from the checkout --llama_cpp names (docs/inference.md: GGUF).")
    parser.add_argument("--outtype", type=Optional[str], default=None,
                        help="With --format gguf: f32, f16, bf16 or q8_0 (the converter's --outtype). "
                             "Default: f32 for an adapter, f16 for a merged model.")
    parser.add_argument("--llama_cpp", type=Optional[str], default=None,
                        help="With --format gguf: a llama.cpp checkout holding its convert_*_to_gguf.py "
                             "(default: $LLAMA_CPP_DIR).")
    return parser


def gguf_plan(args: Any, prog: str, kind: str) -> Optional[tuple[Any, str]]:
    """(llama.cpp checkout, outtype) for --format gguf, None for the command's own format; checked before
    the minutes of loading a model."""
    # start-up: the gguf module imports export's, which loads transformers.
    from lit_lora.lora.gguf import check_outtype, find_llama_cpp

    formats = FORMATS[prog]
    if args.format not in formats:
        raise LitLoraError(f"--format {args.format!r} is not one of {', '.join(formats)}")
    if args.format != "gguf":
        if args.outtype is not None or args.llama_cpp is not None:
            raise LitLoraError("--outtype and --llama_cpp apply to --format gguf only")
        return None
    outtype = check_outtype(args.outtype, kind)
    return find_llama_cpp(args.llama_cpp, kind), outtype


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser("export", "Write adapter_model.safetensors + adapter_config.json + README.md "
                        "(or, with --format gguf, adapter.gguf).").parse_args(argv)
    # start-up: torch, transformers and peft load only once the options have parsed.
    from lit_lora.lora.export import export_adapter
    from lit_lora.lora.gguf import export_adapter_gguf
    from lit_lora.lora.serving import engine_lines
    from lit_lora.outputs import check_output_dir, shown
    from lit_lora.loading import module_from_checkpoint

    gguf = gguf_plan(args, "export", "adapter")
    check_output_dir(args.output_dir, "--output_dir", args.overwrite)  # before the minutes of loading a model
    restored = module_from_checkpoint(args.ckpt_path, args.model.model_name_or_path)
    if gguf:
        out = export_adapter_gguf(restored.module, args.output_dir, *gguf, checkpoint=restored.checkpoint,
                                  overwrite=args.overwrite)
        print_note(f"exported adapter.gguf ({gguf[1]}, by llama.cpp's convert_lora_to_gguf.py) to {shown(out)} "
                   f"(base model: {restored.module.hparams['model_name_or_path']})")
        return 0
    out = export_adapter(restored.module, args.output_dir, checkpoint=restored.checkpoint, overwrite=args.overwrite)
    print_note(f"exported adapter to {shown(out)} (base model: {restored.module.hparams['model_name_or_path']})")
    for line in engine_lines(json.loads((out / "adapter_config.json").read_text(encoding="utf-8"))):
        print_note(line)
    return 0
