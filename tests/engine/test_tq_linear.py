"""TQLinear (matvec / matmul from TQ blocks) against dequantize-then-matmul."""

from __future__ import annotations

import secrets

import numpy as np
import pytest

from turbospec.engine.quant import tq
from turbospec.engine.quant import tq_reference as ref
from turbospec.engine.quant.linear import TQLinear, decode_rotated_rows
from turbospec.engine.quant.tq_format import TQ3_1S, TQ4_1S

TYPES = [TQ3_1S, TQ4_1S]


@pytest.mark.parametrize("type_id", TYPES)
@pytest.mark.parametrize("lead", [(), (1,), (5,), (2, 3)])
def test_apply_equals_dequantize_then_matmul(type_id, lead):
    seed = secrets.randbits(32)
    rng = np.random.default_rng(seed)
    n_out, n_in = 70, 96  # out not a multiple of the tile; three blocks per row
    w = rng.standard_normal((n_out, n_in)).astype(np.float32)
    raw = tq.quantize(w, type_id)
    lin = TQLinear(raw, type_id, (n_out, n_in), tile_bytes=16 * 4 * n_in)  # 16-row tiles
    x = rng.standard_normal((*lead, n_in)).astype(np.float32)
    wd = ref.dequantize_ref(raw, type_id, (n_out, n_in))
    want = x.astype(np.float64) @ wd.T.astype(np.float64)
    got = lin.apply(x)
    assert got.shape == (*lead, n_out) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max(), err_msg=f"seed {seed}")


@pytest.mark.parametrize("type_id", TYPES)
def test_decoded_rows_are_the_rotated_weights(type_id):
    seed = secrets.randbits(32)
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((4, 64)).astype(np.float32)
    raw = tq.quantize(w, type_id)
    deq = tq.dequantize(raw, type_id, w.shape)
    np.testing.assert_allclose(decode_rotated_rows(raw, type_id), tq.rotate(deq), atol=1e-5, err_msg=f"{seed}")


def test_shape_checks():
    raw = tq.quantize(np.ones((4, 64), np.float32), TQ4_1S)
    with pytest.raises(ValueError):
        TQLinear(raw, TQ4_1S, (4, 96))
    with pytest.raises(ValueError):
        TQLinear(raw, TQ3_1S, (4, 64))
    lin = TQLinear(raw, TQ4_1S, (4, 64))
    assert lin.nbytes == 4 * 2 * 20
    with pytest.raises(ValueError):
        lin.apply(np.ones(32, np.float32))
    np.testing.assert_array_equal(lin.dequantize(), tq.dequantize(raw, TQ4_1S, (4, 64)))


@pytest.mark.parametrize("workers", [1, 3])
def test_threaded_apply_and_rows(workers):
    seed = secrets.randbits(32)
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((100, 64)).astype(np.float32)
    raw = tq.quantize(w, TQ3_1S)
    lin = TQLinear(raw, TQ3_1S, w.shape, tile_bytes=8 * 4 * 64, workers=workers)
    x = rng.standard_normal((4, 64)).astype(np.float32)
    wd = tq.dequantize(raw, TQ3_1S, w.shape)
    np.testing.assert_allclose(lin.apply(x), x @ wd.T, rtol=1e-4, atol=1e-4, err_msg=f"seed {seed}")
    idx = np.array([5, 0, 99, 5])
    np.testing.assert_array_equal(lin.rows(idx), wd[idx])
