"""The host harness itself: barriers, warp primitives, atomics, shared memory, error reporting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from turbospec.cuda import loader
from turbospec.cuda.emu import harness

SELFTEST = Path(__file__).with_name("selftest.cu")
SIGS = {"barrier_rotate": "p", "warp_ops": "ppp", "partial_mask_and_sum": "pp", "atomics": "ppp",
        "dyn_reverse": "pp", "divergent_barrier": "p", "oob_write": "pi", "half_roundtrip": "pppi",
        "misaligned_load": "pp", "missing_barrier": "p"}


@pytest.fixture(scope="module")
def lib():
    return harness.build(loader.expand(SELFTEST), list(SIGS), tag="selftest")


def run(lib, name, grid, block, *args, smem=0):
    assert harness.signature(lib, name) == SIGS[name]
    harness.launch(lib, name, grid, block, args, SIGS[name], smem)


@pytest.mark.parametrize("block", [(64,), (8, 4, 2), (1024,), (33,)])
def test_barrier_rotate(lib, block):
    n = int(np.prod(block))
    out = np.full(3 * n, -7, np.int32)
    run(lib, "barrier_rotate", (3,), block, out)
    t = np.arange(n)
    exp = np.concatenate([1000 * b + 2 * ((t + 1) % n) for b in range(3)])
    np.testing.assert_array_equal(out, exp)


def test_warp_ops(lib):
    rng = np.random.default_rng()
    n = 64
    x = rng.standard_normal(n).astype(np.float32)
    x[40] = 500.0  # only warp 1 has a value > 100
    out = np.full(n * 4, np.nan, np.float32)
    votes = np.full(6, 0xFFFFFFFF, np.uint32)
    run(lib, "warp_ops", (1,), (n,), x, out, votes)
    lane = np.arange(n) % 32
    base = np.arange(n) - lane
    o = out.reshape(n, 4)
    np.testing.assert_array_equal(o[:, 0], x[base + 31 - lane])
    np.testing.assert_array_equal(o[:, 1], x[base + (lane ^ 5)])
    down = np.where((lane % 16) + 3 < 16, np.arange(n) + 3, np.arange(n))
    np.testing.assert_array_equal(o[:, 2], x[down])
    up = np.where(lane >= 2, np.arange(n) - 2, np.arange(n))
    np.testing.assert_array_equal(o[:, 3], x[up])
    np.testing.assert_array_equal(votes.reshape(2, 3), [[0xAAAAAAAA, 0, 1], [0xAAAAAAAA, 1, 1]])


def test_partial_mask_and_block_sum(lib):
    rng = np.random.default_rng()
    x = rng.standard_normal(2 * 128).astype(np.float32)
    out = np.full(2 * 128 + 2, np.nan, np.float32)
    run(lib, "partial_mask_and_sum", (2,), (128,), x, out)
    i = np.arange(256)
    lane = i % 32
    exp = np.where(lane < 16, x[i ^ 1], x)
    np.testing.assert_array_equal(out[:256], exp)
    # float32 sums in another order differ by about n·eps·sum|x|; a sum that
    # cancels near zero makes a relative bound flaky, so bound by sum|x|
    blocks = x.reshape(2, 128).astype(np.float64)
    tol = 128 * np.finfo(np.float32).eps * np.abs(blocks).sum(1)
    assert np.all(np.abs(out[256:] - blocks.sum(1)) <= tol), (out[256:], blocks.sum(1))


def test_atomics(lib):
    c, f, m = np.zeros(1, np.int32), np.zeros(1, np.float32), np.full(1, -1, np.int32)
    run(lib, "atomics", (5,), (96,), c, f, m)
    assert c[0] == 480 and f[0] == 240.0 and m[0] == 479


def test_dynamic_shared(lib):
    x = np.arange(3 * 96, dtype=np.float32)
    out = np.full_like(x, np.nan)
    run(lib, "dyn_reverse", (3,), (96,), x, out, smem=96 * 4)
    np.testing.assert_array_equal(out, x.reshape(3, 96)[:, ::-1].reshape(-1))


def test_deadlock_reported(lib):
    with pytest.raises(harness.HarnessError, match="deadlock"):
        run(lib, "divergent_barrier", (1,), (64,), np.zeros(64, np.int32))


def test_out_of_bounds_write_reported(lib):
    with pytest.raises(harness.HarnessError, match="out-of-bounds"):
        run(lib, "oob_write", (1,), (32,), np.zeros(10, np.float32), 10)


def test_missing_barrier_exposed(lib):
    """A read of another thread's shared value without __syncthreads must not pass by luck:
    threads run in alternating orders between barriers (forward in block 0, backward in block 1)."""
    exp = (np.arange(64) + 32) % 64 + 1
    for grid in (1, 2):
        out = np.full(64, -1, np.int32)
        run(lib, "missing_barrier", (grid,), (64,), out)
        assert not np.array_equal(out, exp)


def test_misaligned_load_reported(lib):
    with pytest.raises(harness.HarnessError, match="misaligned"):
        run(lib, "misaligned_load", (1,), (32,), np.zeros(8, np.uint8), np.zeros(1, np.float32))


def test_bad_launch_config(lib):
    with pytest.raises(harness.HarnessError, match="threads per block"):
        run(lib, "barrier_rotate", (1,), (2048,), np.zeros(2048, np.int32))


def test_half_conversion_matches_numpy(lib):
    rng = np.random.default_rng()
    x = np.concatenate([
        rng.standard_normal(2000) * 10.0 ** rng.integers(-9, 6, 2000),  # normals, subnormals, overflow
        [0.0, -0.0, 65504.0, 65519.99, 65520.0, 1e-8, 2.0**-25, 2.0**-24 * 1.5, np.inf, -np.inf],
    ]).astype(np.float32)
    # values exactly halfway between two halves: round to even
    hv = np.arange(0, 1024, dtype=np.uint16).view(np.float16).astype(np.float32)
    x = np.concatenate([x, (hv[:-1] + hv[1:]) / 2]).astype(np.float32)
    n = x.size
    h = np.zeros(n, np.uint16)
    back = np.full(n, np.nan, np.float32)
    run(lib, "half_roundtrip", ((n + 127) // 128,), (128,), x, h, back, n)
    with np.errstate(over="ignore"):
        xh = x.astype(np.float16)
    np.testing.assert_array_equal(h, xh.view(np.uint16))
    np.testing.assert_array_equal(back, xh.astype(np.float32))
