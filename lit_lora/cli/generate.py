"""`python -m lit_lora.cli generate`: complete prompts with a fine-tuned model (or the base alone).

    python -m lit_lora.cli generate --ckpt_path CKPT --prompt "Once upon a time" --max_new_tokens 40
    python -m lit_lora.cli generate --adapter_path DIR --prompts_file prompts.txt --output out.jsonl
    python -m lit_lora.cli generate --model_dir MERGED_DIR --prompt "A" --prompt "B" --temperature 0
    python -m lit_lora.cli generate --ckpt_path CKPT --chat --prompt "What does Fern sell?"
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from jsonargparse import ArgumentParser

from lit_lora.cli.tool_parser import add_settings_options, settings_from_options, tool_parser
from lit_lora.errors import LitLoraError
from lit_lora.generation.settings import GenerationSettings
from lit_lora.notes import print_note


def build_parser() -> ArgumentParser:
    parser = tool_parser(
        "generate",
        "Complete prompts with a LoRA checkpoint, an exported adapter, a merged model folder, or the base model "
        "alone. Prints to the terminal as text is produced, or writes JSONL with --output.",
    )
    _add_model_options(parser)
    _add_prompt_options(parser)
    add_settings_options(parser, GenerationSettings)  # --max_new_tokens ... --seed: defaults and help from it
    run = parser.add_argument_group("device and dtype")
    run.add_argument("--device", type=Literal["cpu", "cuda", "auto"], default="auto",
                     help="auto: CUDA when available, else CPU.")
    run.add_argument("--dtype", type=Literal["float32", "bfloat16"], default="float32",
                     help="Weights and compute dtype (bfloat16 works on CPU too, slower there).")
    return parser


def _add_model_options(parser: ArgumentParser) -> None:
    src = parser.add_argument_group("model (one source; none: the base model alone)")
    src.add_argument("--ckpt_path", type=Optional[str], default=None,
                     help="A lit_lora checkpoint file (.ckpt); the base model from its hyperparameters.")
    src.add_argument("--adapter_path", type=Optional[str], default=None,
                     help="A PEFT adapter folder (`export`'s output, or anyone's).")
    src.add_argument("--model_dir", type=Optional[str], default=None,
                     help="A merged model folder (`merge`'s output) or any transformers model folder.")
    src.add_argument(
        "--model.model_name_or_path", type=Optional[str], default=None,
        help="Base model to load instead of the one the checkpoint/adapter names (same weights, moved); "
        "alone, generate with the base model without any adapter.",
    )
    src.add_argument("--model.tokenizer_name_or_path", type=Optional[str], default=None,
                     help="Tokenizer; default: the one recorded with the model, else the model's folder.")


def _add_prompt_options(parser: ArgumentParser) -> None:
    io = parser.add_argument_group("prompts and output")
    io.add_argument("--prompt", type=str, action="append", default=[],
                    help="A prompt; repeat the flag for several.")
    io.add_argument("--prompts_file", type=Optional[str], default=None,
                    help="Prompts, one per line (blank lines skipped), or JSONL with a 'prompt' field.")
    io.add_argument("--chat", action="store_true",
                    help="Each prompt is a user message: reply with the model's chat template (the one it was "
                    "trained with; else the tokenizer's, else `plain`) and print only the reply.")
    io.add_argument("--messages_file", type=Optional[str], default=None,
                    help="Conversations to reply to, JSONL: one message list (or {\"messages\": [...]}) per line. "
                    "Implies --chat.")
    io.add_argument("--output", type=Optional[str], default=None,
                    help="Write JSONL ({id, sample, prompt, completion} per line) here instead of printing.")
    io.add_argument("--overwrite", action="store_true",
                    help="Replace an earlier --output file of ours (never another file).")
    io.add_argument("--batch_size", type=int, default=8, help="Prompts generated together (left-padded).")


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    settings = settings_from_options(GenerationSettings, args)  # its checks, before any model loads
    # start-up: torch, transformers and peft load only once the options have parsed.
    from lit_lora.generation.chat import resolve_template
    from lit_lora.generation.prompts import generate_records, read_messages, read_prompts
    from lit_lora.outputs import check_output_file
    from lit_lora.loading import load_generation_model

    if args.output:
        check_output_file(args.output, "--output", args.overwrite)  # before loading the model
    prompts: list[Any] = list(args.prompt) + (read_prompts(args.prompts_file) if args.prompts_file else [])
    # A prompts file of {"messages": [...]} records is conversations too.
    chat = args.chat or bool(args.messages_file) or any(isinstance(p, list) for p in prompts)
    if chat:
        prompts = [[{"role": "user", "content": p}] if isinstance(p, str) else p for p in prompts]
        prompts += read_messages(args.messages_file) if args.messages_file else []
    if not prompts:
        raise LitLoraError("no prompts: give --prompt TEXT (repeatable), --prompts_file FILE or --messages_file FILE")
    model, tokenizer = load_generation_model(
        ckpt_path=args.ckpt_path, adapter_path=args.adapter_path, model_dir=args.model_dir,
        model_name_or_path=args.model.model_name_or_path, tokenizer_name_or_path=args.model.tokenizer_name_or_path,
        device=args.device, dtype=args.dtype,
    )
    # A reply is rendered with the template the model was trained with (restore puts it on the tokenizer).
    template = resolve_template(tokenizer, "auto")[1] if chat else None
    if args.output:
        return _write_jsonl(model, tokenizer, prompts, settings, args.batch_size, args.output, args.overwrite,
                            template)
    if len(prompts) == 1 and settings.num_return_sequences == 1:
        # One sequence: print tokens as they come (a reply alone, a completion after its prompt).
        print("" if chat else prompts[0], end="", flush=True)
        streamer = _streamer(tokenizer, chat)
        try:
            for _ in generate_records(model, tokenizer, prompts, settings, args.batch_size, streamer, template):
                pass
        except BaseException:  # Ctrl-C or an error mid-line: its message must not run on from the text
            print(flush=True)
            raise
        return 0
    # Several: each completion is printed when its batch is done.
    for record in generate_records(model, tokenizer, prompts, settings, args.batch_size, chat_template=template):
        sample = f", sample {record['sample']}" if settings.num_return_sequences > 1 else ""
        print(f"=== prompt {record['id']}{sample} ===")
        print(record["completion"][0]["content"] if chat else record["prompt"] + record["completion"], flush=True)
    return 0


def _streamer(tokenizer: Any, chat: bool) -> Any:
    """transformers' TextStreamer; for a reply, without the space its first token carries (the one after the
    template's "Assistant:"), as the written records hold it."""
    from transformers import TextStreamer  # start-up: see main

    class Streamer(TextStreamer):
        started = not chat

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if not self.started:
                text = text.lstrip()
                self.started = bool(text)
            super().on_finalized_text(text, stream_end=stream_end)

    return Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def _write_jsonl(
    model: Any, tokenizer: Any, prompts: list[Any], settings: GenerationSettings, batch_size: int, output: str,
    overwrite: bool, template: Optional[str],
) -> int:
    # start-up: see main
    from lit_lora.generation.prompts import generate_records
    from lit_lora.generation.writer import open_completions, write_records

    path, fh = open_completions(output, "--output", overwrite)
    with fh:
        count = write_records(fh, generate_records(model, tokenizer, prompts, settings, batch_size,
                                                   chat_template=template))
    print_note(f"wrote {count} completion(s) to {path}")
    return 0
