"""The vectorised TQ3_1S / TQ4_1S code against the plain reference, on fresh random inputs."""

from __future__ import annotations

import secrets

import numpy as np
import pytest

from turbospec.engine.quant import tq
from turbospec.engine.quant import tq_reference as ref
from turbospec.engine.quant.tq_format import TQ3_1S, TQ4_1S, spec

TYPES = [TQ3_1S, TQ4_1S]


def _fresh() -> tuple[int, np.random.Generator]:
    seed = secrets.randbits(32)
    return seed, np.random.default_rng(seed)


def _awkward_rows(rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal((12, 128)).astype(np.float32)
    x *= rng.choice([1e-3, 1.0, 40.0], size=(12, 1)).astype(np.float32)  # row scales
    x[0, :32] = 0  # zero block
    x[1, 32:48] = 0  # zero first half (in the original domain)
    x[2, :32] *= np.float32(1e-12)  # scales below the 1e-10 cut-off
    x[3, 64:96] = rng.standard_t(2, 32)  # heavy tails
    x[4, :] = np.round(x[4, :])  # ties and repeats
    x[5, :32] = np.float32(0.5)  # constant block
    x[6, :32] *= np.float32(1e20)  # squares overflow float32
    x[7, 5] = np.nan
    x[8, 40] = np.inf
    return x


@pytest.mark.parametrize("type_id", TYPES)
def test_quantize_bytes_equal_reference(type_id):
    seed, rng = _fresh()
    x = _awkward_rows(rng)
    with np.errstate(all="ignore"):
        want = ref.quantize_ref(x, type_id)
    got = tq.quantize(x, type_id)
    assert got.shape == want.shape == (12, 4 * spec(type_id).block_bytes)
    bad = np.flatnonzero((got != want).any(axis=1))
    assert bad.size == 0, f"seed {seed}: rows {bad.tolist()} differ"


@pytest.mark.parametrize("type_id", TYPES)
def test_dequantize_equals_reference(type_id):
    seed, rng = _fresh()
    x = rng.standard_normal((6, 96)).astype(np.float32)
    raw = tq.quantize(x, type_id)
    np.testing.assert_array_equal(
        tq.dequantize(raw, type_id, x.shape), ref.dequantize_ref(raw, type_id, x.shape), err_msg=f"seed {seed}"
    )
    # random bytes too (any index pattern and scale is a valid block)
    junk = rng.integers(0, 256, (5, spec(type_id).block_bytes), dtype=np.uint8)
    junk[:, 1] &= 0x3B  # keep f16 scales finite
    junk[:, 3] &= 0x3B
    np.testing.assert_array_equal(
        tq.dequantize(junk, type_id, (5, 32)), ref.dequantize_ref(junk, type_id, (5, 32)), err_msg=f"seed {seed}"
    )


def test_rotation_equals_reference():
    seed, rng = _fresh()
    x = rng.standard_normal((7, 32)).astype(np.float32)
    np.testing.assert_array_equal(tq.rotate(x), np.stack([ref.rotate_block(r) for r in x]), err_msg=f"{seed}")
    np.testing.assert_array_equal(tq.unrotate(x), np.stack([ref.unrotate_block(r) for r in x]), err_msg=f"{seed}")


@pytest.mark.parametrize("type_id", TYPES)
def test_fast_assignment_equals_binary_search(type_id):
    seed, rng = _fresh()
    mids = spec(type_id).mids
    near = np.concatenate([mids, np.nextafter(mids, np.float32(np.inf)), np.nextafter(mids, np.float32(-np.inf))])
    v = np.concatenate(
        [
            near,
            rng.standard_normal(100_000).astype(np.float32) * np.float32(2.5),
            np.float32([0.0, -0.0, 1e30, -1e30, 1e6, -1e6, np.inf, -np.inf]),
        ]
    )
    got = tq._ASSIGN[type_id](v)
    np.testing.assert_array_equal(got, np.searchsorted(mids, v, side="right"), err_msg=f"seed {seed}")


@pytest.mark.parametrize("type_id", TYPES)
def test_unpack_and_pack_round_trip(type_id):
    seed, rng = _fresh()
    n = 64
    idx = rng.integers(0, 2 ** spec(type_id).bits, (32, n)).astype(np.uint8)
    d = rng.standard_normal((2, n)).astype(np.float16)
    blocks = tq.pack(d[0], d[1], idx, type_id)
    np.testing.assert_array_equal(tq.unpack_indices(blocks, type_id), idx.T, err_msg=f"seed {seed}")
    np.testing.assert_array_equal(tq.scales(blocks), d.T.astype(np.float32))
    for k in range(3):
        assert ref.unpack_indices(blocks[k, 4:].tobytes(), type_id) == idx[:, k].tolist()


@pytest.mark.parametrize("type_id, fork_bound, search_bound", [(TQ3_1S, 0.035, 0.0245), (TQ4_1S, 0.0095, 0.0058)])
def test_relative_mse_on_gaussian_rows(type_id, fork_bound, search_bound):
    # The fork's fixed-scale quantizer measures 0.035 / 0.0095; its scale search about 0.023 / 0.0053.
    x = np.random.default_rng(7).standard_normal((256, 1024)).astype(np.float32)
    y = tq.dequantize(tq.quantize(x, type_id), type_id, x.shape)
    rel = float(np.sum((y - x) ** 2) / np.sum(x**2))
    assert rel <= fork_bound
    assert rel <= search_bound


def test_quantize_rejects_ragged_rows_and_reports_progress():
    with pytest.raises(ValueError):
        tq.quantize(np.zeros((2, 48), np.float32), TQ4_1S)
    seen: list[int] = []
    tq.quantize(np.zeros((3, 64), np.float32), TQ3_1S, progress=seen.append)
    assert sum(seen) == 192
    with pytest.raises(ValueError):
        tq.dequantize(np.zeros((2, 20), np.uint8), TQ4_1S, (3, 32))


def test_threaded_quantize_equals_single_thread(monkeypatch):
    seed, rng = _fresh()
    monkeypatch.setattr(tq, "CHUNK_BLOCKS", 7)  # many chunks, a ragged last one
    x = rng.standard_normal((9, 160)).astype(np.float32)
    seen: list[int] = []
    one = tq.quantize(x, TQ4_1S, workers=1)
    many = tq.quantize(x, TQ4_1S, progress=seen.append, workers=3)
    np.testing.assert_array_equal(one, many, err_msg=f"seed {seed}")
    assert sum(seen) == x.size and len(seen) == -(-45 // 7)
