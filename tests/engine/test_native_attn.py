"""engine/native/attn.c (one decode token's attention over an f16 cache) against its NumPy
reference, LayerKV._attend_step, on fresh random caches; its builds against each other; and the
f16 layer's one-check encode against the codec's."""

from __future__ import annotations

import numpy as np
import pytest

from turbospec.engine import native
from turbospec.engine.kv import cache as kvcache
from turbospec.engine.kv.cache import KVConfig, LayerKV
from turbospec.errors import UserError

from .test_native import build_variant

pytestmark = pytest.mark.skipif(native.library() is None, reason="no native kernels (no C compiler)")


def _layer(hkv, hd, sliding, window):
    return LayerKV(2, hkv, hd, sliding, window, KVConfig())


@pytest.mark.parametrize("sliding", [False, True])
@pytest.mark.parametrize("n_head,hkv,hd", [(4, 1, 256), (8, 2, 64), (6, 2, 32), (5, 1, 48)])
def test_native_step_matches_numpy_step(monkeypatch, sliding, n_head, hkv, hd):
    """Decode steps through a sliding ring that wraps, with a rollback of drafts in between:
    the native step's output within float32 rounding of the NumPy step's (float64 bound from
    the attention weights), the same bytes written, and it really ran (not the NumPy bits)."""
    rng = np.random.default_rng()
    window = 37 if sliding else 1 << 30
    fast, slow = _layer(hkv, hd, sliding, window), _layer(hkv, hd, sliding, window)
    k = rng.standard_normal((25, hkv, hd)).astype(np.float32)
    v = rng.standard_normal((25, hkv, hd)).astype(np.float32)
    q = rng.standard_normal((25, n_head, hd)).astype(np.float32)
    for lay in (fast, slow):
        lay.attend(q, np.arange(25), 0.125, k, v)
    pos, differ = 25, 0
    for step in range(90):
        if step == 40:
            pos -= 5
            fast.truncate(pos)
            slow.truncate(pos)
        k = (rng.standard_normal((1, hkv, hd)) * rng.uniform(0.1, 3)).astype(np.float32)
        v = rng.standard_normal((1, hkv, hd)).astype(np.float32)
        q = (rng.standard_normal((1, n_head, hd)) * rng.uniform(0.1, 3)).astype(np.float32)
        monkeypatch.setattr(kvcache, "NATIVE_STEP", True)
        a = fast.attend(q, np.array([pos]), 0.125, k, v)
        monkeypatch.setattr(kvcache, "NATIVE_STEP", False)
        b = slow.attend(q, np.array([pos]), 0.125, k, v)
        assert a.shape == b.shape == (1, n_head, hd) and a.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=3e-5)  # scores up to ~20: exp amplifies their rounding
        differ += not np.array_equal(a, b)
        pos += 1
    assert differ > 0  # other summation orders: the native kernel computed these, not NumPy
    for name in ("k", "v", "pos"):
        np.testing.assert_array_equal(getattr(fast, name), getattr(slow, name))


def _ring(rng, cap, hkv, hd, n_old, p):
    """A sliding layer's cells: random K/V halves, positions p - n_old .. p - 1 scattered over
    the ring (plus stale positions outside the window), the token itself at p % cap."""
    k = rng.standard_normal((cap, hkv, hd)).astype(np.float16).view(np.uint8).reshape(cap, hkv, 2 * hd)
    v = rng.standard_normal((cap, hkv, hd)).astype(np.float16).view(np.uint8).reshape(cap, hkv, 2 * hd)
    pos = np.full(cap, -1, np.int64)
    ps = np.arange(p - n_old - 5, p + 1)
    pos[ps % cap] = ps
    return k, v, pos


