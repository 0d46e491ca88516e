"""Chat templates: which one a run uses, rendering a conversation with it, and the token a reply ends on.

Templates are the tokenizer's Jinja, rendered by `tokenizer.apply_chat_template` exactly as plain
transformers renders them; nothing here parses Jinja. A tokenizer without a template (GPT-2's) gets the
built-in `plain` one: text GPT-2's vocabulary already holds (no new tokens, no embedding resize), each
assistant turn ended by EOS so the model learns to stop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from lit_lora.errors import LitLoraError

ROLES = ("system", "user", "assistant", "tool")

# The generation prompt is "Assistant:" with no trailing space: the reply's first token then carries its
# own leading space (" Hello"), as it does in the trained text, so prompt and training tokenize alike.
PLAIN = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ message['content'] }}{{ '\\n\\n' }}"
    "{%- elif message['role'] == 'user' -%}User: {{ message['content'] }}{{ '\\n\\n' }}"
    "{%- elif message['role'] == 'assistant' -%}Assistant: {{ message['content'] }}{{ eos_token }}{{ '\\n\\n' }}"
    "{%- else -%}{{ message['role'] | capitalize }}: {{ message['content'] }}{{ '\\n\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}Assistant:{%- endif -%}"
)
BUILT_IN = {"plain": PLAIN}
# What a template is checked on when it is chosen: every role, and two assistant turns, each message's
# text one no template writes itself.
SAMPLE = [{"role": "system", "content": "Sq1"}, {"role": "user", "content": "Uq2"},
          {"role": "assistant", "content": "Aq3"}, {"role": "tool", "content": "Tq4"},
          {"role": "assistant", "content": "Bq5"}]


def _own_template(tokenizer: Any) -> Optional[str]:
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, dict):  # a few tokenizers keep named templates; "default" is what transformers uses
        own = own.get("default")
    return own or None


def resolve_template(tokenizer: Any, option: str) -> tuple[str, str]:
    """(name to show, Jinja text) for `--data.chat_template`: "auto" (the tokenizer's own, else `plain`),
    "tokenizer", a built-in name, a Jinja file, or Jinja text itself (what a checkpoint records)."""
    if option in ("auto", "tokenizer"):
        own = _own_template(tokenizer)
        if own:
            return "the tokenizer's own" + _prompt_note(tokenizer, own), own
        if option == "tokenizer":
            raise LitLoraError("data.chat_template 'tokenizer': this tokenizer has no chat_template; use 'plain' "
                               "or a Jinja file")
        return "plain (built in: the tokenizer has none)", PLAIN
    if option in BUILT_IN:
        return option, BUILT_IN[option]
    if "{{" in option or "{%" in option:
        template = check_template(tokenizer, option, "data.chat_template")
        return "recorded with the model" + _prompt_note(tokenizer, template), template
    path = Path(option).expanduser()
    if not path.is_file():
        raise LitLoraError(f"data.chat_template {option!r} is not a file, nor one of auto, tokenizer, "
                           f"{', '.join(BUILT_IN)}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise LitLoraError(f"data.chat_template {option!r} cannot be read as UTF-8 text: {err}") from err
    template = check_template(tokenizer, text, f"data.chat_template {option!r}")
    return str(path) + _prompt_note(tokenizer, template), template


def _prompt_note(tokenizer: Any, template: str) -> str:
    """What the name of a template without a generation prompt says: its assistant turns train whole,
    role marker included (a reply is generated with the marker too, so that is what inference needs)."""
    question = SAMPLE[1:2]
    if render(tokenizer, template, question, generation_prompt=True) != render(tokenizer, template, question):
        return ""
    return " (it adds no generation prompt: each assistant turn trains whole, its role marker too)"


def check_template(tokenizer: Any, template: str, name: str) -> str:
    """`template`, once it renders SAMPLE (else one line naming `name` and Jinja's complaint)."""
    try:
        text = render(tokenizer, template, SAMPLE, generation_prompt=True)
    except LitLoraError as err:
        raise LitLoraError(f"{name} does not render a conversation: {err}") from None
    missing = [m["content"] for m in SAMPLE if m["role"] in ("user", "assistant") and m["content"] not in text]
    if missing:
        raise LitLoraError(f"{name} renders a conversation without its messages' content (no {missing[0]!r} in "
                           f"{text[:80]!r})")
    return template


def render(tokenizer: Any, template: str, messages: list[dict[str, Any]], generation_prompt: bool = False,
           tools: Optional[list[dict[str, Any]]] = None) -> str:
    """The conversation as text, as `apply_chat_template(tokenize=False)` gives it (`tools`: the function
    schemas a tool-calling template lists)."""
    try:
        return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                             add_generation_prompt=generation_prompt, tools=tools)
    except Exception as err:  # Jinja's TemplateError, or whatever a template's raise_exception raises
        line = f" at line {err.lineno}" if isinstance(getattr(err, "lineno", None), int) else ""
        raise LitLoraError(f"{type(err).__name__}{line}: {getattr(err, 'message', None) or err}") from None


def chat_prompt_ids(tokenizer: Any, template: str, messages: list[dict[str, str]]) -> list[int]:
    """The prompt a reply is generated from: the template with its generation prompt, tokenized as
    `apply_chat_template(tokenize=True)` does (special tokens come from the template, none are added)."""
    text = render(tokenizer, template, messages, generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _after_reply(tokenizer: Any, template: str) -> tuple[str, list[int], set[int]]:
    """(the text the template writes after a reply, its token ids, the tokenizer's special ids)."""
    reply = "Zq7"  # text no template writes itself
    text = render(tokenizer, template, [{"role": "user", "content": "U"}, {"role": "assistant", "content": reply}])
    after = text[text.rfind(reply) + len(reply):]
    special = set(tokenizer.all_special_ids) | {int(i) for i in getattr(tokenizer, "added_tokens_decoder", {})}
    return after, tokenizer(after, add_special_tokens=False)["input_ids"], special


def stop_ids(tokenizer: Any, template: str) -> list[int]:
    """The ids a reply ends on: EOS, and the special token the template closes an assistant turn with
    (`<|im_end|>` for ChatML templates) when that is another."""
    ids = [tokenizer.eos_token_id]
    following, special = _after_reply(tokenizer, template)[1:]
    if following and following[0] in special and following[0] not in ids:
        ids.append(following[0])
    return ids


def end_of_turn_note(tokenizer: Any, template: str) -> Optional[str]:
    """A line when the marker the template ends a reply with is not one token of this tokenizer (ChatML's
    `<|im_end|>` on GPT-2's vocabulary): generation cannot stop on it, only on EOS."""
    after, following, special = _after_reply(tokenizer, template)
    marker = after.strip().split()[0] if after.strip() else ""
    if not marker or (following and following[0] in special):
        return None
    pieces = len(tokenizer(marker, add_special_tokens=False)["input_ids"])
    how = f"splits into {pieces} tokens" if pieces > 1 else "does not hold as a special token"
    return (f"the chat template ends a reply with {marker!r}, which this tokenizer {how}: "
            f"generated replies will stop only at EOS ({tokenizer.eos_token!r}); add {marker!r} to the tokenizer "
            "as a special token (and resize the model's embeddings) to stop on it")
