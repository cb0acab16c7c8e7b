"""KV cache sizes from the cache types' block layouts (DESIGN.md, "Cache types").

Napkin math for the default model (Gemma 3 270M: 18 layers, 1 KV head, head_dim 256, layers
5, 11, 17 global, the 15 others sliding with a 512-token window): one token in one layer costs
256 values for K and 256 for V; f16 = 2 x 256 x 2 B = 1 KiB per layer per token. A sliding layer
never holds more than 512 cells, so at 4096 tokens f16 takes 3 x 4096 KiB + 15 x 512 KiB = 19.5 MiB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# type -> (values per block, bytes per block)
BLOCKS: dict[str, tuple[int, int]] = {
    "f16": (1, 2),
    "q8_0": (32, 34),
    "q4_0": (32, 18),
    "turbo4": (128, 68),
    "turbo4lm": (128, 68),
    "turbo3": (128, 50),
    "turbo2": (128, 34),
}
CACHE_TYPES: tuple[str, ...] = tuple(BLOCKS)


def bits_per_value(type_name: str) -> float | None:
    """16, 8.5, 4.5, 4.25, 4.25, 3.125, 2.125; None for a type this table does not know."""
    b = BLOCKS.get(type_name)
    return None if b is None else 8.0 * b[1] / b[0]


@dataclass(frozen=True)
class ModelShape:
    n_layer: int = 18
    n_head_kv: int = 1
    head_dim: int = 256
    sliding_window: int = 512
    global_layers: tuple[int, ...] = field(default=(5, 11, 17))
    name: str = "gemma3 270M"

    def cells(self, layer: int, n_ctx: int) -> int:
        return n_ctx if layer in self.global_layers else min(n_ctx, self.sliding_window)


DEFAULT_SHAPE = ModelShape()


def row_bytes(type_name: str, head_dim: int, bits: float | None = None) -> float:
    """Bytes of one head's row of ``head_dim`` values; blocks pad the row (a turbo type zero-pads
    head_dim to a multiple of 128). ``bits`` (bits/value) is used for a type not in BLOCKS."""
    b = BLOCKS.get(type_name)
    if b is None:
        if bits is None:
            raise KeyError(type_name)
        return head_dim * bits / 8.0
    per, nb = b
    return math.ceil(head_dim / per) * nb


def kv_bytes(
    type_k: str,
    type_v: str,
    n_ctx: int,
    shape: ModelShape = DEFAULT_SHAPE,
    bits_k: float | None = None,
    bits_v: float | None = None,
) -> float:
    """Bytes of K and V for ``n_ctx`` tokens over all layers of ``shape``."""
    per_cell = shape.n_head_kv * (row_bytes(type_k, shape.head_dim, bits_k) + row_bytes(type_v, shape.head_dim, bits_v))
    return float(sum(shape.cells(layer, n_ctx) for layer in range(shape.n_layer)) * per_cell)
