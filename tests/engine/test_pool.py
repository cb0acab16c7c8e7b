"""The C thread pool (engine/native/pool.c): a product split over n threads in one call gives the
serial kernel's bits for every kernel, thread count and shape (rows not a multiple of 16, fewer
rows than threads); two Python threads calling at once both get their own correct result (the
second runs alone); a forked child starts its own helpers; resizing stops and restarts them;
arguments the kernel rejects raise instead of leaving the output half written."""

import multiprocessing as mp
import threading

import numpy as np
import pytest

from turbospec.engine import linear, native
from turbospec.engine.linear import BlockInt8, q8act_reference, quantize_rows_int16

needs_native = pytest.mark.skipif(native.library() is None, reason=f"native kernels unavailable: {native.status()}")


@pytest.fixture(autouse=True)
def _restore_workers():
    n = linear.n_workers()
    yield
    linear.set_workers(n)


SHAPES = [(1536, 640, 32, False), (640, 1024, 32, True), (1000, 2048, 16, True), (17, 64, 32, False),
          (5, 96, 16, True)]


def block(rng, R, K, G, with_min):
    q = rng.integers(-128, 128, (R, K), dtype=np.int8)
    d = rng.uniform(1e-3, 1e-2, (R, K // G)).astype(np.float32)
    m = rng.uniform(-0.1, 0.1, (R, K // G)).astype(np.float32) if with_min else None
    return q, d, m


def serial(lib, kind, q, d, m, x, qv=None):
    out = np.full((x.shape[0], q.shape[0]), np.nan, np.float32)
    if kind == "q8act":
        native.q8act_matmul(lib, qv, d, m, x, out, 0, q.shape[0])
    elif kind == "blockint8":
        native.blockint8_matmul(lib, q, d, m, x, out, 0, q.shape[0])
    else:
        native.rowint16_matmul(lib, q, d, x, out, 0, q.shape[0])
    return out


@needs_native
@pytest.mark.parametrize("threads", [1, 2, 3, 4, 7])
def test_pool_equals_serial_kernels(threads):
    lib = native.library()
    rng = np.random.default_rng()
    for R, K, G, with_min in SHAPES:
        q, d, m = block(rng, R, K, G, with_min)
        qv = native.q8act_layout(lib, q, G)
        qi, si = quantize_rows_int16(rng.standard_normal((R, K)).astype(np.float32))
        for T in (1, 2, 5, 32):
            x = rng.standard_normal((T, K)).astype(np.float32)
            for kind, a, b, c in (("q8act", qv, d, m), ("blockint8", q, d, m), ("rowint16", qi, si, None)):
                out = np.full((T, R), np.nan, np.float32)
                native.pool_matmul(lib, kind, a, b, c, x, out, threads)
                want = serial(lib, kind, q if kind != "rowint16" else qi, b, c, x, qv)
                assert np.array_equal(out, want), (kind, threads, R, K, T)


@needs_native
def test_apply_takes_the_pool_and_keeps_the_reference_bits(monkeypatch):
    rng = np.random.default_rng()
    q, d, m = block(rng, 3000, 640, 32, True)
    x = rng.standard_normal((4, 640)).astype(np.float32)
    calls = []
    real = native.pool_matmul
    monkeypatch.setattr(native, "pool_matmul", lambda *a: (calls.append(a[1]), real(*a)))
    for n in (2, 3, 2):
        linear.set_workers(n)
        assert np.array_equal(BlockInt8(q, d, m).apply(x), q8act_reference(q, d, m, x))
    assert calls == ["q8act"] * 3
    monkeypatch.setattr(linear, "POOL", False)  # the Python crew: the same bits
    assert np.array_equal(BlockInt8(q, d, m).apply(x), q8act_reference(q, d, m, x))
    assert len(calls) == 3


@needs_native
def test_two_callers_at_once():
    lib = native.library()
    linear.set_workers(2)
    rng = np.random.default_rng()
    mats = [block(rng, 4096, 640, 32, False) for _ in range(2)]
    xs = [rng.standard_normal((3, 640)).astype(np.float32) for _ in range(2)]
    wants = [q8act_reference(q, d, m, x) for (q, d, m), x in zip(mats, xs, strict=True)]
    lins = [BlockInt8(*mm) for mm in mats]
    bad = []

    def work(i):
        for _ in range(60):
            if not np.array_equal(lins[i].apply(xs[i]), wants[i]):
                bad.append(i)

    th = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    assert not bad
    assert lib.ts_pool_threads() == 2


def _child(q):
    rng = np.random.default_rng(5)
    qq, d, m = block(rng, 2048, 640, 32, True)
    x = rng.standard_normal((2, 640)).astype(np.float32)
    linear.set_workers(2)
    q.put(bool(np.array_equal(BlockInt8(qq, d, m).apply(x), q8act_reference(qq, d, m, x))))


@needs_native
def test_forked_child_starts_its_own_helpers():
    rng = np.random.default_rng()
    q, d, m = block(rng, 2048, 640, 32, False)
    x = rng.standard_normal((1, 640)).astype(np.float32)
    linear.set_workers(2)
    BlockInt8(q, d, m).apply(x)  # the parent's helpers are running
    ctx = mp.get_context("fork")
    res = ctx.Queue()
    p = ctx.Process(target=_child, args=(res,))
    p.start()
    p.join(60)
    assert p.exitcode == 0 and res.get(timeout=5) is True


@needs_native
def test_rejected_arguments_raise():
    lib = native.library()
    rng = np.random.default_rng()
    q, d, m = block(rng, 256, 640, 32, False)
    qv = native.q8act_layout(lib, q, 32)
    x = rng.standard_normal((33, 640)).astype(np.float32)  # more tokens than the kernels take
    out = np.empty((33, 256), np.float32)
    for kind, a in (("q8act", qv), ("blockint8", q)):
        with pytest.raises(ValueError, match="pool"):
            native.pool_matmul(lib, kind, a, d, m, x, out, 2)
