"""Block-int8 weights times int8-quantized activations (engine/native/q8act.c): the kernel equals
its NumPy reference (linear.q8act_reference) bit for bit on fresh random inputs, stays within the
activation-quantization bound of the exact product, is batch-, slot- and split-invariant, its
AVX-512 VNNI, AVX-VNNI, AVX2 and portable builds agree bit for bit, the window layout is the documented permutation, a
non-finite token poisons only its own outputs, and BlockInt8 takes this path for decode batches."""

import numpy as np
import pytest
from test_blockint8 import LAYOUTS, rand_block
from test_native import build_variant

from turbospec.engine import linear, native
from turbospec.engine.linear import BlockInt8, q8act_quantize, q8act_reference

needs_native = pytest.mark.skipif(native.library() is None, reason=f"native kernels unavailable: {native.status()}")


def window_layout(q, G):
    """The layout q8act.c documents, built with reshapes (lanes = groups, windows of 16)."""
    R, K = q.shape
    ng = K // G
    q3 = q.reshape(R, ng, G)
    parts = []
    for w0 in range(0, ng, 16):
        W = min(16, ng - w0)
        parts.append(q3[:, w0 : w0 + W].reshape(R, W, G // 4, 4).transpose(0, 2, 1, 3).reshape(R, -1))
    return np.ascontiguousarray(np.concatenate(parts, axis=1))


def product(lib, q, d, m, x, splits=None):
    qv = native.q8act_layout(lib, q, q.shape[1] // d.shape[1])
    out = np.full((x.shape[0], q.shape[0]), np.nan, np.float32)
    for r0, r1 in splits or [(0, q.shape[0])]:
        native.q8act_matmul(lib, qv, d, m, np.ascontiguousarray(x), out, r0, r1)
    return out


def activations(rng, t, k):
    # mixed magnitudes per group, some exact zeros and an all-zero group
    x = (rng.standard_normal((t, k)) * rng.uniform(0.01, 30, (t, 1))).astype(np.float32)
    x[:, 5] = 0.0
    if k >= 64:
        x[0, 32:64] = 0.0
    return x


def test_quantize_reference():
    rng = np.random.default_rng()
    for G in (16, 32):
        x = activations(rng, 5, 256)
        qx, dx = q8act_quantize(x, G)
        assert qx.min() >= -127 and qx.max() <= 127
        amax = np.abs(x.reshape(5, -1, G)).max(axis=2)
        assert np.array_equal(dx, (amax / np.float32(127)).astype(np.float32))
        back = qx.reshape(5, -1, G) * dx[:, :, None]
        assert np.all(np.abs(back - x.reshape(5, -1, G)) <= dx[:, :, None] * 0.5001 + 1e-30)
        assert np.all(np.abs(qx.reshape(5, -1, G)).max(axis=2)[amax > 0] == 127)


@needs_native
def test_layout_is_the_documented_permutation():
    rng = np.random.default_rng()
    lib = native.library()
    for G, k in ((32, 640), (32, 2048), (16, 640), (16, 48), (32, 32)):
        q = rng.integers(-128, 128, (7, k), dtype=np.int8)
        got = native.q8act_layout(lib, q, G)
        assert np.array_equal(got, window_layout(q, G)), (G, k)
        assert np.array_equal(np.sort(got, axis=1), np.sort(q, axis=1))


@needs_native
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("k", [640, 2048, 1024, 32, 96])
def test_kernel_equals_reference_bit_for_bit(k, layout):
    rng = np.random.default_rng()
    lib = native.library()
    q, d, m = rand_block(rng, 37, k, *layout)
    for t in (1, 2, 3, 4, 5, 8, 9, 32):
        x = activations(rng, t, k)
        got = product(lib, q, d, m, x)
        want = q8act_reference(q, d, m, x)
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), (k, t)


@needs_native
@pytest.mark.parametrize("layout", LAYOUTS)
def test_within_the_quantization_bound_of_the_exact_product(layout):
    """|got - x.w| <= sum_k |w_k| dx_g / 2 (each activation moves by at most half its step) plus
    float32 rounding."""
    rng = np.random.default_rng()
    lib = native.library()
    k = 640
    G = layout[0]
    q, d, m = rand_block(rng, 50, k, *layout)
    w = BlockInt8(q, d, m).dense().astype(np.float64)
    x = activations(rng, 6, k)
    got = product(lib, q, d, m, x).astype(np.float64)
    want = x.astype(np.float64) @ w.T
    _, dx = q8act_quantize(x, G)
    step = np.repeat(dx.astype(np.float64), G, axis=1)  # (T, K)
    bound = 0.5 * step @ np.abs(w).T + 64 * 2.0**-24 * (np.abs(x).astype(np.float64) @ np.abs(w).T)
    assert np.all(np.abs(got - want) <= bound)
    assert np.abs(got - want).max() > 0  # activations really were quantized
    rel = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert rel < 0.02, rel


@needs_native
@pytest.mark.parametrize("layout", LAYOUTS)
def test_batch_slot_and_split_invariance(layout):
    rng = np.random.default_rng()
    lib = native.library()
    q, d, m = rand_block(rng, 61, 192, *layout)
    x = activations(rng, 9, 192)
    alone = [product(lib, q, d, m, x[r : r + 1])[0] for r in range(9)]
    for t in range(1, 10):
        batch = product(lib, q, d, m, x[:t], splits=[(0, 7), (7, 8), (8, 61)])
        for r in range(t):
            assert np.array_equal(batch[r], alone[r]), (t, r)
            other = activations(rng, t, 192)
            slot = int(rng.integers(t))
            other[slot] = x[r]
            assert np.array_equal(product(lib, q, d, m, other)[slot], alone[r]), (t, r, slot)


@needs_native
def test_non_finite_token_poisons_only_itself():
    rng = np.random.default_rng()
    lib = native.library()
    q, d, m = rand_block(rng, 20, 640, 32, True)
    x = activations(rng, 3, 640)
    clean = product(lib, q, d, m, x)
    for bad in (np.nan, np.inf, -np.inf):
        y = x.copy()
        y[1, 100] = bad
        got = product(lib, q, d, m, y)
        assert np.isnan(got[1]).all()
        assert np.array_equal(got[[0, 2]], clean[[0, 2]])
        assert np.isnan(q8act_reference(q, d, m, y)[1]).all()


@needs_native
@pytest.mark.parametrize("layout", LAYOUTS)
def test_blockint8_decode_batches_take_this_path(monkeypatch, layout):
    """With ACT_INT8 on, BlockInt8.apply (any worker count, serial too) and the routed-head
    gather give the reference's bits; with it off, the float-activation kernel's."""
    rng = np.random.default_rng()
    lib = native.library()
    q, d, m = rand_block(rng, 3000, 640, *layout)
    monkeypatch.setattr(linear, "ACT_INT8", True)
    lin = BlockInt8(q, d, m)
    x = activations(rng, 6, 640)
    want = q8act_reference(q, d, m, x)
    for workers in (1, 2, 3):
        monkeypatch.setattr(linear, "_N_WORKERS", workers)
        assert np.array_equal(lin.apply(x), want)
        assert np.array_equal(lin.apply(x[2:3])[0], want[2])
    assert np.array_equal(lin.apply_serial(x), want)
    idx = rng.choice(3000, 700, replace=False)
    assert np.array_equal(lin.score_rows(idx, x[4]), want[4, idx])
    assert np.array_equal(native.q8act_gather(lib, lin._qv, d, m, idx, x[4]), want[4, idx])
    monkeypatch.setattr(linear, "ACT_INT8", False)
    off = BlockInt8(q, d, m)
    f = np.full((6, 3000), np.nan, np.float32)
    native.blockint8_matmul(lib, q, d, m, x, f, 0, 3000)
    assert np.array_equal(off.apply(x), f)


@needs_native
@pytest.mark.parametrize("arch,isa,needs", [
    ((), "portable", ()),
    (("-mavx2", "-mfma", "-mf16c"), "avx2", ("avx2",)),
    (("-mavx2", "-mfma", "-mf16c", "-mavxvnni"), "avxvnni", ("avx2", "avx_vnni")),
])
def test_every_build_agrees_bit_for_bit(arch, isa, needs):
    """The portable, AVX2 (vpmaddubsw, sign trick) and AVX-VNNI (ymm vpdpbusd) builds give the
    reference's bits, and so the default build's (AVX-512 VNNI here when the CPU has it)."""
    lib = native.library()
    other = build_variant(arch, isa, needs, "ts_q8act_isa")
    rng = np.random.default_rng()
    for layout in LAYOUTS:
        for k in (640, 2048, 96, 1440):
            q, d, m = rand_block(rng, 300, k, *layout)
            q[0, :] = -128  # the extreme code (|-128| is 128 unsigned in the AVX2 sign trick)
            x = activations(rng, 6, k)
            got = product(other, q, d, m, x)
            assert np.array_equal(got, q8act_reference(q, d, m, x))
            assert np.array_equal(got, product(lib, q, d, m, x))
            idx = rng.choice(300, 50, replace=False)
            qv = native.q8act_layout(lib, q, layout[0])
            assert np.array_equal(native.q8act_gather(lib, qv, d, m, idx, x[0]),
                                  native.q8act_gather(other, qv, d, m, idx, x[0]))
