"""Names of settings and configurations as the report tables show them."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

PRETTY = {
    "model_filename": "model", "backend": "backend", "device": "device", "n_threads": "threads",
    "type_k": "type_k", "type_v": "type_v", "spec": "spec", "draft_block_size": "B", "draft_max": "draft_max",
    "pipeline_depth": "depth", "n_prompt": "n_prompt", "n_gen": "n_gen", "prompt_kind": "prompt",
    "prompt_index": "#",
}  # fmt: skip


def key_str(col: str, v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if col == "model_filename":
        return Path(str(v)).name
    return str(v)


def config_label(rec: pd.Series | dict[str, Any], keys: list[str]) -> str:
    """Short name of a configuration from its ``keys``: "q8_0/turbo3 mtp B=4 depth=2"."""
    parts: list[str] = []
    for k in keys:
        v = rec.get(k)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        s = key_str(k, v)
        if k == "type_v" and parts and "type_k" in keys:
            parts[-1] += "/" + s
        elif k in ("type_k", "type_v", "spec", "model_filename", "backend", "device", "prompt_kind"):
            parts.append(s)
        else:
            parts.append(f"{PRETTY.get(k, k)}={s}")
    return " ".join(parts) or "all"