def _ref(k, v, cells, q, scale):
    """float64 softmax attention over the given cells in order."""
    hkv = k.shape[1]
    kd = k.view(np.float16).astype(np.float64)[cells]  # (n, hkv, hd)
    vd = v.view(np.float16).astype(np.float64)[cells]
    g = q.shape[0] // hkv
    out = np.zeros(q.shape)
    for h in range(q.shape[0]):
        s = kd[:, h // g] @ (q[h].astype(np.float64) * scale)
        w = np.exp(s - s.max())
        out[h] = w @ vd[:, h // g] / w.sum()
    return out


def test_kernel_selects_the_ring_cells_and_matches_float64():
    """The kernel's own cell selection (the slots holding lo..hi by slot, then the new one) and
    the global layer's range, against a float64 reference over the same cells."""
    rng = np.random.default_rng()
    lib = native.library()
    cap, hkv, hd, p = 64, 2, 128, 150
    k, v, pos = _ring(rng, cap, hkv, hd, 40, p)
    q = rng.standard_normal((8, hd)).astype(np.float32)
    out = np.empty_like(q)
    lo = p - 30
    assert native.attn_f16(lib, k, v, pos, lo, p - 1, p % cap, q, 0.09, out)
    cells = np.append(np.nonzero((pos >= lo) & (pos <= p - 1))[0], p % cap)
    np.testing.assert_allclose(out, _ref(k, v, cells, q, 0.09), rtol=2e-5, atol=2e-6)
    assert native.attn_f16(lib, k, v, None, 7, 50, -1, q, 0.09, out)
    np.testing.assert_allclose(out, _ref(k, v, np.arange(7, 51), q, 0.09), rtol=2e-5, atol=2e-6)


def test_kernel_reports_non_finite_scores_and_bad_shapes():
    rng = np.random.default_rng()
    lib = native.library()
    k, v, pos = _ring(rng, 32, 1, 64, 10, 40)
    q = rng.standard_normal((4, 64)).astype(np.float32)
    out = np.empty_like(q)
    q[2, 5] = np.inf
    assert not native.attn_f16(lib, k, v, pos, 31, 39, 40 % 32, q, 0.1, out)
    q[2, 5] = np.nan
    assert not native.attn_f16(lib, k, v, None, 0, 10, -1, q, 0.1, out)
    k60, v60, _ = _ring(rng, 32, 1, 60, 10, 40)
    with pytest.raises(ValueError, match="head size 60"):
        native.attn_f16(lib, k60, v60, None, 0, 10, -1, np.zeros((4, 60), np.float32), 0.1,
                        np.empty((4, 60), np.float32))
    with pytest.raises(ValueError, match="head size 64 .*cells to read"):
        native.attn_f16(lib, k, v, pos, 1000, 2000, -1, q, 0.1, out)  # no cell in range
    with pytest.raises(ValueError, match="inside the cache"):
        native.attn_f16(lib, k, v, None, 0, 32, -1, q, 0.1, out)


def test_non_finite_query_falls_back_to_the_guarded_path(monkeypatch):
    """A NaN score: the layer answers as the NumPy paths do (they guard it), native or not."""
    rng = np.random.default_rng()
    k = rng.standard_normal((12, 1, 64)).astype(np.float32)
    q = rng.standard_normal((1, 4, 64)).astype(np.float32)
    q[0, 1, 3] = np.nan
    outs = []
    for flag in (True, False):
        monkeypatch.setattr(kvcache, "NATIVE_STEP", flag)
        lay = _layer(1, 64, True, 16)
        lay.attend(np.ones((12, 4, 64), np.float32), np.arange(12), 0.1, k, k)
        outs.append(lay.attend(q, np.array([12]), 0.1, k[:1], k[:1]))
    assert np.isnan(outs[0][0, 1]).all()
    np.testing.assert_array_equal(outs[0], outs[1])


@pytest.mark.parametrize("arch,isa,needs", [((), "portable", ()), (("-mavx2", "-mfma", "-mf16c"), "f16c",
                                                                   ("avx2", "fma", "f16c"))])
def test_builds_agree_bit_for_bit(arch, isa, needs):
    """One summation order in every build (lane partials, the lane tree, ascending cells)."""
    other = build_variant(arch, isa, needs, "ts_f16_isa")
    lib = native.library()
    rng = np.random.default_rng()
    for n_head, hkv, hd in ((4, 1, 256), (6, 2, 32)):
        k, v, pos = _ring(rng, 96, hkv, hd, 70, 300)
        q = (rng.standard_normal((n_head, hd)) * 2).astype(np.float32)
        a, b = np.empty_like(q), np.empty_like(q)
        for args in ((pos, 300 - 60, 299, 300 % 96), (None, 3, 95, -1)):
            assert native.attn_f16(lib, k, v, *args, q, 0.0625, a)
            assert native.attn_f16(other, k, v, *args, q, 0.0625, b)
            np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))


