"""Plain reference for TQ3_1S / TQ4_1S: one block at a time, scalar float32 arithmetic.

Every operation rounds to float32 in the order the fork's C code does (sums accumulate from 0.0
element by element, products before sums, ``x * (1/d)`` rather than ``x / d``), so the fast code in
``tq.py`` can be held to identical bytes. Slow (milliseconds per block): for tests and checks only.
"""

from __future__ import annotations

import numpy as np

from .tq_format import EPS, HALF, INV_SQRT32, MULT_ONE, MULTIPLIERS, QK, REFINE_ROUNDS, SIGNS, spec

F32 = np.float32
_ZERO = F32(0.0)
_ONE = F32(1.0)
_BIG = F32(1e30)


def _butterfly(buf: list[np.float32]) -> None:
    h = 1
    while h < QK:
        for i in range(0, QK, 2 * h):
            for j in range(i, i + h):
                a, b = buf[j], buf[j + h]
                buf[j] = a + b
                buf[j + h] = a - b
        h *= 2


def rotate_block(x: np.ndarray) -> np.ndarray:
    """Forward rotation of one 32-block: signs ⊙ x, butterfly, × 1/sqrt(32)."""
    buf = [F32(v) * SIGNS[i] for i, v in enumerate(np.asarray(x, dtype=np.float32))]
    _butterfly(buf)
    return np.array([v * INV_SQRT32 for v in buf], dtype=np.float32)


def unrotate_block(y: np.ndarray) -> np.ndarray:
    """Inverse rotation of one 32-block: butterfly, × 1/sqrt(32), × signs."""
    buf = [F32(v) for v in np.asarray(y, dtype=np.float32)]
    _butterfly(buf)
    return np.array([v * (INV_SQRT32 * SIGNS[i]) for i, v in enumerate(buf)], dtype=np.float32)


def choose_index(v: np.float32, mids: np.ndarray) -> int:
    """Nearest centroid by thresholds: the first i with v < mids[i], else the last index."""
    for i, m in enumerate(mids):
        if v < m:
            return i
    return len(mids)


def _inv(d: np.float32) -> np.float32:
    return _ONE / d if d > EPS else _ZERO


def quantize_block(x: np.ndarray, type_id: int) -> tuple[np.float16, np.float16, list[int]]:
    """Quantize 32 floats: returns (d0, d1) as f16 and the 32 indices."""
    sp = spec(type_id)
    book, mids = sp.book, sp.mids
    buf = rotate_block(x)

    s0 = _ZERO
    s1 = _ZERO
    for j in range(HALF):
        s0 = s0 + buf[j] * buf[j]
    for j in range(HALF, QK):
        s1 = s1 + buf[j] * buf[j]
    rms0 = np.sqrt(s0 / F32(16.0))
    rms1 = np.sqrt(s1 / F32(16.0))

    # 9-point grid: one multiplier for both halves; the first lowest squared error wins.
    best_d0, best_d1 = rms0 * MULTIPLIERS[MULT_ONE], rms1 * MULTIPLIERS[MULT_ONE]
    best_err = _BIG
    for m in MULTIPLIERS:
        d0, d1 = rms0 * m, rms1 * m
        inv0, inv1 = _inv(d0), _inv(d1)
        err = _ZERO
        for j in range(QK):
            d, inv = (d0, inv0) if j < HALF else (d1, inv1)
            diff = buf[j] - book[choose_index(buf[j] * inv, mids)] * d
            err = err + diff * diff
        if err < best_err:
            best_err, best_d0, best_d1 = err, d0, d1

    # least-squares refinement, each half on its own: assign, then d = Σ x·c / Σ c².
    for _ in range(REFINE_ROUNDS):
        inv0, inv1 = _inv(best_d0), _inv(best_d1)
        num0 = den0 = num1 = den1 = _ZERO
        for j in range(HALF):
            c = book[choose_index(buf[j] * inv0, mids)]
            num0 = num0 + buf[j] * c
            den0 = den0 + c * c
        for j in range(HALF, QK):
            c = book[choose_index(buf[j] * inv1, mids)]
            num1 = num1 + buf[j] * c
            den1 = den1 + c * c
        if den0 > EPS:
            best_d0 = num0 / den0
        if den1 > EPS:
            best_d1 = num1 / den1

    inv0, inv1 = _inv(best_d0), _inv(best_d1)
    idx = [choose_index(buf[j] * (inv0 if j < HALF else inv1), mids) for j in range(QK)]
    return np.float16(best_d0), np.float16(best_d1), idx


def pack_indices(idx: list[int], type_id: int) -> bytes:
    """TQ4: nibbles, element j in qs[j/2] at bit 4*(j%2). TQ3: 4 groups of 8 indices, 3 bytes each,
    index i of a group at bits 3i..3i+2 of the little-endian 24-bit word."""
    if spec(type_id).bits == 4:
        return bytes(idx[j] | (idx[j + 1] << 4) for j in range(0, QK, 2))
    out = bytearray()
    for g in range(4):
        word = 0
        for i in range(8):
            word |= idx[8 * g + i] << (3 * i)
        out += bytes((word & 0xFF, (word >> 8) & 0xFF, (word >> 16) & 0xFF))
    return bytes(out)


def unpack_indices(qs: bytes, type_id: int) -> list[int]:
    if spec(type_id).bits == 4:
        return [(qs[j // 2] >> (4 * (j % 2))) & 15 for j in range(QK)]
    idx = []
    for g in range(4):
        word = qs[3 * g] | (qs[3 * g + 1] << 8) | (qs[3 * g + 2] << 16)
        idx += [(word >> (3 * i)) & 7 for i in range(8)]
    return idx


def encode_block(x: np.ndarray, type_id: int) -> bytes:
    d0, d1, idx = quantize_block(x, type_id)
    return d0.tobytes() + d1.tobytes() + pack_indices(idx, type_id)


def decode_block(block: bytes, type_id: int) -> np.ndarray:
    sp = spec(type_id)
    if len(block) != sp.block_bytes:
        raise ValueError(f"{sp.name} block is {sp.block_bytes} bytes, got {len(block)}")
    d0, d1 = np.frombuffer(block[:4], dtype="<f2").astype(np.float32)
    idx = unpack_indices(block[4:], type_id)
    y = [sp.book[idx[j]] * (d0 if j < HALF else d1) for j in range(QK)]
    return unrotate_block(np.array(y, dtype=np.float32))


def quantize_ref(x: np.ndarray, type_id: int) -> np.ndarray:
    """float32 [rows, n] (n a multiple of 32) -> uint8 [rows, n/32 * block_bytes]."""
    x = np.asarray(x, dtype=np.float32)
    rows = x.reshape(-1, x.shape[-1])
    out = [b"".join(encode_block(r[k : k + QK], type_id) for k in range(0, r.size, QK)) for r in rows]
    return np.frombuffer(b"".join(out), dtype=np.uint8).reshape(rows.shape[0], -1)


def dequantize_ref(raw: np.ndarray, type_id: int, shape: tuple[int, ...]) -> np.ndarray:
    bb = spec(type_id).block_bytes
    data = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1).tobytes()
    vals = [decode_block(data[k : k + bb], type_id) for k in range(0, len(data), bb)]
    return np.concatenate(vals).reshape(shape)
