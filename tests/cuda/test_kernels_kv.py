"""KV append (every cache type) and split decode attention through the harness.

Oracles: cuda/reference.py, engine/kv/codecs.py (the engine's NumPy codecs, byte for byte) and
gguf.quants for q8_0/q4_0. Fresh random inputs every run; caches and outputs poisoned.
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from turbospec.cuda import loader
from turbospec.cuda import reference as R

rng = np.random.default_rng()
TYPES = list(R.KV_TYPES)
D = 256


def append(x: np.ndarray, kvtype: str, n_ctx: int, pos0: int, eq=None) -> np.ndarray:
    cache = np.full((n_ctx, x.shape[1], R.kv_row_bytes(kvtype, x.shape[2])), 0xFF, np.uint8)
    loader.kv_append(x, cache, kvtype, pos0, eq=eq)
    return cache


@pytest.mark.parametrize("kvtype", TYPES)
def test_kv_append_bytes(kvtype):
    n_tok, heads = 3, 2
    x = (rng.standard_normal((n_tok, heads, D)) * rng.uniform(0.1, 10)).astype(np.float32)
    x[0, 0, :128] = 0.0  # an all-zero group (turbo: u = 0 branch; q8_0/q4_0: d = 0)
    cache = append(x, kvtype, 6, 2)
    assert (cache[:2] == 0xFF).all() and (cache[5:] == 0xFF).all(), "rows outside the append were written"
    exp = R.kv_encode(x.reshape(-1, D), kvtype).reshape(n_tok, heads, -1)
    np.testing.assert_array_equal(cache[2:5], exp)


@pytest.mark.parametrize("kvtype", TYPES)
def test_kv_append_matches_engine_codec(kvtype):
    codecs = pytest.importorskip("turbospec.engine.kv.codecs")
    x = rng.standard_normal((4, 1, D)).astype(np.float32) * 3
    cache = append(x, kvtype, 4, 0)
    codec = codecs.get_codec(kvtype)
    np.testing.assert_array_equal(cache, codec.encode(x))
    np.testing.assert_array_equal(R.kv_decode(cache.reshape(4, -1), kvtype, D), codec.decode(cache).reshape(4, D))


@pytest.mark.parametrize("kvtype,gt", [("q8_0", gguf.GGMLQuantizationType.Q8_0),
                                       ("q4_0", gguf.GGMLQuantizationType.Q4_0)])
def test_kv_append_matches_gguf(kvtype, gt):
    x = rng.standard_normal((5, 1, D)).astype(np.float32)
    cache = append(x, kvtype, 5, 0)
    np.testing.assert_array_equal(cache.reshape(5, -1), gguf.quants.quantize(x.reshape(5, D), gt))


def test_kv_append_equalization_scales():
    x = rng.standard_normal((2, 1, D)).astype(np.float32)
    eq = rng.uniform(0.5, 2.0, D).astype(np.float32)
    cache = append(x, "turbo3", 2, 0, eq=eq)
    np.testing.assert_array_equal(cache.reshape(2, -1), R.kv_encode((x * eq).reshape(2, D), "turbo3"))


def test_turbo_reference_error_near_theory():
    """Sanity of the reference codec itself: mean ||x - x~||^2 on random unit vectors (DESIGN.md)."""
    x = rng.standard_normal((400, 128)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    for kvtype, lo, hi in [("turbo2", 0.09, 0.15), ("turbo3", 0.02, 0.045), ("turbo4lm", 0.006, 0.013)]:
        y = R.unrotate(R.kv_decode(R.kv_encode(x, kvtype), kvtype, 128))
        mse = float(((x - y) ** 2).sum(axis=1).mean())
        assert lo < mse < hi, (kvtype, mse)


def make_cache(kvtype: str, vals: np.ndarray) -> np.ndarray:
    n, h, d = vals.shape
    return R.kv_encode(vals.reshape(-1, d), kvtype).reshape(n, h, -1)


PAIRS = [("f16", "f16"), ("q8_0", "q8_0"), ("q4_0", "q4_0"), ("turbo4", "turbo4"), ("turbo3", "turbo3"),
         ("turbo2", "turbo2"), ("turbo4lm", "turbo4lm"), ("q8_0", "turbo3"), ("turbo3", "f16")]


@pytest.mark.parametrize("ktype,vtype", PAIRS)
def test_attn_decode(ktype, vtype):
    n_ctx, heads, g = 200, 1, 4
    k = rng.standard_normal((n_ctx, heads, D)).astype(np.float32)
    v = rng.standard_normal((n_ctx, heads, D)).astype(np.float32)
    kc, vc = make_cache(ktype, k), make_cache(vtype, v)
    q = rng.standard_normal((heads * g, D)).astype(np.float32)
    start, end = int(rng.integers(0, 40)), int(rng.integers(150, n_ctx + 1))  # sliding-window style range
    out = np.full((heads * g, D), np.nan, np.float32)
    loader.attn_decode(q, kc, vc, ktype, vtype, start, end, 1 / 16, out=out)
    exp = R.attn_decode(q, kc, vc, ktype, vtype, heads, start, end, 1 / 16)
    np.testing.assert_allclose(out, exp, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("n_split", [1, 3, 40])
def test_attn_decode_splits_and_heads(n_split):
    """2 KV heads x 2 Q heads each; more splits than cells leaves empty splits (must weigh 0)."""
    n_ctx, heads, g = 23, 2, 2
    k = rng.standard_normal((n_ctx, heads, D)).astype(np.float32) * 2
    v = rng.standard_normal((n_ctx, heads, D)).astype(np.float32)
    kc, vc = make_cache("q8_0", k), make_cache("turbo4", v)
    q = rng.standard_normal((heads * g, D)).astype(np.float32)
    out = np.full((heads * g, D), np.nan, np.float32)
    loader.attn_decode(q, kc, vc, "q8_0", "turbo4", 0, n_ctx, 0.0625, n_split=n_split, out=out)
    exp = R.attn_decode(q, kc, vc, "q8_0", "turbo4", heads, 0, n_ctx, 0.0625)
    np.testing.assert_allclose(out, exp, rtol=1e-4, atol=2e-5)


def test_attn_reference_turbo_close_to_float():
    """The rotated-domain reference attends like float attention (Rq.Rk = q.k, V rotated back)."""
    n, d = 64, D
    k = rng.standard_normal((n, 1, d)).astype(np.float32)
    v = rng.standard_normal((n, 1, d)).astype(np.float32)
    q = rng.standard_normal((4, d)).astype(np.float32)
    exact = R.attn_decode(q, make_cache("f16", k), make_cache("f16", v), "f16", "f16", 1, 0, n, 1 / 16)
    turbo = R.attn_decode(q, make_cache("turbo4lm", k), make_cache("turbo4lm", v), "turbo4lm", "turbo4lm",
                          1, 0, n, 1 / 16)
    rel = np.linalg.norm(turbo - exact) / np.linalg.norm(exact)
    assert rel < 0.2, rel


def test_attn_decode_rejects_other_head_dims():
    with pytest.raises(ValueError, match="head_dim 256"):
        loader.attn_decode(np.zeros((4, 128), np.float32), np.zeros((1, 1, 256), np.uint8),
                           np.zeros((1, 1, 256), np.uint8), "f16", "f16", 0, 1, 1.0)


def test_kv_append_splits_long_prefill(monkeypatch):
    """Prefill longer than CUDA's gridDim.z limit is appended in several launches."""
    monkeypatch.setattr(loader, "MAX_GRID_YZ", 2)
    x = rng.standard_normal((5, 1, D)).astype(np.float32)
    cache = append(x, "turbo3", 7, 1)
    assert (cache[0] == 0xFF).all() and (cache[6] == 0xFF).all()
    np.testing.assert_array_equal(cache[1:6].reshape(5, -1), R.kv_encode(x.reshape(5, D), "turbo3"))


