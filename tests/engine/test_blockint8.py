"""Block-scaled int8 weights (the GGUF's Q8_0 / Q5_0 / Q4_0 blocks kept as int8 + a float32
scale per 32): the unpacking is bit-exact against both dequantizers, the native kernel matches
the float64 reference and is batch-, slot- and split-invariant, its ISA builds agree bit for bit,
and ``auto`` storage puts such matrices on it (a tiny model's logits stay at the exact weights')."""

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from test_native import build_variant
from tinymodel import Reference

from turbospec.engine import linear, native, weights
from turbospec.engine.gguf import block_int8, dequantize
from turbospec.engine.linear import BlockInt8, RowInt16

needs_native = pytest.mark.skipif(native.library() is None, reason=f"native kernels unavailable: {native.status()}")


@pytest.fixture(autouse=True)
def float_activations(monkeypatch):
    """These tests are about the float-activation kernel (ts_blockint8_matmul); the int8 one has
    its own (test_q8act.py)."""
    monkeypatch.setattr(linear, "ACT_INT8", False)


def quantized(rng, rows, k, qtype):
    w = (rng.standard_normal((rows, k)) * rng.uniform(0.01, 2.0, (rows, 1))).astype(np.float32)
    return gguf.quants.quantize(w, qtype)


def raw_blocks(rng, rows, k, qtype):
    """Quantized rows: gguf's own quantizer where it has one, else random bytes with finite f16
    scales (every byte pattern is a valid K-quant block)."""
    if qtype in (Q.Q8_0, Q.Q5_0, Q.Q4_0):
        return quantized(rng, rows, k, qtype)
    bs, ts = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, (rows, k // bs, ts), dtype=np.uint8)
    f16 = lambda n: (rng.standard_normal(n) * 0.01).astype(np.float16).view(np.uint8).reshape(-1, 2)  # noqa: E731
    if qtype == Q.Q4_K:  # d, dmin first
        raw[..., 0:2] = f16(rows * k // bs).reshape(rows, k // bs, 2)
        raw[..., 2:4] = f16(rows * k // bs).reshape(rows, k // bs, 2)
    else:  # Q6_K: d last
        raw[..., ts - 2 : ts] = f16(rows * k // bs).reshape(rows, k // bs, 2)
    return raw.reshape(rows, -1)


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q5_0, Q.Q4_0, Q.Q4_K, Q.Q6_K])
def test_unpacking_is_exact(qtype):
    rng = np.random.default_rng()
    k = 512
    raw = raw_blocks(rng, 37, k, qtype)
    q, d, m = block_int8(raw, int(qtype), (37, k))
    G = 16 if qtype == Q.Q6_K else 32
    assert q.dtype == np.int8 and d.dtype == np.float32 and d.shape == (37, k // G)
    assert (m is not None) == (qtype == Q.Q4_K)
    lin = BlockInt8(q, d, m)
    w = lin.dense()
    want = gguf.quants.dequantize(raw, qtype).reshape(37, k).astype(np.float32)
    assert np.array_equal(w.view(np.uint32), want.view(np.uint32))
    assert np.array_equal(w, dequantize(raw, int(qtype), (37, k)))
    idx = rng.integers(0, 37, (4, 5))
    assert np.array_equal(lin.rows(idx), want[idx])


def test_default_model_tensors_unpack_exactly(default_model_path):
    from turbospec.engine.gguf import GGUFFile

    g = GGUFFile.open(default_model_path)
    seen = set()
    for name in ("token_embd.weight", "blk.0.attn_q.weight", "blk.0.attn_output.weight", "blk.0.ffn_down.weight",
                 "blk.1.ffn_down.weight", "blk.0.attn_v.weight", "blk.1.attn_v.weight"):
        t = g.info(name)
        rows = slice(0, 64)
        q, d, m = block_int8(g.raw(name)[rows], t.type_id, (64, t.shape[1]))
        assert np.array_equal(BlockInt8(q, d, m).dense(), g.dequantize(name, rows)), name
        seen.add(t.type_id)
    assert seen >= {int(Q.Q8_0), int(Q.Q5_0), int(Q.Q4_K)}, seen


def rand_block(rng, rows, k, G=32, with_min=False):
    q = rng.integers(-128, 128, (rows, k), dtype=np.int8)
    d = (rng.uniform(1e-4, 1e-2, (rows, k // G)) * rng.choice([-1, 1], (rows, k // G))).astype(np.float32)
    m = rng.uniform(-0.1, 0.1, (rows, k // G)).astype(np.float32) if with_min else None
    return q, d, m


def product(lib, q, d, m, x, splits=None):
    out = np.full((x.shape[0], q.shape[0]), np.nan, np.float32)
    for r0, r1 in splits or [(0, q.shape[0])]:
        native.blockint8_matmul(lib, q, d, m, np.ascontiguousarray(x), out, r0, r1)
    return out


LAYOUTS = [(32, False), (32, True), (16, False), (16, True)]


@needs_native
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("k", [640, 2048, 32, 96])
def test_kernel_matches_reference(k, layout):
    rng = np.random.default_rng()
    lib = native.library()
    q, d, m = rand_block(rng, 45, k, *layout)
    ref_w = BlockInt8(q, d, m).dense().astype(np.float64)
    for t in (1, 2, 3, 4, 5, 8, 9, 32):
        x = rng.standard_normal((t, k)).astype(np.float32)
        got = product(lib, q, d, m, x)
        want = x.astype(np.float64) @ ref_w.T
        # one rounding per chunk FMA and per tree level (the weights themselves are exact)
        bound = (k // 16 + 6) * 2.0**-24 * (np.abs(x).astype(np.float64) @ np.abs(ref_w).T)
        assert np.all(np.abs(got - want) <= bound), (k, t)


@needs_native
@pytest.mark.parametrize("layout", LAYOUTS)
def test_batch_slot_and_split_invariance(layout):
    rng = np.random.default_rng()
    lib = native.library()
    q, d, m = rand_block(rng, 61, 192, *layout)
    x = rng.standard_normal((9, 192)).astype(np.float32)
    alone = [product(lib, q, d, m, x[r : r + 1])[0] for r in range(9)]
    for t in range(1, 10):
        batch = product(lib, q, d, m, x[:t], splits=[(0, 7), (7, 8), (8, 61)])
        for r in range(t):
            assert np.array_equal(batch[r], alone[r]), (t, r)
            other = rng.standard_normal((t, 192)).astype(np.float32)
            slot = int(rng.integers(t))
            other[slot] = x[r]
            assert np.array_equal(product(lib, q, d, m, other)[slot], alone[r]), (t, r, slot)


@needs_native
@pytest.mark.parametrize("layout", LAYOUTS)
def test_gather_and_apply(monkeypatch, layout):
    """The routed-head gather gives the matmul's bits for those rows; apply through the crew
    equals its tokens one by one for any worker count; the NumPy fallback agrees to rounding."""
    rng = np.random.default_rng()
    lib = native.library()
    q, d, m = rand_block(rng, 3000, 640, *layout)
    lin = BlockInt8(q, d, m)
    assert lin._native_ok
    h = rng.standard_normal(640).astype(np.float32)
    idx = rng.choice(3000, 700, replace=False)
    assert np.array_equal(native.blockint8_gather(lib, q, d, m, idx, h), product(lib, q, d, m, h[None])[0][idx])
    assert np.array_equal(lin.score_rows(idx, h), product(lib, q, d, m, h[None])[0][idx])
    want = None
    for workers in (1, 2, 3):
        monkeypatch.setattr(linear, "_N_WORKERS", workers)
        x = rng.standard_normal((6, 640)).astype(np.float32)
        batch = lin.apply(x)
        for r in range(6):
            assert np.array_equal(batch[r], lin.apply(x[r : r + 1])[0])
        assert np.array_equal(lin.apply_serial(x), batch)
        want = x.astype(np.float64) @ lin.dense().astype(np.float64).T
        np.testing.assert_allclose(batch, want, rtol=1e-4, atol=1e-4)
    try:
        monkeypatch.setenv("TURBOSPEC_NATIVE", "0")
        native.reset()
        np.testing.assert_allclose(lin.apply(x), want, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(lin.score_rows(idx, h), lin.dense()[idx] @ h, rtol=1e-4, atol=1e-4)
    finally:
        monkeypatch.undo()
        native.reset()


@needs_native
@pytest.mark.parametrize("arch,isa", [((), "portable"), (("-mavx2", "-mfma"), "avx2")])
def test_vector_builds_agree_with_portable_build(arch, isa):
    other = build_variant(arch, isa, ("avx2", "fma"), "ts_rowint16_isa")
    lib = native.library()
    rng = np.random.default_rng()
    for layout in LAYOUTS:
        q, d, m = rand_block(rng, 300, 640, *layout)
        x = rng.standard_normal((6, 640)).astype(np.float32)
        assert np.array_equal(product(lib, q, d, m, x), product(other, q, d, m, x))
        idx = rng.choice(300, 50, replace=False)
        g = native.blockint8_gather
        assert np.array_equal(g(lib, q, d, m, idx, x[0]), g(other, q, d, m, idx, x[0]))


def test_auto_storage_uses_the_blocks(tiny_gguf, monkeypatch, tmp_path):
    """With the size threshold lowered, the tiny model's Q8_0 head becomes BlockInt8 (mixed-type
    fused matrices stay int16); its logits are the exact weights' (f32 storage) to float32
    rounding, closer than int16 storage gets, and a cached start loads the same arrays back."""
    from turbospec.engine.loader import load_model

    monkeypatch.setattr(weights, "INT16_MIN_ELEMENTS", 1 << 10)
    monkeypatch.setenv("TURBOSPEC_CACHE_DIR", str(tmp_path))
    m = load_model(tiny_gguf, quiet=True)
    assert isinstance(m.output, BlockInt8)
    assert isinstance(m.blk[0].attn_qkv, RowInt16)  # F16 q + Q8_0 k + F32 v: not all blocks
    exact = load_model(tiny_gguf, storage="f32", quiet=True)
    toks = [2, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110]
    got, _ = m.forward(toks, m.new_cache(), logits_rows="all")
    want, _ = Reference(tiny_gguf).forward(toks)
    assert float(np.max(np.abs(got - want)) / np.max(np.abs(want))) < 2e-3
    np.testing.assert_allclose(m.output.apply(np.ones((1, 64), np.float32)),
                               exact.output.apply(np.ones((1, 64), np.float32)), rtol=1e-5, atol=1e-5)
    again = load_model(tiny_gguf, quiet=True)
    assert isinstance(again.output, BlockInt8) and isinstance(again.output.q, np.ndarray)
    assert np.array_equal(again.output.q, m.output.q) and np.array_equal(again.output.d, m.output.d)


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q5_0, Q.Q4_0])
def test_exact_block_detection(qtype):
    """A matrix dequantized from Q8_0 / Q5_0 / Q4_0 is recovered as blocks that reproduce it bit
    for bit (the assistant's q8_0 matrices take this path); a float matrix is not."""
    from turbospec.engine.linear import block_int8_exact

    rng = np.random.default_rng()
    w = gguf.quants.dequantize(quantized(rng, 40, 128, qtype), qtype).reshape(40, 128).astype(np.float32)
    w[3, :32] = 0.0  # an all-zero block
    got = block_int8_exact(w)
    assert got is not None
    assert np.array_equal(BlockInt8(*got).dense(), w)
    assert block_int8_exact(rng.standard_normal((8, 64)).astype(np.float32)) is None
    assert block_int8_exact(w[:, :100]) is None  # not whole blocks


@needs_native
def test_assistant_q8_matrices_run_as_blocks():
    from turbospec.engine.models.gemma4_assistant import _one_vector_product
    from turbospec.engine.weights import INT16_MIN_ELEMENTS

    rng = np.random.default_rng()
    rows = INT16_MIN_ELEMENTS // 640 + 3
    w = gguf.quants.dequantize(quantized(rng, rows, 640, Q.Q8_0), Q.Q8_0).reshape(rows, 640).astype(np.float32)
    x = rng.standard_normal(640).astype(np.float32)
    got = _one_vector_product(w)(x)
    from turbospec.engine.linear import block_int8_exact

    q, d = block_int8_exact(w)
    lib = native.library()
    assert np.array_equal(got, product(lib, q, d, None, x[None])[0])


def test_interrupted_cache_write_never_loads_without_the_minimum(monkeypatch, tmp_path):
    """A first start killed between the files of a Q4_K entry: the next start rebuilds it rather
    than loading q8/d8 without m8 (which would silently drop every minimum)."""
    from turbospec.engine.gguf import GGUFFile

    monkeypatch.setenv("TURBOSPEC_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(weights, "INT16_MIN_ELEMENTS", 1 << 10)
    rng = np.random.default_rng()
    path = tmp_path / "q4k.gguf"
    w = gguf.GGUFWriter(str(path), "gemma3")
    raw = raw_blocks(rng, 8, 512, Q.Q4_K)
    w.add_tensor("a.weight", raw, raw_shape=raw.shape, raw_dtype=Q.Q4_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    store = weights.WeightStore(GGUFFile.open(path))
    arrays = store._build(weights.Entry("e", ("a.weight",), "linear"))
    m = arrays["m8"]
    assert np.array_equal(BlockInt8(arrays["q8"], arrays["d8"], m).dense(), gguf.quants.dequantize(raw, Q.Q4_K))
    written = []
    real_save = np.save

    def dying_save(path, a):
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(path)
        real_save(path, a)

    monkeypatch.setattr(np, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        store._save("e", arrays)
    monkeypatch.setattr(np, "save", real_save)
    assert store._load_cached("e") is None
    store._save("e", arrays)
    got = store._load_cached("e")
    assert set(got) == {"q8", "d8", "m8"} and np.array_equal(got["m8"], m)
