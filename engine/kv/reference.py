"""Plain, loop-level reference codecs: the test oracle for engine/kv/codecs.py (small inputs only).

Written separately from the fast path, element by element from DESIGN.md: its own copy of the
codebooks and sign tables, float32 scalar arithmetic (numpy.float32, IEEE single precision),
byte packing with the table's bit formulas, f16 via ``struct`` ('<e'). No vectorisation.

The operations and their order are the contract both implementations follow (so the packed
bytes match exactly): norms are sums of squares reduced by halving (s[j] += s[j + h] for
h = 64, 32, ..., 1), the butterfly runs h = 1, 2, ..., 64, the division by sqrt(128) is by the
float32 value of sqrt(128), and the centroid index is the first k with r < m_k (else the last).
"""

from __future__ import annotations

import math
import struct

import numpy as np

f32 = np.float32

BOOKS = {  # index order, the positive half as in DESIGN.md
    "turbo2": ["0.039994", "0.133462"],
    "turbo3": ["0.021460", "0.065717", "0.117832", "0.190685"],
    "turbo4": ["0.006938", "0.020989", "0.035597", "0.051262", "0.068756", "0.089527", "0.117195", "0.173926"],
    "turbo4lm": ["0.01128", "0.03407", "0.05765", "0.08264", "0.11002", "0.14148", "0.18041", "0.23715"],
}
S1_TEXT = (
    "-++--+-+--+++++++-+-+--+++-++---" "-++-++-+-++--+-++++-----+-++++-+"
    "--+---+---+---+++--+++--++-++-+-" "-++-+-+-++++-+-++-++-----++-++-+"
)
S2_TEXT = (
    "++++-++-+---+---++--+-+-+--+-+++" "++---+------+++-+-+++--+------++"
    "+-+----+-+-+--++-+-++-+----+--+-" "+-+++--+-+-++--+-+-++-+-+-----+-"
)
BLOCK = {"f16": 1, "q8_0": 32, "q4_0": 32, "turbo4": 128, "turbo3": 128, "turbo2": 128, "turbo4lm": 128}
TYPE_SIZE = {"f16": 2, "q8_0": 34, "q4_0": 18, "turbo4": 68, "turbo3": 50, "turbo2": 34, "turbo4lm": 68}


def book(name: str) -> list[np.float32]:
    half = [f32(float(s)) for s in BOOKS[name]]
    return [-v for v in reversed(half)] + half


def signs(text: str) -> list[np.float32]:
    return [f32(1.0) if ch == "+" else f32(-1.0) for ch in text]


def f16_bytes(v: np.float32) -> bytes:
    try:
        return struct.pack("<e", float(v))
    except OverflowError:
        raise ValueError(f"{float(v)} does not fit f16") from None


def f16_value(b: bytes) -> np.float32:
    return f32(struct.unpack("<e", bytes(b))[0])


# -- rotation ---------------------------------------------------------------------------------


def butterfly(v: list[np.float32]) -> list[np.float32]:
    v = list(v)
    h = 1
    while h < 128:
        for j in range(128):
            if j & h == 0:
                a, b = v[j], v[j + h]
                v[j], v[j + h] = a + b, a - b
        h *= 2
    return v


def rotate_group(u) -> list[np.float32]:
    s1, s2 = signs(S1_TEXT), signs(S2_TEXT)
    root = f32(math.sqrt(128.0))
    t = butterfly([s1[j] * f32(u[j]) for j in range(128)])
    return [(t[j] / root) * s2[j] for j in range(128)]


def unrotate_group(r) -> list[np.float32]:
    s1, s2 = signs(S1_TEXT), signs(S2_TEXT)
    root = f32(math.sqrt(128.0))
    t = butterfly([s2[j] * f32(r[j]) for j in range(128)])
    return [(t[j] / root) * s1[j] for j in range(128)]


def sumsq(v) -> np.float32:
    s = [f32(a) * f32(a) for a in v]
    h = len(s) // 2
    while h >= 1:
        for j in range(h):
            s[j] = s[j] + s[j + h]
        h //= 2
    return s[0]


def nearest(r: np.float32, c: list[np.float32]) -> int:
    for k in range(len(c) - 1):
        mid = (c[k] + c[k + 1]) / f32(2)
        if r < mid:
            return k
    return len(c) - 1


# -- per-block codecs -------------------------------------------------------------------------


def _roundf(v: float) -> int:
    a = math.floor(abs(v) + 0.5)  # exact in double for a float32 v
    return -a if v < 0 else a


def enc_q8_0(x) -> bytes:
    amax = f32(0)
    for v in x:
        amax = max(amax, abs(f32(v)))
    d = amax / f32(127)
    inv = f32(1) / d if d != 0 else f32(0)
    qs = [_roundf(float(f32(v) * inv)) for v in x]
    return f16_bytes(d) + bytes(q & 0xFF for q in qs)


def dec_q8_0(b: bytes) -> list[np.float32]:
    d = f16_value(b[0:2])
    return [f32(q - 256 if q > 127 else q) * d for q in b[2:34]]


