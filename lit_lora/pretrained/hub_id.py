"""The hub id of a base model given as a local folder, where one is recorded: what an exported adapter names
as its base (`base_model_name_or_path`), so engines and the hub find it on another machine."""

from __future__ import annotations

import json
import re
from pathlib import Path

# "owner/name" or a bare legacy name such as "gpt2", never a path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# The hub cache's layout: .../models--owner--name/snapshots/<revision>
_CACHE_SNAPSHOT = re.compile(r"models--(?P<id>[^/\\]+)[/\\]snapshots[/\\][^/\\]+[/\\]?$")


def looks_like_hub_id(value: str) -> bool:
    return bool(_HUB_ID.match(value)) and ".." not in value and not Path(value).expanduser().exists()


def hub_id(model_name_or_path: str) -> str:
    """`model_name_or_path` when it is a hub id; for a local folder, the id its hub-cache path or its
    config.json's `_name_or_path` records (transformers before 5 wrote it on save_pretrained); otherwise
    the folder itself."""
    folder = Path(model_name_or_path).expanduser()
    if not folder.is_dir():
        return model_name_or_path
    cached = _CACHE_SNAPSHOT.search(str(folder.resolve()))
    if cached:
        return cached["id"].replace("--", "/", 1)
    try:
        recorded = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("_name_or_path")
    except (OSError, ValueError, AttributeError):
        return model_name_or_path
    return recorded if isinstance(recorded, str) and looks_like_hub_id(recorded) else model_name_or_path
