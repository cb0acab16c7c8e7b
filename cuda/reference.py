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
    "tq3_1s": (32, 16), "tq4_1s": (32, 20),
}
TQ_BOOKS = {
    "tq3_1s": np.array([-1.996684, -1.291398, -0.740341, -0.247508, 0.230106, 0.725222, 1.277503, 1.988943],
                       np.float32),
    "tq4_1s": np.array([-2.732590, -2.069017, -1.618046, -1.256231, -0.942340, -0.656759, -0.388048, -0.128395,
                        0.128395, 0.388048, 0.656759, 0.942340, 1.256231, 1.618046, 2.069017, 2.732590], np.float32),
}
TQ_SIGNS = np.array([-1.0 if c == "-" else 1.0 for c in "+-+-++-+--+-++-+--+-+--+-++-+--+"], np.float32)


def wht(v: np.ndarray) -> np.ndarray:
    """Unnormalised Walsh-Hadamard butterfly over the last axis (a power of two), float64."""
    v = np.array(v, np.float64)
    n = v.shape[-1]
    h = 1
    while h < n:
        w = v.reshape(-1, n // (2 * h), 2, h)
        a, b = w[:, :, 0, :].copy(), w[:, :, 1, :].copy()
        w[:, :, 0, :], w[:, :, 1, :] = a + b, a - b
        v = w.reshape(v.shape)
        h *= 2
    return v


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
    if wtype in TQ_BOOKS:  # c[idx] * d, then the inverse rotation: butterfly, / sqrt(32), signs
        d = raw[:, :4].copy().view(np.float16).astype(np.float32)  # (n, 2): d0, d1
        qs = raw[:, 4:].astype(np.uint32)
        if wtype == "tq4_1s":
            idx = np.stack([qs & 15, qs >> 4], axis=2).reshape(-1, 32)
        else:
            g = qs.reshape(-1, 4, 3)
            word = g[..., 0] | (g[..., 1] << 8) | (g[..., 2] << 16)
            idx = ((word[..., None] >> np.arange(0, 24, 3, dtype=np.uint32)) & 7).reshape(-1, 32)
        q = TQ_BOOKS[wtype][idx] * np.repeat(d, 16, axis=1)
        return (wht(q) / np.sqrt(32.0) * TQ_SIGNS).astype(np.float32).reshape(rows, k)
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


def matvec_rows(w: np.ndarray, wtype: str, ids: np.ndarray, x: np.ndarray, rows: int) -> np.ndarray:
    k = x.shape[-1]
    wd = dequant_rows(w, wtype, rows, k).astype(np.float64)
    return (wd[np.asarray(ids)] @ x.astype(np.float64)).astype(np.float32)


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
    elif wtype in TQ_BOOKS:
        raw[:, 0:2], raw[:, 2:4] = scale(nb), scale(nb)
    elif wtype == "q4_k":
        raw[:, 0:2], raw[:, 2:4] = scale(nb), scale(nb)
    elif wtype == "q6_k":
        raw[:, 208:210] = scale(nb)
    return raw.reshape(-1)


# ------------------------------------------------------------------ KV cache codecs (DESIGN.md)
KV_TYPES: dict[str, tuple[int, int]] = {  # (values per block, bytes per block)
    "f16": (1, 2), "q8_0": (32, 34), "q4_0": (32, 18), "turbo4": (128, 68), "turbo3": (128, 50), "turbo2": (128, 34),
    "turbo4lm": (128, 68),
}
KV_TYPE_ID = {"f16": 0, "q8_0": 1, "q4_0": 2, "turbo4": 3, "turbo3": 4, "turbo2": 5, "turbo4lm": 6}
TURBO_BOOKS = {
    "turbo2": np.array([-0.133462, -0.039994, 0.039994, 0.133462], np.float32),
    "turbo3": np.array([-0.190685, -0.117832, -0.065717, -0.021460, 0.021460, 0.065717, 0.117832, 0.190685],
                       np.float32),
    "turbo4": np.array([-0.173926, -0.117195, -0.089527, -0.068756, -0.051262, -0.035597, -0.020989, -0.006938,
                        0.006938, 0.020989, 0.035597, 0.051262, 0.068756, 0.089527, 0.117195, 0.173926],
                       np.float32),
    "turbo4lm": np.array([-0.23715, -0.18041, -0.14148, -0.11002, -0.08264, -0.05765, -0.03407, -0.01128,
                          0.01128, 0.03407, 0.05765, 0.08264, 0.11002, 0.14148, 0.18041, 0.23715], np.float32),
}
_S1 = ("-++--+-+--+++++++-+-+--+++-++---" "-++-++-+-++--+-++++-----+-++++-+"
       "--+---+---+---+++--+++--++-++-+-" "-++-+-+-++++-+-++-++-----++-++-+")
_S2 = ("++++-++-+---+---++--+-+-+--+-+++" "++---+------+++-+-+++--+------++"
       "+-+----+-+-+--++-+-++-+----+--+-" "+-+++--+-+-++--+-+-++-+-+-----+-")
S1 = np.array([-1.0 if c == "-" else 1.0 for c in _S1], np.float32)
S2 = np.array([-1.0 if c == "-" else 1.0 for c in _S2], np.float32)
SQRT128 = np.float32(np.sqrt(128.0))


def kv_row_bytes(kvtype: str, d: int) -> int:
    qk, bs = KV_TYPES[kvtype]
    return d // qk * bs


def wht128(v: np.ndarray) -> np.ndarray:
    """Unnormalised Sylvester butterfly over the last axis (128), float32, stage by stage."""
    v = np.array(v, np.float32)
    shape = v.shape
    h = 1
    while h < 128:
        w = v.reshape(-1, 128 // (2 * h), 2, h)
        a, b = w[:, :, 0, :].copy(), w[:, :, 1, :].copy()
        w[:, :, 0, :], w[:, :, 1, :] = a + b, a - b
        v = w.reshape(shape)
        h *= 2
    return v


def rotate(x: np.ndarray) -> np.ndarray:
    """r = s2 * H(s1 * x) / sqrt(128) on each 128-group of the last axis."""
    g = np.asarray(x, np.float32).reshape(-1, 128)
    return (wht128(g * S1) / SQRT128 * S2).reshape(np.shape(x))


def unrotate(r: np.ndarray) -> np.ndarray:
    """Inverse: s2 first, butterfly, / sqrt(128), s1."""
    g = np.asarray(r, np.float32).reshape(-1, 128)
    return (wht128(g * S2) / SQRT128 * S1).reshape(np.shape(r))


def sumsq_halving(g: np.ndarray) -> np.ndarray:
    """Sum of squares of each 128-row by halving (s[j] += s[j + h], h = 64..1), float32 — the
    order kv_append and engine/kv/codecs.py use, so all three agree to the bit."""
    s = np.asarray(g, np.float32) ** 2
    h = 64
    while h >= 1:
        s = s[:, :h] + s[:, h:2 * h]
        h //= 2
    return s[:, 0]


def turbo_encode_group(x: np.ndarray, kvtype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per 128-group of x [n, 128]: (idx [n, 128], norm f16 [n], r = rotated unit vector [n, 128])."""
    book = TURBO_BOOKS[kvtype]
    x = np.asarray(x, np.float32)
    n = np.sqrt(sumsq_halving(x))
    safe = np.where(n > 1e-10, n, np.float32(1))
    u = np.where((n > 1e-10)[:, None], x / safe[:, None], np.float32(0)).astype(np.float32)
    r = wht128(u * S1) / SQRT128 * S2
    mids = ((book[:-1] + book[1:]) * np.float32(0.5)).astype(np.float32)
    idx = np.searchsorted(mids, r, side="right")  # value on a midpoint -> higher index
    cn = np.sqrt(sumsq_halving(book[idx]))
    return idx, (n / cn).astype(np.float16), r


def kv_encode(x: np.ndarray, kvtype: str) -> np.ndarray:
    """Rows x [n, D] f32 -> cache bytes [n, row_bytes] (uint8)."""
    x = np.asarray(x, np.float32)
    n, d = x.shape
    if kvtype == "f16":
        return x.astype(np.float16).view(np.uint8).reshape(n, 2 * d)
    if kvtype == "q8_0":
        b = x.reshape(-1, 32)
        amax = np.abs(b).max(axis=1, keepdims=True)
        dd = amax / np.float32(127)
        with np.errstate(divide="ignore"):
            idd = np.where(dd == 0, np.float32(0), np.float32(1) / dd).astype(np.float32)
        v = b * idd
        q = (np.sign(v) * np.floor(np.abs(v) + np.float32(0.5))).astype(np.int8)  # roundf
        out = np.concatenate([dd.astype(np.float16).view(np.uint8), q.view(np.uint8)], axis=1)
        return out.reshape(n, -1)
    if kvtype == "q4_0":
        b = x.reshape(-1, 32)
        mx = np.take_along_axis(b, np.abs(b).argmax(axis=1)[:, None], axis=1)
        dd = mx / np.float32(-8)
        with np.errstate(divide="ignore"):
            idd = np.where(dd == 0, np.float32(0), np.float32(1) / dd).astype(np.float32)
        q = np.minimum(15, np.trunc(b * idd + np.float32(8.5)).astype(np.int32)).astype(np.uint8)
        qs = q[:, :16] | (q[:, 16:] << 4)
        return np.concatenate([dd.astype(np.float16).view(np.uint8), qs], axis=1).reshape(n, -1)
    idx, norm, _ = turbo_encode_group(x.reshape(-1, 128), kvtype)
    g = idx.shape[0]
    nb = norm.view(np.uint8).reshape(g, 2)
    if kvtype in ("turbo4", "turbo4lm"):
        qs = (idx[:, 0::2] | (idx[:, 1::2] << 4)).astype(np.uint8)
        out = np.concatenate([nb, np.zeros((g, 2), np.uint8), qs], axis=1)
    elif kvtype == "turbo3":
        lo = (idx & 3).reshape(g, 32, 4)
        qs = (lo[..., 0] | lo[..., 1] << 2 | lo[..., 2] << 4 | lo[..., 3] << 6).astype(np.uint8)
        hi = ((idx >> 2) & 1).reshape(g, 16, 8)
        signs = (hi << np.arange(8)).sum(axis=2).astype(np.uint8)
        out = np.concatenate([nb, qs, signs], axis=1)
    else:
        lo = idx.reshape(g, 32, 4)
        qs = (lo[..., 0] | lo[..., 1] << 2 | lo[..., 2] << 4 | lo[..., 3] << 6).astype(np.uint8)
        out = np.concatenate([nb, qs], axis=1)
    return out.reshape(n, -1)


def turbo_indices(rows: np.ndarray, kvtype: str, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Unpack (idx [n, d], norm f32 [n, d // 128]) from turbo cache rows [n, row_bytes]."""
    qk, bs = KV_TYPES[kvtype]
    b = np.ascontiguousarray(rows).reshape(-1, bs)
    norm = b[:, :2].copy().view(np.float16).astype(np.float32)[:, 0]
    if kvtype in ("turbo4", "turbo4lm"):
        qs = b[:, 4:68]
        idx = np.stack([qs & 15, qs >> 4], axis=2).reshape(-1, 128)
    elif kvtype == "turbo3":
        qs, sg = b[:, 2:34], b[:, 34:50]
        lo = np.stack([(qs >> (2 * k)) & 3 for k in range(4)], axis=2).reshape(-1, 128)
        hi = np.stack([(sg >> k) & 1 for k in range(8)], axis=2).reshape(-1, 128)
        idx = lo | (hi << 2)
    else:
        qs = b[:, 2:34]
        idx = np.stack([(qs >> (2 * k)) & 3 for k in range(4)], axis=2).reshape(-1, 128)
    n = rows.shape[0]
    return idx.astype(np.int64).reshape(n, d), norm.reshape(n, d // 128)


def kv_decode(rows: np.ndarray, kvtype: str, d: int) -> np.ndarray:
    """Cache rows [n, row_bytes] -> values [n, d] f32 (turbo: in the rotated domain)."""
    rows = np.ascontiguousarray(rows, dtype=np.uint8)
    n = rows.shape[0]
    if kvtype == "f16":
        return rows.view(np.float16).astype(np.float32).reshape(n, d)
    if kvtype == "q8_0":
        b = rows.reshape(-1, 34)
        return (_h(b[:, :2]) * b[:, 2:].view(np.int8).astype(np.float32)).reshape(n, d)
    if kvtype == "q4_0":
        b = rows.reshape(-1, 18)
        qs = b[:, 2:]
        q = np.concatenate([qs & 15, qs >> 4], axis=1).astype(np.float32) - 8
        return (_h(b[:, :2]) * q).reshape(n, d)
    idx, norm = turbo_indices(rows, kvtype, d)
    vals = TURBO_BOOKS[kvtype][idx].reshape(n, d // 128, 128) * norm[:, :, None]
    return vals.reshape(n, d).astype(np.float32)


def attn_decode(q: np.ndarray, kc: np.ndarray, vc: np.ndarray, ktype: str, vtype: str, n_kv_heads: int,
                kv_start: int, kv_end: int, scale: float) -> np.ndarray:
    """Decode attention for one query over cache cells [kv_start, kv_end).

    q [n_q_heads, D]; kc / vc: [n_ctx, n_kv_heads, row_bytes] uint8. Returns [n_q_heads, D] in the
    original domain (turbo K: Q rotated; turbo V: output rotated back)."""
    nq, d = q.shape
    g = nq // n_kv_heads
    out = np.zeros((nq, d), np.float64)
    for hk in range(n_kv_heads):
        k = kv_decode(kc[kv_start:kv_end, hk], ktype, d).astype(np.float64)
        v = kv_decode(vc[kv_start:kv_end, hk], vtype, d).astype(np.float64)
        for j in range(g):
            qh = q[hk * g + j].astype(np.float32)
            qh = rotate(qh) if ktype.startswith("turbo") else qh
            s = k @ qh.astype(np.float64) * scale
            if s.size == 0:
                continue
            p = np.exp(s - s.max())
            o = p @ v / p.sum()
            out[hk * g + j] = unrotate(o.astype(np.float32)) if vtype.startswith("turbo") else o
    return out.astype(np.float32)


# ------------------------------------------------------------------ sampling and the routed head
def argmax(x: np.ndarray) -> int:
    """First index of the maximum, NaN ignored (NumPy's nanargmax on a row with a number)."""
    return int(np.nanargmax(np.asarray(x, np.float32).reshape(-1)))


def softmax(x: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(x, np.float64) / temperature
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def topk(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, np.float32).reshape(-1)
    idx = np.argsort(-x, kind="stable")[:k]
    return idx.astype(np.int32), x[idx]


def routed_head(h: np.ndarray, centroids: np.ndarray, ctype: str, n_centroids: int, token_ordering: np.ndarray,
                emb: np.ndarray, etype: str, top_k: int) -> tuple[int, np.ndarray]:
    """(greedy token id, full logits row with -1e30 outside the scored clusters)."""
    n_vocab = token_ordering.size
    per = n_vocab // n_centroids
    k = h.shape[-1]
    clog = matmul(centroids, ctype, h, n_centroids)
    clusters, _ = topk(clog, top_k)
    ids = np.asarray(token_ordering).reshape(n_centroids, per)[clusters].reshape(-1)
    vals = matvec_rows(emb, etype, ids, h, n_vocab)
    row = np.full(n_vocab, -1e30, np.float32)
    row[ids] = vals
    del k
    return int(ids[int(np.argmax(vals))]), row


def attn_prefill(q: np.ndarray, kc: np.ndarray, vc: np.ndarray, ktype: str, vtype: str, n_kv_heads: int,
                 kv_start: int, kv_end: int, scale: float, window: int = 0) -> np.ndarray:
    """Causal attention of T queries q [T, n_q_heads, D]: query t over cells
    [max(kv_start, kv_end + t - window) if window else kv_start, kv_end + t)."""
    out = np.empty(q.shape, np.float32)
    for t in range(q.shape[0]):
        end = kv_end + t
        start = max(kv_start, end - window) if window > 0 else kv_start
        out[t] = attn_decode(q[t], kc, vc, ktype, vtype, n_kv_heads, start, end, scale)
    return out
