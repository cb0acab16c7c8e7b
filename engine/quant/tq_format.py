"""TQ3_1S / TQ4_1S weight formats: constants shared by the reference and the fast code.

Layout (see shared/DESIGN.md, "Weight formats"): a block holds 32 weights as ``f16 d0`` (scale of
elements 0..15), ``f16 d1`` (16..31) and ``qs`` (TQ3_1S: 12 bytes, 3-bit indices; TQ4_1S: 16 bytes,
nibbles). Values live in a rotated domain: signs ⊙ x, 32-point Walsh–Hadamard butterfly, × 1/sqrt(32).

Type ids 45 / 46 are the numbering of the llama.cpp fork turbospec follows
(AtomicBot-ai/atomic-llama-cpp-turboquant); other TurboQuant forks number these types differently.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

QK = 32  # weights per block
HALF = 16  # weights per scale
TQ3_1S = 45
TQ4_1S = 46

# type id -> (name, block size in weights, block size in bytes); the loader's contract.
TQ_TYPES: dict[int, tuple[str, int, int]] = {TQ3_1S: ("TQ3_1S", QK, 16), TQ4_1S: ("TQ4_1S", QK, 20)}
TQ_TYPE_BY_NAME: dict[str, int] = {"tq3_1s": TQ3_1S, "tq4_1s": TQ4_1S}

SIGNS = np.array([1.0 if c == "+" else -1.0 for c in "+-+-++-+--+-++-+--+-+--+-++-+--+"], dtype=np.float32)
INV_SQRT32 = np.float32(0.17677669529663688)
EPS = np.float32(1e-10)  # a scale at or below this counts as zero (inverse 0)
MULTIPLIERS = np.array([0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.35, 1.5], dtype=np.float32)
MULT_ONE = 4  # index of 1.0: the scale kept when no candidate has a finite error
REFINE_ROUNDS = 6

BOOK_TQ3 = np.array(
    [-1.996684, -1.291398, -0.740341, -0.247508, 0.230106, 0.725222, 1.277503, 1.988943], dtype=np.float32
)
_TQ4_POS = [0.128395, 0.388048, 0.656759, 0.942340, 1.256231, 1.618046, 2.069017, 2.732590]
BOOK_TQ4 = np.array([-v for v in reversed(_TQ4_POS)] + _TQ4_POS, dtype=np.float32)

# Decision thresholds between neighbouring centroids: the midpoints, rounded to 6 decimals as the
# fork's quantizer has them (its choose_index compares against these literals). An index is the
# number of thresholds <= value, i.e. strict `<` and a value on a threshold takes the higher index.
MIDS_TQ3 = np.array([-1.644041, -1.015870, -0.493925, -0.008701, 0.477664, 1.001363, 1.633223], dtype=np.float32)
_TQ4_MID_POS = [0.258222, 0.522404, 0.799550, 1.099286, 1.437139, 1.843532, 2.400804]
MIDS_TQ4 = np.array([-v for v in reversed(_TQ4_MID_POS)] + [0.0] + _TQ4_MID_POS, dtype=np.float32)


@dataclass(frozen=True)
class TQSpec:
    type_id: int
    name: str
    bits: int
    block_bytes: int
    qs_bytes: int
    book: np.ndarray
    mids: np.ndarray

    @property
    def bpw(self) -> float:
        return 8.0 * self.block_bytes / QK


SPECS: dict[int, TQSpec] = {
    TQ3_1S: TQSpec(TQ3_1S, "TQ3_1S", 3, 16, 12, BOOK_TQ3, MIDS_TQ3),
    TQ4_1S: TQSpec(TQ4_1S, "TQ4_1S", 4, 20, 16, BOOK_TQ4, MIDS_TQ4),
}


def spec(type_id: int) -> TQSpec:
    try:
        return SPECS[int(type_id)]
    except KeyError:
        raise ValueError(f"not a TurboQuant weight type id: {type_id} (known: 45 TQ3_1S, 46 TQ4_1S)") from None


def row_bytes(type_id: int, n_per_row: int) -> int:
    if n_per_row % QK:
        raise ValueError(f"row length {n_per_row} is not a multiple of the block size {QK}")
    return n_per_row // QK * spec(type_id).block_bytes
