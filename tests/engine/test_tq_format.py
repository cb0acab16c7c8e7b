"""TQ3_1S / TQ4_1S reference: rotation, packing, hand-computed blocks, error level."""

from __future__ import annotations

import numpy as np
import pytest

from turbospec.engine.quant import tq_reference as ref
from turbospec.engine.quant.tq_format import (
    BOOK_TQ3,
    BOOK_TQ4,
    INV_SQRT32,
    MIDS_TQ3,
    MIDS_TQ4,
    TQ3_1S,
    TQ4_1S,
    TQ_TYPES,
    row_bytes,
    spec,
)

TYPES = [TQ3_1S, TQ4_1S]


def test_type_table_matches_specs():
    assert TQ_TYPES == {45: ("TQ3_1S", 32, 16), 46: ("TQ4_1S", 32, 20)}
    for t, (name, _qk, nbytes) in TQ_TYPES.items():
        assert spec(t).name == name and spec(t).block_bytes == nbytes and 4 + spec(t).qs_bytes == nbytes
    assert row_bytes(TQ4_1S, 640) == 20 * 20
    with pytest.raises(ValueError):
        row_bytes(TQ3_1S, 100)


def test_thresholds_are_the_books_midpoints():
    for book, mids in ((BOOK_TQ3, MIDS_TQ3), (BOOK_TQ4, MIDS_TQ4)):
        assert np.all(np.diff(book) > 0)
        true = (book[1:].astype(np.float64) + book[:-1]) / 2
        assert np.max(np.abs(true - mids)) < 1e-6


def test_rotation_is_orthonormal_and_inverted():
    eye = np.eye(32, dtype=np.float32)
    r = np.stack([ref.rotate_block(e) for e in eye], axis=1)  # column k = R e_k
    np.testing.assert_allclose(r.T @ r, np.eye(32), atol=1e-6)
    # entries are ±1/sqrt(32): a signed Hadamard matrix
    np.testing.assert_allclose(np.abs(r), 1 / np.sqrt(32), rtol=1e-6)
    x = np.random.default_rng(0).standard_normal(32).astype(np.float32)
    np.testing.assert_allclose(ref.unrotate_block(ref.rotate_block(x)), x, atol=1e-6)
    # R e_0 = s_0 / sqrt(32) * (1, ..., 1), s_0 = +1
    np.testing.assert_array_equal(ref.rotate_block(eye[0]), np.full(32, INV_SQRT32, np.float32))


@pytest.mark.parametrize("type_id", TYPES)
def test_packing_round_trip(type_id):
    rng = np.random.default_rng(type_id)
    n_levels = 2 ** spec(type_id).bits
    for _ in range(50):
        idx = [int(v) for v in rng.integers(0, n_levels, 32)]
        qs = ref.pack_indices(idx, type_id)
        assert len(qs) == spec(type_id).qs_bytes
        assert ref.unpack_indices(qs, type_id) == idx


def test_tq3_packing_bit_positions():
    # index i of group g at bits 3i..3i+2 of the little-endian 24-bit word of bytes 3g..3g+2
    idx = [0] * 32
    idx[2] = 7  # bits 6..8 of group 0: byte0 bits 6,7 and byte1 bit 0
    idx[8 + 5] = 5  # bits 15..17 of group 1: 0b101 -> byte 4 bit 7 and byte 5 bit 1
    qs = ref.pack_indices(idx, TQ3_1S)
    assert qs[0] == 0b1100_0000 and qs[1] == 0b0000_0001 and qs[2] == 0
    assert qs[3] == 0 and qs[4] == 0b1000_0000 and qs[5] == 0b0000_0010
    assert qs[6:] == bytes(6)


def test_tq4_packing_nibble_order():
    idx = list(range(16)) + list(range(15, -1, -1))
    qs = ref.pack_indices(idx, TQ4_1S)
    assert qs[0] == 0x10 and qs[1] == 0x32 and qs[7] == 0xFE and qs[8] == 0xEF


# Hand-computed: x = e_0 rotates to the constant 1/sqrt(32) in all 32 slots. Every element then
# asks for the centroid nearest 1/m on the grid; the winners (worked out by hand in the notes of
# this test) are m = 0.8 -> 1.256231 (TQ4, index 12) and m = 1.35 -> 0.725222 (TQ3, index 5), with
# squared relative errors 2.5e-5 and 4.4e-4; refinement then sets d = (1/sqrt(32)) / c exactly
# and keeps the index.
@pytest.mark.parametrize("type_id, index, c", [(TQ4_1S, 12, 1.256231), (TQ3_1S, 5, 0.725222)])
def test_hand_computed_unit_vector_block(type_id, index, c):
    x = np.zeros(32, np.float32)
    x[0] = 1.0
    d0, d1, idx = ref.quantize_block(x, type_id)
    assert idx == [index] * 32
    expect = np.float16(INV_SQRT32 / np.float32(c))
    assert d0 == expect and d1 == expect
    block = ref.encode_block(x, type_id)
    if type_id == TQ4_1S:
        assert block[4:] == bytes([0xCC] * 16)
    else:
        word = sum(5 << (3 * i) for i in range(8))
        assert block[4:] == bytes([word & 0xFF, (word >> 8) & 0xFF, word >> 16] * 4)
    y = ref.decode_block(block, type_id)
    assert abs(y[0] - 1.0) < 2e-3 and np.max(np.abs(y[1:])) < 1e-6


def test_zero_half_stores_zero():
    x = np.random.default_rng(3).standard_normal(32).astype(np.float32)
    # a block whose rotated second half is zero: unrotate a vector with zeros in slots 16..31
    y = x.copy()
    y[16:] = 0
    xb = ref.unrotate_block(y)
    for t in TYPES:
        d0, d1, _ = ref.quantize_block(np.zeros(32, np.float32), t)
        assert d0 == 0 and d1 == 0
        d0, d1, _ = ref.quantize_block(xb, t)
        assert d0 > 0 and abs(float(d1)) < 1e-6


def test_reference_error_on_gaussian_rows():
    x = np.random.default_rng(5).standard_normal((8, 256)).astype(np.float32)
    for t, bound in ((TQ3_1S, 0.035), (TQ4_1S, 0.0095)):
        y = ref.dequantize_ref(ref.quantize_ref(x, t), t, x.shape)
        assert np.sum((y - x) ** 2) / np.sum(x**2) < bound
