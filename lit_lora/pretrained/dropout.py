"""The base model's dropout: one value for every dropout probability its transformers config holds."""

from __future__ import annotations

import re
from typing import Any, Optional

# Not the heads a causal LM leaves out (GPT-2's double-heads summary, classifiers).
_DROPOUT_FIELD = re.compile(r"^(?!summary_|classifier_).*(dropout|pdrop)(_prob|_rate)?$")


def set_dropout(config: Any, p: Optional[float]) -> None:
    """Set each dropout probability a transformers config holds (GPT-2's attn_pdrop, resid_pdrop and
    embd_pdrop, Llama's attention_dropout, ...) to `p`, before the model is built from it: the layers read
    them then, or in their forward. None leaves the config as it is."""
    if p is None:
        return
    for key, value in list(vars(config).items()):
        if _DROPOUT_FIELD.search(key) and isinstance(value, (int, float)) and not isinstance(value, bool):
            setattr(config, key, p)