def enc_q4_0(x) -> bytes:
    imax = 0  # the first value of largest magnitude (as gguf.quants: argmax)
    for j in range(1, len(x)):
        if abs(f32(x[j])) > abs(f32(x[imax])):
            imax = j
    mx = f32(x[imax])
    d = mx / f32(-8)
    inv = f32(1) / d if d != 0 else f32(0)
    q = [min(15, int(f32(v) * inv + f32(8.5))) for v in x]
    return f16_bytes(d) + bytes(q[j] | (q[j + 16] << 4) for j in range(16))


def dec_q4_0(b: bytes) -> list[np.float32]:
    d = f16_value(b[0:2])
    lo = [f32((b[2 + j] & 15) - 8) * d for j in range(16)]
    hi = [f32((b[2 + j] >> 4) - 8) * d for j in range(16)]
    return lo + hi


def enc_turbo(name: str, x) -> bytes:
    c = book(name)
    n = np.sqrt(sumsq(x))
    if n <= f32(1e-10):
        u = [f32(0)] * 128
    else:
        u = [f32(v) / n for v in x]
    r = rotate_group(u)
    idx = [nearest(rj, c) for rj in r]
    cn = np.sqrt(sumsq([c[i] for i in idx]))
    head = f16_bytes(n / cn)
    if name in ("turbo4", "turbo4lm"):
        qs = [0] * 64
        for j in range(128):
            qs[j // 2] |= idx[j] << (4 * (j % 2))
        return head + b"\x00\x00" + bytes(qs)
    qs = [0] * 32
    for j in range(128):
        qs[j // 4] |= (idx[j] & 3) << (2 * (j % 4))
    if name == "turbo2":
        return head + bytes(qs)
    sg = [0] * 16
    for j in range(128):
        sg[j // 8] |= ((idx[j] >> 2) & 1) << (j % 8)
    return head + bytes(qs) + bytes(sg)


def turbo_indices(name: str, b: bytes) -> list[int]:
    if name in ("turbo4", "turbo4lm"):
        qs = b[4:68]
        return [(qs[j // 2] >> (4 * (j % 2))) & 15 for j in range(128)]
    qs = b[2:34]
    if name == "turbo2":
        return [(qs[j // 4] >> (2 * (j % 4))) & 3 for j in range(128)]
    sg = b[34:50]
    return [((qs[j // 4] >> (2 * (j % 4))) & 3) | (((sg[j // 8] >> (j % 8)) & 1) << 2) for j in range(128)]


def dec_turbo(name: str, b: bytes) -> list[np.float32]:
    c = book(name)
    norm = f16_value(b[0:2])
    return [c[i] * norm for i in turbo_indices(name, b)]


def enc_f16(x) -> bytes:
    return f16_bytes(f32(x[0]))


def dec_f16(b: bytes) -> list[np.float32]:
    return [f16_value(b[0:2])]


# -- rows -------------------------------------------------------------------------------------


def quantize(name: str, x: np.ndarray) -> np.ndarray:
    """float32[..., D] -> uint8[..., D // block * type_size], block by block."""
    x = np.asarray(x, dtype=np.float32)
    blk = BLOCK[name]
    rows = x.reshape(-1, x.shape[-1])
    out = []
    for row in rows:
        for v in row:
            if not math.isfinite(float(v)):
                raise ValueError(f"{name}: non-finite input {float(v)}")
        data = b""
        for a in range(0, len(row), blk):
            g = list(row[a : a + blk])
            if name == "f16":
                data += enc_f16(g)
            elif name == "q8_0":
                data += enc_q8_0(g)
            elif name == "q4_0":
                data += enc_q4_0(g)
            else:
                data += enc_turbo(name, g)
        out.append(np.frombuffer(data, dtype=np.uint8))
    return np.array(out, dtype=np.uint8).reshape(x.shape[:-1] + (x.shape[-1] // blk * TYPE_SIZE[name],))


def dequantize(name: str, packed: np.ndarray) -> np.ndarray:
    """uint8[..., bytes] -> float32[..., D] (turbo types: the rotated domain)."""
    packed = np.asarray(packed, dtype=np.uint8)
    ts = TYPE_SIZE[name]
    rows = packed.reshape(-1, packed.shape[-1])
    out = []
    for row in rows:
        vals: list[np.float32] = []
        for a in range(0, len(row), ts):
            b = bytes(row[a : a + ts])
            if name == "f16":
                vals += dec_f16(b)
            elif name == "q8_0":
                vals += dec_q8_0(b)
            elif name == "q4_0":
                vals += dec_q4_0(b)
            else:
                vals += dec_turbo(name, b)
        out.append(vals)
    n = packed.shape[-1] // ts * BLOCK[name]
    return np.array(out, dtype=np.float32).reshape(packed.shape[:-1] + (n,))


def rotate(x: np.ndarray) -> np.ndarray:
    """Forward rotation along the last axis (multiple of 128), group by group."""
    x = np.asarray(x, dtype=np.float32)
    g = x.reshape(-1, 128)
    return np.array([rotate_group(row) for row in g], dtype=np.float32).reshape(x.shape)


def unrotate(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y, dtype=np.float32)
    g = y.reshape(-1, 128)
    return np.array([unrotate_group(row) for row in g], dtype=np.float32).reshape(y.shape)