def test_f16_layer_encode_is_the_codecs_bytes_and_errors():
    """The f16 layer's one-check encode gives the codec's bytes, and a value the codec refuses
    still gets the codec path's one-line error naming the layer and position."""
    rng = np.random.default_rng()
    lay = _layer(2, 64, False, 1 << 30)
    k = (rng.standard_normal((5, 2, 64)) * rng.uniform(1e-6, 1e4, (5, 1, 1))).astype(np.float32)
    v = rng.standard_normal((5, 2, 64)).astype(np.float32)
    kp, vp, ko = lay.encode(k, v, np.arange(5))
    assert np.array_equal(kp, lay.ck.encode(k)) and np.array_equal(vp, lay.cv.encode(v)) and ko.shape == (5, 2, 0)
    for bad, msg in ((np.nan, "non-finite K .*position 13"), (np.inf, "non-finite K .*position 13"),
                     (7e4, "position 13 does not fit cache type f16 .*check the model")):
        kb = k.copy()
        kb[3, 1, 9] = bad
        with pytest.raises(UserError, match=msg):
            lay.encode(kb, v, np.arange(10, 15))


@pytest.mark.parametrize("sliding", [False, True])
@pytest.mark.parametrize("n_head,hkv,hd", [(4, 1, 256), (6, 2, 32)])
def test_verification_batch_in_one_call_is_bit_identical_to_token_by_token(monkeypatch, sliding, n_head, hkv, hd):
    """ts_attn_f16_batch (a verification batch in one native call, every cell written first)
    against the token-by-token loop it replaces, on a ring that wraps and a global layer that
    grows, batches of 2..32 tokens with rollbacks of rejected drafts between them: the same
    output bits and the same cells — and the one-call path really ran (counted), except where
    it must hand the batch back (a ring with 8 cells of slack: longer than 9 tokens)."""
    rng = np.random.default_rng()
    window = 29 if sliding else 1 << 30
    fast, slow = (LayerKV(2, hkv, hd, sliding, window, KVConfig(slack=8)) for _ in range(2))
    calls = {"one_call": 0}
    real = LayerKV._attend_native_batch

    def counted(self, *a):
        out = real(self, *a)
        calls["one_call"] += out is not None
        return out

    monkeypatch.setattr(LayerKV, "_attend_native_batch", counted)
    pos = 0
    for step in range(40):
        T = int(rng.integers(10, 33)) if step % 7 == 3 else int(rng.integers(2, 10))
        k = (rng.standard_normal((T, hkv, hd)) * rng.uniform(0.1, 3)).astype(np.float32)
        v = rng.standard_normal((T, hkv, hd)).astype(np.float32)
        q = (rng.standard_normal((T, n_head, hd)) * rng.uniform(0.1, 3)).astype(np.float32)
        qpos = np.arange(pos, pos + T)
        before = calls["one_call"]
        a = fast.attend(q, qpos, 0.07, k, v)
        ran = calls["one_call"] > before
        monkeypatch.setattr(LayerKV, "_attend_native_batch", lambda self, *a: None)
        b = slow.attend(q, qpos, 0.07, k, v)
        monkeypatch.setattr(LayerKV, "_attend_native_batch", counted)
        assert ran == (not sliding or T <= fast.cap - window + 1), (T, ran)
        np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))
        for name in ("k", "v", "pos"):
            np.testing.assert_array_equal(getattr(fast, name), getattr(slow, name))
        keep = int(rng.integers(1, T + 1))  # accepted prefix; the rest are rejected drafts
        pos += keep
        fast.truncate(pos)
        slow.truncate(pos)
    assert calls["one_call"] >= (30 if sliding else 40)


