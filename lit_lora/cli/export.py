"""`python -m lit_lora.cli export --ckpt_path CKPT --output_dir DIR`: a LoRA-only checkpoint to PEFT's format."""

from __future__ import annotations

import json
from typing import Optional

from jsonargparse import ArgumentParser

from lit_lora.cli.tool_parser import tool_parser
from lit_lora.notes import print_note


def build_parser(prog: str, what: str) -> ArgumentParser:
    """The options of `export` and `merge`."""
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
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser("export", "Write adapter_model.safetensors + adapter_config.json + README.md.").parse_args(argv)
    # start-up: torch, transformers and peft load only once the options have parsed.
    from lit_lora.lora.export import export_adapter
    from lit_lora.lora.serving import engine_lines
    from lit_lora.outputs import check_output_dir, shown
    from lit_lora.loading import module_from_checkpoint

    check_output_dir(args.output_dir, "--output_dir", args.overwrite)  # before the minutes of loading a model
    restored = module_from_checkpoint(args.ckpt_path, args.model.model_name_or_path)
    out = export_adapter(restored.module, args.output_dir, checkpoint=restored.checkpoint, overwrite=args.overwrite)
    print_note(f"exported adapter to {shown(out)} (base model: {restored.module.hparams['model_name_or_path']})")
    for line in engine_lines(json.loads((out / "adapter_config.json").read_text(encoding="utf-8"))):
        print_note(line)
    return 0