@pytest.mark.parametrize("ktype,vtype,window", [("f16", "f16", 0), ("turbo3", "turbo3", 6), ("q4_0", "turbo2", 3)])
def test_attn_prefill_causal(ktype, vtype, window):
    """T queries at once: query t sees cells up to its own position (and its sliding window)."""
    n_ctx, heads, g, t = 30, 1, 4, 7
    k = rng.standard_normal((n_ctx, heads, D)).astype(np.float32)
    v = rng.standard_normal((n_ctx, heads, D)).astype(np.float32)
    kc, vc = make_cache(ktype, k), make_cache(vtype, v)
    q = rng.standard_normal((t, heads * g, D)).astype(np.float32)
    first = 20  # positions 19..25: kv_end of query 0 is 20
    out = np.full(q.shape, np.nan, np.float32)
    loader.attn_decode(q, kc, vc, ktype, vtype, 0, first, 1 / 16, out=out, window=window)
    exp = R.attn_prefill(q, kc, vc, ktype, vtype, heads, 0, first, 1 / 16, window=window)
    np.testing.assert_allclose(out, exp, rtol=1e-4, atol=2e-5)


def test_attn_decode_window_matches_explicit_start():
    n_ctx = 100
    k = rng.standard_normal((n_ctx, 1, D)).astype(np.float32)
    kc = vc = make_cache("q8_0", k)
    q = rng.standard_normal((4, D)).astype(np.float32)
    a = loader.attn_decode(q, kc, vc, "q8_0", "q8_0", 0, n_ctx, 1 / 16, window=10)
    exp = R.attn_decode(q, kc, vc, "q8_0", "q8_0", 1, n_ctx - 10, n_ctx, 1 / 16)
    np.testing.assert_allclose(a, exp, rtol=1e-4, atol=2e-5)


def test_cache_shape_checked():
    x = rng.standard_normal((1, 1, D)).astype(np.float32)
    with pytest.raises(ValueError, match="cache rows"):
        loader.kv_append(x, np.zeros((4, 1, 99), np.uint8), "turbo3", 0)
    with pytest.raises(ValueError, match="cells"):
        loader.kv_append(x, np.zeros((4, 1, 100), np.uint8), "turbo3", 4)
    q = rng.standard_normal((4, D)).astype(np.float32)
    with pytest.raises(ValueError, match="does not hold"):
        loader.attn_decode(q, np.zeros((4, 1, 100), np.uint8), np.zeros((4, 1, 100), np.uint8), "turbo3", "f16",
                           0, 4, 1.0)
