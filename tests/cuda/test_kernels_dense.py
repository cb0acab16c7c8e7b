"""Norms, RoPE, GeGLU and the quantized matvec/matmul through the harness vs cuda/reference.py.

Fresh random inputs every run; outputs are NaN-poisoned before each launch.
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from gguf.quants import dequantize

from turbospec.cuda import loader
from turbospec.cuda import reference as R

rng = np.random.default_rng()


def nan_like(a: np.ndarray) -> np.ndarray:
    return np.full(a.shape, np.nan, np.float32)


@pytest.mark.parametrize("rows,n,threads", [(3, 640, 256), (8, 256, 64), (2, 100, 32)])
def test_rmsnorm(rows, n, threads):
    x = rng.standard_normal((rows, n)).astype(np.float32) * 3
    w = rng.standard_normal(n).astype(np.float32)
    out = nan_like(x)
    loader.rmsnorm(x, w, 1e-6, out=out, threads=threads)
    np.testing.assert_allclose(out, R.rmsnorm(x, w, 1e-6), rtol=2e-5, atol=2e-6)


def test_rmsnorm_per_head():
    q = rng.standard_normal((3, 4, 256)).astype(np.float32)
    w = rng.standard_normal(256).astype(np.float32)
    out = nan_like(q)
    loader.rmsnorm(q, w, 1e-6, out=out)
    np.testing.assert_allclose(out, R.rmsnorm(q, w, 1e-6), rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("with_next", [True, False])
def test_add_rmsnorm(with_next):
    rows, n = 3, 640
    x = rng.standard_normal((rows, n)).astype(np.float32)
    y = rng.standard_normal((rows, n)).astype(np.float32) * 5
    wp, wn = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    xr, hr = R.add_rmsnorm(x, y, wp, wn if with_next else None, 1e-6)
    h = nan_like(x) if with_next else None
    loader.add_rmsnorm(x, y, wp, wn if with_next else None, 1e-6, h=h, threads=128)
    np.testing.assert_allclose(x, xr, rtol=2e-5, atol=5e-6)
    if with_next:
        np.testing.assert_allclose(h, hr, rtol=2e-5, atol=5e-6)


@pytest.mark.parametrize("base,n_rot", [(10000.0, 256), (1e6, 256), (10000.0, 64)])
def test_rope_neox(base, n_rot):
    x = rng.standard_normal((5, 4, 256)).astype(np.float32)
    pos = rng.integers(0, 600, 5).astype(np.int32)
    exp = R.rope_neox(x, pos, base, n_rot)
    loader.rope_neox(x, pos, base, n_rot)
    np.testing.assert_allclose(x, exp, rtol=1e-4, atol=2e-4)


def test_geglu():
    n = 3 * 2048 + 5
    g = rng.standard_normal(n).astype(np.float32) * 3
    u = rng.standard_normal(n).astype(np.float32)
    out = nan_like(g)
    loader.geglu(g, u, out=out)
    np.testing.assert_allclose(out, R.geglu(g, u), rtol=1e-5, atol=1e-6)


GG = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q5_0": gguf.GGMLQuantizationType.Q5_0,
      "q4_k": gguf.GGMLQuantizationType.Q4_K, "q6_k": gguf.GGMLQuantizationType.Q6_K}


@pytest.mark.parametrize("wtype", list(GG))
def test_reference_dequant_matches_gguf(wtype):
    rows, k = 6, 512
    w = R.random_weight(rng, wtype, rows, k)
    np.testing.assert_array_equal(R.dequant_rows(w, wtype, rows, k), dequantize(w.reshape(rows, -1), GG[wtype]))


@pytest.mark.parametrize("wtype", ["q8_0", "q5_0"])
def test_matvec_on_gguf_quantized(wtype):
    """Weights quantized by gguf.quants.quantize (the real packer), not only random bytes."""
    rows, k = 10, 640
    wf = rng.standard_normal((rows, k)).astype(np.float32)
    w = gguf.quants.quantize(wf, GG[wtype]).reshape(-1)
    x = rng.standard_normal(k).astype(np.float32)
    out = np.full(rows, np.nan, np.float32)
    loader.matvec(w, wtype, x, rows, out=out)
    ref = (dequantize(w.reshape(rows, -1), GG[wtype]).astype(np.float64) @ x).astype(np.float32)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("wtype", loader.WEIGHT_KERNEL_TYPES)
@pytest.mark.parametrize("rows,k", [(13, 512), (4, 256)])
def test_matvec(wtype, rows, k):
    w = R.random_weight(rng, wtype, rows, k)
    x = rng.standard_normal(k).astype(np.float32)
    out = np.full(rows, np.nan, np.float32)
    loader.matvec(w, wtype, x, rows, out=out)
    ref = R.matmul(w, wtype, x, rows)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


@pytest.mark.parametrize("wtype", loader.WEIGHT_KERNEL_TYPES)
def test_matmul_prefill(wtype):
    rows, k, t = 9, 256, 11  # T not a multiple of the 8-token tile, rows not of the 4-row block
    w = R.random_weight(rng, wtype, rows, k)
    x = rng.standard_normal((t, k)).astype(np.float32)
    out = np.full((t, rows), np.nan, np.float32)
    loader.matmul(w, wtype, x, rows, out=out)
    ref = R.matmul(w, wtype, x, rows)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_matvec_rejects_bad_k():
    with pytest.raises(ValueError, match="multiple of 256"):
        loader.matvec(np.zeros(144, np.uint8), "q4_k", np.zeros(288, np.float32), 1)


@pytest.mark.parametrize("wtype,type_id", [("tq3_1s", 45), ("tq4_1s", 46)])
def test_tq_reference_matches_engine_and_quantizer(wtype, type_id):
    """TQ3_1S/TQ4_1S: reference dequant == engine/quant/tq.py; the matvec on weights that the
    engine's quantizer packed (x rotated once by tq_rotate_x instead of un-rotating weights)."""
    tq = pytest.importorskip("turbospec.engine.quant.tq")
    rows, k = 8, 640
    wf = rng.standard_normal((rows, k)).astype(np.float32)
    w = tq.quantize(wf, type_id).reshape(-1)
    np.testing.assert_allclose(R.dequant_rows(w, wtype, rows, k), tq.dequantize(w, type_id, (rows, k)),
                               rtol=0, atol=1e-5)
    x = rng.standard_normal(k).astype(np.float32)
    out = np.full(rows, np.nan, np.float32)
    loader.matvec(w, wtype, x, rows, out=out)
    ref = R.matmul(w, wtype, x, rows)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_wrong_layouts_are_refused():
    """Arrays the kernels write in place or read as raw bytes are checked, never reinterpreted."""
    x = rng.standard_normal((2, 256)).astype(np.float32)
    with pytest.raises(ValueError, match="float32"):
        loader.rope_neox(x.reshape(2, 1, 256).astype(np.float64), np.zeros(2, np.int32), 1e4)
    with pytest.raises(ValueError, match="bytes"):
        loader.matvec(np.zeros(33, np.uint8), "q8_0", x[0], 1)
    with pytest.raises(ValueError, match="uint8"):
        loader.matvec(np.zeros(272, np.int8), "q8_0", x[0], 1)
