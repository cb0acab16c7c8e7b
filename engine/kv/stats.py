"""Codec quality on synthetic vectors: what ``turbospec quant-stats`` measures.

For each cache type, over n random vectors of dimension dim (zero-padded to the codec's block):

- ``mse``: mean ||x - x~||^2 over random unit vectors, x~ the full codec's reconstruction
  (norm-corrected, f16 norm, decoded and un-rotated). Comparable to the TurboQuant paper's
  D_mse (0.117 / 0.030 / 0.009 at 2 / 3 / 4 bits) and to the 4^-b floor.
- ``ip_mse`` / ``ip_bias``: mean of (<q, x~> - <q, x>)^2 and of (<q, x~> - <q, x>), q an
  independent random unit vector (the bias is ~0 by symmetry; it is the aligned bias below that
  shows the systematic shrink).
- ``ip_bias_aligned``: the same mean error for a query aligned with the key, q = unit(x + z),
  z ~ N(0, I/dim) (<q, x> ~ 0.7): a norm-preserving quantizer underscores the keys a query
  matches (<x, x~> = ||x||^2 cos θ), by about mse / 2 * <q, x>.
- ``*_outlier``: the same on unit vectors with a few outlier channels (the K of the default
  model has them): k = max(1, dim // 32) fixed channels scaled by ``outlier_scale`` (10)
  before normalising, so they carry most of the energy.
- ``*_outlier_eq`` (with an equalization strength): K channel equalization (engine/kv/equalize.py)
  with scales from the first ``eq_tokens`` outlier vectors; the codec sees x ⊙ s and the
  reconstruction is divided by s (equivalently Q ⊙ 1/s scores against it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from turbospec.engine.kv.codecs import CODECS, Codec, get_codec
from turbospec.engine.kv.equalize import compute_scales

PAPER_DMSE = {2: 0.117, 3: 0.030, 4: 0.009}  # TurboQuant paper, random unit vectors
INDEX_BITS = {"turbo2": 2, "turbo3": 3, "turbo4": 4, "turbo4lm": 4}


@dataclass
class QuantStatsConfig:
    types: tuple[str, ...] = CODECS
    dim: int = 128
    n: int = 20000
    seed: int = 0
    equalize: float | None = None  # strength; None = not measured
    eq_tokens: int = 64
    outlier_scale: float = 10.0
    outlier_channels: int | None = None  # default max(1, dim // 32)


def unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.where(n > 0, n, 1)).astype(np.float32)


def unit_vectors(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    return unit(rng.standard_normal((n, dim)))


def outlier_channels(dim: int, k: int | None, seed: int) -> np.ndarray:
    k = max(1, dim // 32) if k is None else k
    return np.sort(np.random.default_rng([seed, 7]).choice(dim, size=min(k, dim), replace=False))


def outlier_vectors(rng: np.random.Generator, n: int, dim: int, channels: np.ndarray, scale: float) -> np.ndarray:
    x = rng.standard_normal((n, dim))
    x[:, channels] *= scale
    return unit(x)


def roundtrip(codec: Codec, x: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """x (n, dim) -> the codec's reconstruction in the original domain (padding cropped)."""
    n, dim = x.shape
    pd = codec.padded_dim(dim)
    out = np.empty_like(x, dtype=np.float32)
    for a in range(0, n, chunk):
        xb = np.zeros((min(chunk, n - a), pd), np.float32)
        xb[:, :dim] = x[a : a + chunk]
        y = codec.decode(codec.encode(xb))
        if codec.rotated:
            y = codec.unrotate(y)
        out[a : a + chunk] = y[:, :dim]
    return out


def _errors(x: np.ndarray, xt: np.ndarray, q: np.ndarray) -> tuple[float, float, float]:
    mse = float(np.mean(np.sum((x.astype(np.float64) - xt) ** 2, axis=1)))
    err = np.sum(q * xt, axis=1, dtype=np.float64) - np.sum(q * x, axis=1, dtype=np.float64)
    return mse, float(np.mean(err**2)), float(np.mean(err))


