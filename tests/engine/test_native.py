"""The native CPU kernels (engine/native) against their NumPy references, on fresh random inputs.

What must hold: the product equals ``x @ (q * s[:, None]).T`` to float32 rounding; every output
is bit-identical whatever the batch size, the token's slot in the batch and the row split across
threads (speculative verification must reproduce plain decoding exactly); the vector and the
portable builds agree bit for bit; without a compiler the engine falls back to NumPy in one line.
"""

import numpy as np
import pytest

from turbospec.engine import linear, native
from turbospec.engine.linear import RowInt16, quantize_rows_int16

pytestmark = pytest.mark.skipif(native.library() is None, reason=f"native kernels unavailable: {native.status()}")


def rand_weights(rng, rows, k):
    w = (rng.standard_normal((rows, k)) * rng.uniform(0.01, 2.0, (rows, 1))).astype(np.float32)
    return quantize_rows_int16(w)


def product(lib, q, s, x, splits=None):
    rows = q.shape[0]
    out = np.full((x.shape[0], rows), np.nan, np.float32)
    for r0, r1 in splits or [(0, rows)]:
        native.rowint16_matmul(lib, q, s, np.ascontiguousarray(x), out, r0, r1)
    return out


@pytest.mark.parametrize("k", [640, 96, 50, 7, 16, 33])
def test_matmul_matches_reference(k):
    rng = np.random.default_rng()
    lib = native.library()
    q, s = rand_weights(rng, 45, k)
    ref_w = q.astype(np.float64) * s[:, None]
    for t in (1, 2, 3, 4, 5, 8, 9, 32):
        x = rng.standard_normal((t, k)).astype(np.float32)
        got = product(lib, q, s, x)
        want = x.astype(np.float64) @ ref_w.T
        # float32 rounding bound: one rounding per chunk FMA, per tree level and the scale,
        # times the sum of |terms| (a kernel that drops or doubles a term misses it by far)
        scale = np.abs(x).astype(np.float64) @ np.abs(ref_w).T
        bound = (-(-k // 16) + 7) * 2.0**-24 * scale
        assert np.all(np.abs(got - want) <= bound), (k, t)


def test_batch_slot_and_split_invariance():
    """Token r's outputs are the same bits alone, in any slot of any batch, and under any row split."""
    rng = np.random.default_rng()
    lib = native.library()
    k, rows = 200, 61  # a tail chunk (200 = 12 x 16 + 8) and an odd row count
    q, s = rand_weights(rng, rows, k)
    x = rng.standard_normal((9, k)).astype(np.float32)
    alone = [product(lib, q, s, x[r : r + 1])[0] for r in range(9)]
    for t in range(1, 10):
        xs = x[:t]
        batch = product(lib, q, s, xs, splits=[(0, 7), (7, 8), (8, rows)])
        for r in range(t):
            assert np.array_equal(batch[r], alone[r]), (t, r)
            other = rng.standard_normal((t, k)).astype(np.float32)
            slot = int(rng.integers(t))
            other[slot] = xs[r]
            assert np.array_equal(product(lib, q, s, other)[slot], alone[r]), (t, r, slot)


def test_rowint16_apply_native_equals_tokenwise(monkeypatch):
    """Through RowInt16.apply (the crew's row ranges): a batch equals its tokens one by one."""
    rng = np.random.default_rng()
    q, s = rand_weights(rng, 5000, 64)
    lin = RowInt16(q, s)
    assert lin._native_ok
    for workers in (1, 2, 3):
        monkeypatch.setattr(linear, "_N_WORKERS", workers)
        x = rng.standard_normal((6, 64)).astype(np.float32)
        batch = lin.apply(x)
        for r in range(6):
            assert np.array_equal(batch[r], lin.apply(x[r : r + 1])[0])
        np.testing.assert_allclose(batch, x.astype(np.float64) @ (q.astype(np.float64) * s[:, None]).T,
                                   rtol=1e-4, atol=1e-4)


def test_gather_equals_rows_product():
    rng = np.random.default_rng()
    lib = native.library()
    for k in (640, 37):
        q, s = rand_weights(rng, 3000, k)
        idx = rng.choice(3000, 700, replace=False)
        h = rng.standard_normal(k).astype(np.float32)
        got = native.rowint16_gather(lib, q, s, idx, h)
        want = (q[idx].astype(np.float64) * s[idx, None]) @ h.astype(np.float64)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
        # the same bits as the matmul kernel's one-token product of those rows
        full = product(lib, q, s, h[None])[0]
        assert np.array_equal(got, full[idx])


def test_assistant_products_int16_serial(monkeypatch):
    """The MTP assistant's one-vector products: large matrices as row-scaled int16 in the calling
    thread (within the int16 rounding of w, against float64), small ones and the no-native case
    exactly w @ x; apply_serial is apply's bits without the crew."""
    from turbospec.engine.models.gemma4_assistant import _one_vector_product
    from turbospec.engine.weights import INT16_MIN_ELEMENTS

    rng = np.random.default_rng()
    big = (rng.standard_normal((INT16_MIN_ELEMENTS // 640 + 3, 640)) * 0.05).astype(np.float32)
    small = rng.standard_normal((48, 64)).astype(np.float32)
    x, xs = rng.standard_normal(640).astype(np.float32), rng.standard_normal(64).astype(np.float32)
    got = _one_vector_product(big)(x)
    want = big.astype(np.float64) @ x.astype(np.float64)
    # each weight moves by at most half a step of its row's scale (amax / 32767), plus float32 rounding
    bound = 0.5 * (np.abs(big).max(axis=1) / 32767.0) * np.abs(x).sum() + 1e-5 * np.abs(big) @ np.abs(x)
    assert np.all(np.abs(got - want) <= bound)
    assert not np.array_equal(got, big @ x)  # the int16 path did run (float32 BLAS would round elsewhere)
    assert np.array_equal(_one_vector_product(small)(xs), small @ xs)
    lin = RowInt16(*quantize_rows_int16(big))
    xb = rng.standard_normal((3, 640)).astype(np.float32)
    assert np.array_equal(lin.apply_serial(xb), lin.apply(xb))
    try:
        monkeypatch.setenv("TURBOSPEC_NATIVE", "0")
        native.reset()
        assert np.array_equal(_one_vector_product(big)(x), big @ x)
    finally:
        monkeypatch.undo()
        native.reset()


def _cpu_has(flag: str) -> bool:
    return flag in native._cpu_flags().split()


def build_variant(arch, isa, needs, isa_fn):
    """The library built with ``arch`` flags (skipped when a vector ISA is missing here), checked to
    report ``isa`` through ``isa_fn``."""
    if isa != "portable" and not all(_cpu_has(f) for f in needs):
        pytest.skip(f"CPU without {'/'.join(needs)}")
    path, why = native.build(native.compiler(), (arch,))
    assert path is not None, why
    lib = native.open_library(path)
    assert getattr(lib, isa_fn)().decode() == isa
    return lib


@pytest.mark.parametrize("arch,isa", [(None, None), ((), "portable"), (("-mavx2", "-mfma", "-mf16c"), "f16c")])
def test_f16_to_f32_every_pattern(arch, isa):
    """All 65536 half patterns against the table (NumPy's own cast): the same float32 bits for
    every finite value and infinity, a NaN for every NaN; odd lengths (the scalar tail)."""
    from turbospec.engine.kv.codecs import _f16_table

    if arch is None:
        lib = native.library()
    else:
        lib = build_variant(arch, isa, ("avx2", "f16c"), "ts_f16_isa")
    ref = _f16_table()
    nan = np.isnan(ref)
    h = np.random.default_rng().permutation(65536).astype(np.uint16)
    for n in (65536, 65531, 7):
        out = np.full(n, -1.0, np.float32)
        native.f16_to_f32(lib, h[:n], out)
        want = ref[h[:n]]
        fin = ~nan[h[:n]]
        assert np.array_equal(out[fin].view(np.uint32), want[fin].view(np.uint32))
        assert np.isnan(out[~fin]).all()


def test_f16_codec_decodes_natively_and_the_same(monkeypatch):
    from turbospec.engine.kv.codecs import F16Codec

    rng = np.random.default_rng()
    c = F16Codec()
    x = (rng.standard_normal((37, 2, 256)) * rng.uniform(1e-6, 1e3, (37, 1, 1))).astype(np.float32)
    packed = c.encode(x)
    got = c.decode(packed)
    try:
        monkeypatch.setenv("TURBOSPEC_NATIVE", "0")
        native.reset()
        want = c.decode(packed)
    finally:
        monkeypatch.undo()
        native.reset()
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    assert np.array_equal(got, x.astype(np.float16).astype(np.float32))


@pytest.mark.parametrize("arch,isa", [((), "portable"), (("-mavx2", "-mfma"), "avx2")])
def test_vector_builds_agree_with_portable_build(arch, isa):
    """The AVX-512 / AVX2 / portable paths perform one summation order: the same bits."""
    other = build_variant(arch, isa, ("avx2", "fma"), "ts_rowint16_isa")
    lib = native.library()
    rng = np.random.default_rng()
    for k in (640, 75):
        q, s = rand_weights(rng, 300, k)
        x = rng.standard_normal((6, k)).astype(np.float32)
        assert np.array_equal(product(lib, q, s, x), product(other, q, s, x))
        idx = rng.choice(300, 50, replace=False)
        assert np.array_equal(native.rowint16_gather(lib, q, s, idx, x[0]),
                              native.rowint16_gather(other, q, s, idx, x[0]))


def test_disabled_and_missing_compiler_fall_back_to_numpy(monkeypatch, capsys, tmp_path):
    rng = np.random.default_rng()
    q, s = rand_weights(rng, 3000, 64)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    want = RowInt16(q, s).apply(x)
    try:
        monkeypatch.setenv("TURBOSPEC_NATIVE", "0")
        native.reset()
        assert native.library() is None and native.status().describe() == "numpy (TURBOSPEC_NATIVE=0)"
        got = RowInt16(q, s).apply(x)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        assert capsys.readouterr().err == ""  # asked for: nothing to say
        monkeypatch.delenv("TURBOSPEC_NATIVE")
        monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
        monkeypatch.setenv("TURBOSPEC_CACHE_DIR", str(tmp_path / "cache"))
        native.reset()
        assert native.library() is None
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "no-such-cc" in err[0] and "NumPy" in err[0]
        np.testing.assert_allclose(RowInt16(q, s).apply(x), want, rtol=1e-5, atol=1e-5)
    finally:
        monkeypatch.undo()
        native.reset()
    assert native.library() is not None


def test_build_failure_is_one_line(monkeypatch, tmp_path, capsys):
    """A compiler that rejects the source: one line with its error, NumPy products."""
    cc = tmp_path / "cc"
    cc.write_text("#!/bin/sh\nif [ \"$1\" = --version ]; then echo fakecc 1.0; exit 0; fi\n"
                  "echo 'rowint16.c:1: error: this compiler is broken' >&2; exit 1\n")
    cc.chmod(0o755)
    try:
        monkeypatch.setenv("CC", str(cc))
        monkeypatch.setenv("TURBOSPEC_CACHE_DIR", str(tmp_path / "cache"))
        native.reset()
        assert native.library() is None
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "this compiler is broken" in err[0]
    finally:
        monkeypatch.undo()
        native.reset()
