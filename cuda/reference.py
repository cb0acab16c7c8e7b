"""Plain NumPy references for every kernel in cuda/ (the oracle of tests/cuda and tests/gpu).

Written for clarity, in float64 where that is the honest answer, float32 where the kernel's
result is defined bit-for-bit by a float32 recipe (the cache codecs).
"""

from __future__ import annotations

import numpy as np


def rmsnorm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    x64 = x.astype(np.float64)
    r = x64 / np.sqrt((x64 * x64).mean(axis=-1, keepdims=True) + eps)
    return (r * w.astype(np.float64)).astype(np.float32)


def add_rmsnorm(x: np.ndarray, y: np.ndarray, w_post: np.ndarray, w_next: np.ndarray | None,
                eps: float) -> tuple[np.ndarray, np.ndarray | None]:
    xn = (x.astype(np.float64) + rmsnorm(y, w_post, eps)).astype(np.float32)
    return xn, (None if w_next is None else rmsnorm(xn, w_next, eps))


def rope_neox(x: np.ndarray, positions: np.ndarray, base: float, n_rot: int | None = None) -> np.ndarray:
    n_tok, n_heads, d = x.shape
    n_rot = d if n_rot is None else n_rot
    half = n_rot // 2
    inv = base ** (-2.0 * np.arange(half) / n_rot)
    ang = positions.astype(np.float64)[:, None] * inv[None, :]
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    out = x.astype(np.float64).copy()
    a, b = out[..., :half].copy(), out[..., half:n_rot].copy()
    out[..., :half] = a * c - b * s
    out[..., half:n_rot] = a * s + b * c
    return out.astype(np.float32)


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def geglu(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    return (gelu_tanh(gate) * up.astype(np.float64)).astype(np.float32)


# ------------------------------------------------------------------ GGML weight blocks
# (values per block, bytes per block); dequantizers below are checked against gguf.quants in tests.
WEIGHT_TYPES: dict[str, tuple[int, int]] = {
    "f32": (1, 4), "f16": (1, 2), "q8_0": (32, 34), "q5_0": (32, 22), "q4_k": (256, 144), "q6_k": (256, 210),
}


def _h(b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b).view(np.float16).astype(np.float32)


def dequant_rows(w: np.ndarray, wtype: str, rows: int, k: int) -> np.ndarray:
    """Dequantize a row-major [rows, k] weight stored as raw GGML bytes (uint8) to float32."""
    qk, bs = WEIGHT_TYPES[wtype]
    raw = np.ascontiguousarray(w).view(np.uint8).reshape(rows * (k // qk), bs)
    if wtype == "f32":
        return raw.view(np.float32).reshape(rows, k).copy()
    if wtype == "f16":
        return raw.view(np.float16).astype(np.float32).reshape(rows, k)
    if wtype == "q8_0":
        d = _h(raw[:, :2])
        return (d * raw[:, 2:].view(np.int8).astype(np.float32)).reshape(rows, k)
    if wtype == "q5_0":
        d = _h(raw[:, :2])
        qh = raw[:, 2:6].copy().view(np.uint32)  # (n, 1), little-endian
        qs = raw[:, 6:]
        lo = np.concatenate([qs & 15, qs >> 4], axis=1).astype(np.int32)
        hi = ((qh >> np.arange(32, dtype=np.uint32)) & 1).astype(np.int32)
        return (d * (lo | (hi << 4)) - d * 16).reshape(rows, k).astype(np.float32)
    if wtype == "q4_k":
        d, dmin = _h(raw[:, 0:2]), _h(raw[:, 2:4])
        sc = raw[:, 4:16].astype(np.int32)
        s = np.empty((raw.shape[0], 8), np.int32)
        m = np.empty((raw.shape[0], 8), np.int32)
        s[:, :4], m[:, :4] = sc[:, 0:4] & 63, sc[:, 4:8] & 63
        s[:, 4:] = (sc[:, 8:12] & 15) | ((sc[:, 0:4] >> 6) << 4)
        m[:, 4:] = (sc[:, 8:12] >> 4) | ((sc[:, 4:8] >> 6) << 4)
        qs = raw[:, 16:].reshape(-1, 4, 32).astype(np.int32)
        q = np.stack([qs & 15, qs >> 4], axis=2).reshape(-1, 8, 32)  # sub-block 2g, 2g+1
        y = (d * s)[:, :, None] * q - (dmin * m)[:, :, None]
        return y.reshape(rows, k).astype(np.float32)
    if wtype == "q6_k":
        ql = raw[:, :128].astype(np.int32)
        qh = raw[:, 128:192].astype(np.int32)
        sc = raw[:, 192:208].view(np.int8).astype(np.float32)
        d = _h(raw[:, 208:210])
        out = np.empty((raw.shape[0], 256), np.float32)
        for n in range(2):
            l_, h_ = ql[:, 64 * n:64 * n + 64], qh[:, 32 * n:32 * n + 32]
            quads = [
                (l_[:, :32] & 15) | ((h_ & 3) << 4),
                (l_[:, 32:] & 15) | (((h_ >> 2) & 3) << 4),
                (l_[:, :32] >> 4) | (((h_ >> 4) & 3) << 4),
                (l_[:, 32:] >> 4) | (((h_ >> 6) & 3) << 4),
            ]
            for qd, q in enumerate(quads):
                scl = np.repeat(sc[:, 8 * n + 2 * qd:8 * n + 2 * qd + 2], 16, axis=1)
                out[:, 128 * n + 32 * qd:128 * n + 32 * qd + 32] = d * scl * (q - 32)
        return out.reshape(rows, k)
    raise ValueError(f"unknown weight type {wtype!r}")


def matmul(w: np.ndarray, wtype: str, x: np.ndarray, rows: int) -> np.ndarray:
    """Y[t, r] = sum_k W[r, k] X[t, k] with W dequantized; x is [T, K] (or [K])."""
    k = x.shape[-1]
    wd = dequant_rows(w, wtype, rows, k).astype(np.float64)
    return (x.astype(np.float64) @ wd.T).astype(np.float32)


def random_weight(rng: np.random.Generator, wtype: str, rows: int, k: int) -> np.ndarray:
    """Random raw GGML bytes for [rows, k] with finite f16 scales (any bit pattern of the quants)."""
    qk, bs = WEIGHT_TYPES[wtype]
    nb = rows * (k // qk)
    if wtype == "f32":
        return rng.standard_normal((rows, k)).astype(np.float32).view(np.uint8).reshape(-1)
    if wtype == "f16":
        return rng.standard_normal((rows, k)).astype(np.float16).view(np.uint8).reshape(-1)
    raw = rng.integers(0, 256, size=(nb, bs), dtype=np.uint8)
    scale = lambda n: (rng.uniform(0.5, 2.0, n) * 0.01).astype(np.float16).view(np.uint8).reshape(n, 2)
    if wtype in ("q8_0", "q5_0"):
        raw[:, 0:2] = scale(nb)
    elif wtype == "q4_k":
        raw[:, 0:2], raw[:, 2:4] = scale(nb), scale(nb)
    elif wtype == "q6_k":
        raw[:, 208:210] = scale(nb)
    return raw.reshape(-1)