def codec_stats(name: str, cfg: QuantStatsConfig) -> dict:
    """One type's row (every type sees the same vectors: the generator restarts from the seed)."""
    codec = get_codec(name)
    rng = np.random.default_rng(cfg.seed)
    d = cfg.dim
    x = unit_vectors(rng, cfg.n, d)
    q = unit_vectors(rng, cfg.n, d)
    qa = unit(x + rng.standard_normal(x.shape) / np.sqrt(d))
    ch = outlier_channels(d, cfg.outlier_channels, cfg.seed)
    xo = outlier_vectors(rng, cfg.n, d, ch, cfg.outlier_scale)

    xt = roundtrip(codec, x)
    mse, ip_mse, ip_bias = _errors(x, xt, q)
    bias_aligned = float(np.mean(np.sum(qa * xt, axis=1, dtype=np.float64) - np.sum(qa * x, axis=1, dtype=np.float64)))
    mse_o, ip_mse_o, ip_bias_o = _errors(xo, roundtrip(codec, xo), q)
    bits = INDEX_BITS.get(name)
    row = {
        "type": name,
        "bits_per_value": codec.bits_per_value,
        "bits_per_value_effective": codec.row_bytes(d) * 8 / d,  # with the zero padding
        "dim": d,
        "padded_dim": codec.padded_dim(d),
        "n": cfg.n,
        "mse": mse,
        "paper_dmse": PAPER_DMSE.get(bits) if bits else None,
        "floor": 4.0 ** -codec.bits_per_value,
        "ip_mse": ip_mse,
        "ip_bias": ip_bias,
        "ip_bias_aligned": bias_aligned,
        "mse_outlier": mse_o,
        "ip_mse_outlier": ip_mse_o,
        "ip_bias_outlier": ip_bias_o,
        "outlier_channels": [int(c) for c in ch],
        "outlier_scale": cfg.outlier_scale,
    }
    if cfg.equalize is not None:
        s = compute_scales(xo[: cfg.eq_tokens], cfg.equalize)
        xt_eq = roundtrip(codec, xo * s) / s
        m, im, ib = _errors(xo, xt_eq, q)
        row.update({"equalize": cfg.equalize, "mse_outlier_eq": m, "ip_mse_outlier_eq": im, "ip_bias_outlier_eq": ib})
    return row


def run_quant_stats(cfg: QuantStatsConfig) -> list[dict]:
    return [codec_stats(t, cfg) for t in cfg.types]


def _best_time(f, reps: int, rounds: int = 3) -> float:
    import time

    f()
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(reps):
            f()
        best = min(best, (time.perf_counter() - t0) / reps)
    return best


def codec_speed(name: str, dim: int, ctx: int = 8192, batch: int = 512, n_query: int = 4) -> dict:
    """Wall-clock codec costs at the engine's sizes (best of 3; not for unit tests).

    encode of 1 row (a decode step, per layer and K or V), of ``batch`` rows (a prefill chunk),
    decode of ``ctx`` rows (a whole cache), and scores of ``n_query`` queries against them.
    """
    codec = get_codec(name)
    pd = codec.padded_dim(dim)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((ctx, pd)).astype(np.float32)
    q = rng.standard_normal((n_query, pd)).astype(np.float32)
    packed = codec.encode(x)
    out = np.empty((ctx, pd), np.float32)
    one, chunk = x[:1], x[:batch]
    enc1 = _best_time(lambda: codec.encode(one), 200)
    encb = _best_time(lambda: codec.encode(chunk), 5)
    dec = _best_time(lambda: codec.decode_into(packed, out), 5)
    sc = _best_time(lambda: codec.scores(q, packed), 5)
    return {
        "type": name,
        "encode_row_us": enc1 * 1e6,
        f"encode_{batch}_ms": encb * 1e3,
        "encode_mvals": batch * pd / encb / 1e6,
        f"decode_{ctx}_ms": dec * 1e3,
        "decode_mvals": ctx * pd / dec / 1e6,
        f"scores_{n_query}x{ctx}_ms": sc * 1e3,
    }
