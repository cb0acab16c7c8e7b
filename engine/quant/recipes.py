"""Which tensors a quantize run converts: eligibility rules and named recipes.

Never converted: norms, 1-D tensors, integer tensors (I8..I64, e.g. ``mtp.token_ordering``), rows
whose length is not a multiple of 32, and ``token_embd.weight`` unless asked for. A recipe then
picks among the eligible tensors:

- ``all``: every eligible tensor.
- ``mixed``: the fork's best trade-off: attention projections (q, k, v, output) and ffn gate/up
  converted; ``ffn_down`` and every tensor of the first two and last two layers kept.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass

_INT_TYPES = {24, 25, 26, 27}  # I8, I16, I32, I64
_LAYER = re.compile(r"^blk\.(\d+)\.")
EMBEDDING = "token_embd.weight"


@dataclass(frozen=True)
class Recipe:
    name: str
    help: str
    pick: Callable[[str, int], bool]  # (tensor name, n_layers) -> convert?


def _layer(name: str) -> int | None:
    m = _LAYER.match(name)
    return int(m.group(1)) if m else None


def _mixed(name: str, n_layers: int) -> bool:
    layer = _layer(name)
    if layer is None:
        return name == EMBEDDING  # only reaches here when the embedding was asked for
    if layer < 2 or layer >= n_layers - 2:
        return False
    kind = name.split(".")[2]
    return kind in {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up"}


RECIPES: dict[str, Recipe] = {
    "all": Recipe("all", "every linear weight", lambda name, n_layers: True),
    "mixed": Recipe(
        "mixed",
        "attention and ffn gate/up; ffn_down and the first/last two layers kept",
        _mixed,
    ),
}


def n_layers_of(tensor_names: list[str]) -> int:
    layers = [n for n in (_layer(t) for t in tensor_names) if n is not None]
    return max(layers) + 1 if layers else 0


def skip_reason(name: str, ne: tuple[int, ...], type_id: int, keep: list[str], embedding: bool) -> str | None:
    """Why a tensor keeps its type regardless of the recipe (None: eligible)."""
    if any(fnmatch.fnmatchcase(name, g) for g in keep):
        return "--keep"
    if type_id in _INT_TYPES:
        return "integer"
    if len(ne) < 2 or "norm" in name:
        return "norm/vector"
    if ne[0] % 32:
        return "row not a multiple of 32"
    if name == EMBEDDING and not embedding:
        return "embedding"
    return None


def plan(
    tensors: list[tuple[str, tuple[int, ...], int]],
    recipe: str = "all",
    keep: list[str] | None = None,
    embedding: bool = False,
) -> dict[str, str | None]:
    """name -> None (convert) or the reason it is kept."""
    rec = RECIPES[recipe]
    n_layers = n_layers_of([t[0] for t in tensors])
    out: dict[str, str | None] = {}
    for name, ne, type_id in tensors:
        why = skip_reason(name, ne, type_id, keep or [], embedding)
        if why is None and not rec.pick(name, n_layers):
            why = f"recipe {recipe}"
        out[name] = why
    return out