def test_verification_batch_hands_back_non_finite_and_out_of_range_values():
    """A NaN score inside a batch, or a K value f16 cannot hold: the one-call path declines and
    the token-by-token path answers (a NaN row as the step gives it; the codec's one-line error)."""
    rng = np.random.default_rng()
    lay = _layer(1, 64, True, 16)
    k = rng.standard_normal((12, 1, 64)).astype(np.float32)
    lay.attend(np.ones((12, 4, 64), np.float32), np.arange(12), 0.1, k, k)
    q = rng.standard_normal((3, 4, 64)).astype(np.float32)
    q[1, 2, 7] = np.nan
    kn = rng.standard_normal((3, 1, 64)).astype(np.float32)
    assert lay._attend_native_batch(q, np.arange(12, 15), 0.1, kn, kn) is None
    out = lay.attend(q, np.arange(12, 15), 0.1, kn, kn)
    assert np.isnan(out[1, 2]).all() and np.isfinite(out[0]).all() and np.isfinite(out[2]).all()
    kn[2, 0, 3] = 7e4
    assert lay._attend_native_batch(q, np.arange(12, 15), 0.1, kn, kn) is None
    with pytest.raises(UserError, match="position 14 does not fit cache type f16"):
        lay.attend(q, np.arange(12, 15), 0.1, kn, kn)
    assert lay._attend_native_batch(q, np.array([12, 14, 15]), 0.1, kn, kn) is None  # not consecutive


@pytest.mark.parametrize("sliding", [False, True])
@pytest.mark.parametrize("n_head,hkv,hd", [(4, 1, 256), (6, 2, 32)])
def test_read_only_query_native_matches_the_tiled_path(monkeypatch, sliding, n_head, hkv, hd):
    """The MTP drafter's read of the target's cache (no K/V of its own, cells at positions <=
    max_pos) through ts_attn_f16 against the tiled NumPy path, as drafts run ahead of attn_pos on
    a ring that wraps: float32 rounding apart, the same cells, and the native kernel really ran."""
    rng = np.random.default_rng()
    window = 23 if sliding else 1 << 30
    lay = _layer(hkv, hd, sliding, window)
    n = 70
    k = rng.standard_normal((n, hkv, hd)).astype(np.float32)
    v = rng.standard_normal((n, hkv, hd)).astype(np.float32)
    lay.attend(rng.standard_normal((n, n_head, hd)).astype(np.float32), np.arange(n), 0.1, k, v)
    differ = 0
    for attn_pos in (0, 5, 22, 40, 69):
        for step in range(4):  # draft step k reads at position attn_pos + 1 + k
            q = (rng.standard_normal((1, n_head, hd)) * rng.uniform(0.1, 3)).astype(np.float32)
            p = np.array([attn_pos + 1 + step])
            monkeypatch.setattr(kvcache, "NATIVE_STEP", True)
            a = lay.attend(q, p, 0.09, max_pos=attn_pos)
            monkeypatch.setattr(kvcache, "NATIVE_STEP", False)
            b = lay.attend(q, p, 0.09, max_pos=attn_pos)
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=3e-5)
            differ += not np.array_equal(a, b)
    assert differ > 0  # another summation order: the kernel computed these
    lay.truncate(30)  # a global layer's cells past n are gone; a ring's are marked unused
    q = rng.standard_normal((1, n_head, hd)).astype(np.float32)
    monkeypatch.setattr(kvcache, "NATIVE_STEP", True)
    a = lay.attend(q, np.array([31]), 0.09, max_pos=40)
    monkeypatch.setattr(kvcache, "NATIVE_STEP", False)
    np.testing.assert_allclose(a, lay.attend(q, np.array([31]), 0.09, max_pos=40), rtol=1e-4, atol=3e-5)
