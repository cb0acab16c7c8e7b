"""Argmax / softmax over vocab-sized rows, top-k, and the centroid-routed head through the harness."""

from __future__ import annotations

import numpy as np
import pytest

from turbospec.cuda import loader
from turbospec.cuda import reference as R

rng = np.random.default_rng()


@pytest.mark.parametrize("n,blocks", [(262144 // 16, 7), (1000, 264), (1, 4)])
def test_argmax(n, blocks):
    x = rng.standard_normal(n).astype(np.float32)
    if n > 10:
        j = rng.integers(0, n, 3)
        x[j] = 50.0  # ties: the lowest index wins
        x[rng.integers(0, n)] = np.nan
    out = np.full(1, -7, np.int32)
    loader.argmax(x, out=out, blocks=blocks)
    assert out[0] == R.argmax(x)


def test_argmax_maps_through_ids():
    x = rng.standard_normal(300).astype(np.float32)
    ids = rng.permutation(10_000)[:300].astype(np.int32)
    assert loader.argmax(x, ids=ids)[0] == ids[R.argmax(x)]


def test_softmax():
    x = (rng.standard_normal((3, 5000)) * 4).astype(np.float32)
    out = np.full_like(x, np.nan)
    loader.softmax(x, 0.8, out=out, threads=256)
    np.testing.assert_allclose(out, R.softmax(x, 0.8), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("n,k", [(2048, 32), (100, 100), (37, 1)])
def test_topk(n, k):
    x = rng.standard_normal(n).astype(np.float32)
    x[rng.integers(0, n, 4)] = 3.5  # ties keep index order
    idx, val = loader.topk(x, k)
    ri, rv = R.topk(x, k)
    np.testing.assert_array_equal(idx, ri)
    np.testing.assert_array_equal(val, rv)


@pytest.mark.parametrize("etype", ["q6_k", "q8_0"])
def test_routed_head(etype):
    n_c, per, k, top = 32, 16, 256, 5
    cent = R.random_weight(rng, "q8_0", n_c, k)
    emb = R.random_weight(rng, etype, n_c * per, k)
    order = rng.permutation(n_c * per).astype(np.int32)
    h = rng.standard_normal(k).astype(np.float32)
    tok, row = loader.routed_head(h, cent, "q8_0", n_c, order, emb, etype, top, full_row=True)
    rtok, rrow = R.routed_head(h, cent, "q8_0", n_c, order, emb, etype, top)
    np.testing.assert_array_equal(row <= -1e29, rrow <= -1e29)  # the same candidate set
    np.testing.assert_allclose(row, rrow, rtol=1e-4, atol=1e-3)
    assert tok[0] == rtok or abs(rrow[tok[0]] - rrow[rtok]) < 1e-4


@pytest.mark.parametrize("wtype", ["q4_k", "q5_0", "f16"])
def test_matvec_rows(wtype):
    rows, k = 40, 256
    w = R.random_weight(rng, wtype, rows, k)
    ids = rng.integers(0, rows, 13).astype(np.int32)
    x = rng.standard_normal(k).astype(np.float32)
    out = np.full(13, np.nan, np.float32)
    loader.matvec_rows(w, wtype, ids, x, out=out)
    ref = R.matvec_rows(w, wtype, ids, x, rows)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
