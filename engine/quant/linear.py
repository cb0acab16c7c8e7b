"""Matvec / matmul straight from TQ3_1S / TQ4_1S blocks, with no float copy of the weights.

A block stores w_b = R^T (c[idx] ⊙ d) with R the orthogonal per-block rotation, so
``<w_b, x_b> = <c[idx] ⊙ d, R x_b>``: the activation is rotated once per 32-block, and each row
tile is decoded in the rotated domain only (codebook lookup × half-block scale, no inverse
rotation) into a scratch tile of about ``tile_bytes`` that lives for one BLAS call.

Napkin math per token (T = 1): reads 0.5 / 0.625 bytes per weight (TQ3 / TQ4), writes and reads
4 bytes of scratch per weight (in cache), 2 FLOPs per weight; the decode (one table lookup per
3 or 2 indices, one multiply) dominates, so a batch of T tokens costs little more than one.
"""

from __future__ import annotations

import numpy as np

from turbospec.engine.linear import n_workers, run_ranges

from .tq import dequantize, rotate
from .tq_format import HALF, row_bytes, spec

DEFAULT_TILE_BYTES = 1 << 20  # float32 scratch per tile (per worker)


def _byte_tables(type_id: int) -> np.ndarray:
    """TQ4: [256, 2] centroids of a byte's low and high nibble. TQ3: [4096, 4] centroids of the four
    3-bit indices in a 12-bit half of a group's 24-bit word (index i at bits 3i..3i+2)."""
    sp = spec(type_id)
    if sp.bits == 4:
        b = np.arange(256)
        return np.stack([sp.book[b & 15], sp.book[b >> 4]], axis=1).astype(np.float32)
    w = np.arange(4096)
    return np.stack([sp.book[(w >> (3 * i)) & 7] for i in range(4)], axis=1).astype(np.float32)


_TABLES = {t: _byte_tables(t) for t in (45, 46)}


def decode_rotated_rows(raw_rows: np.ndarray, type_id: int) -> np.ndarray:
    """uint8 [r, row_bytes] -> float32 [r, n] of c[idx] * d (rotated domain, unrotated never)."""
    sp = spec(type_id)
    r = raw_rows.shape[0]
    blocks = raw_rows.reshape(-1, sp.block_bytes)
    n = blocks.shape[0]
    table = _TABLES[type_id]
    # (take, not fancy indexing: ~10x faster for a table this small)
    if sp.bits == 4:
        vals = table.take(blocks[:, 4:], axis=0)  # [n, 16, 2] -> elements 2k, 2k+1
    else:
        g = blocks[:, 4:].reshape(n, 4, 3).astype(np.uint32)
        word = g[..., 0] | (g[..., 1] << 8) | (g[..., 2] << 16)  # [n, 4]
        halves = np.stack([word & 0xFFF, word >> 12], axis=2)  # [n, 4, 2]
        vals = table.take(halves, axis=0)  # [n, 4, 2, 4]
    d = np.ascontiguousarray(blocks[:, :4]).view("<f2").astype(np.float32)  # [n, 2]
    vals = vals.reshape(n, 2, HALF)
    vals *= d[:, :, None]
    return vals.reshape(r, -1)


def _split_blocks(raw_rows: np.ndarray, type_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Blocks -> (f16 scales [out, nblk, 2], table codes [out, k]): the same information in a layout
    one ``take`` decodes. TQ4: the qs bytes (k = 16 per block, 2 weights each). TQ3: each 24-bit
    group split into two 12-bit codes (k = 8 per block, 4 weights each; 0.5 instead of 0.375 bytes
    per weight, bought for a ~2x faster decode)."""
    sp = spec(type_id)
    n_out = raw_rows.shape[0]
    blocks = raw_rows.reshape(n_out, -1, sp.block_bytes)
    d16 = np.ascontiguousarray(blocks[:, :, :4]).view("<f2")  # [out, nblk, 2]
    if sp.bits == 4:
        return d16, np.ascontiguousarray(blocks[:, :, 4:]).reshape(n_out, -1)
    g = blocks[:, :, 4:].reshape(n_out, -1, 4, 3).astype(np.uint32)
    word = g[..., 0] | (g[..., 1] << 8) | (g[..., 2] << 16)
    codes = np.stack([word & 0xFFF, word >> 12], axis=-1).astype(np.uint16)
    return d16, codes.reshape(n_out, -1)


class TQLinear:
    """y = x @ W.T for W stored as TQ3_1S / TQ4_1S rows.

    raw: uint8 [out, row_bytes] (or any C-contiguous array holding those bytes); shape = (out, in)
    in NumPy order (GGUF ne = [in, out]). Keeps ``raw`` (a view when possible) for ``dequantize`` and,
    for ``apply``, the scales and indices re-laid out for a one-lookup decode (about the raw size;
    never a float copy)."""

    def __init__(
        self,
        raw: np.ndarray,
        type_id: int,
        shape: tuple[int, int],
        tile_bytes: int = DEFAULT_TILE_BYTES,
        workers: int = 0,
    ):
        self.type_id = int(type_id)
        self.spec = spec(self.type_id)
        n_out, n_in = (int(s) for s in shape)
        self.shape = (n_out, n_in)
        rb = row_bytes(self.type_id, n_in)
        raw = np.asarray(raw)
        if raw.dtype != np.uint8 or raw.size != n_out * rb:
            raise ValueError(
                f"{self.spec.name} weight {self.shape} needs {n_out * rb} bytes (uint8), got {raw.size} {raw.dtype}"
            )
        self.raw = raw.reshape(n_out, rb)
        self.tile_rows = max(1, tile_bytes // (4 * n_in))
        self.workers = workers  # 0: TURBOSPEC_THREADS or the CPU count
        self._d16, self._codes = _split_blocks(self.raw, self.type_id)

    @property
    def nbytes(self) -> int:
        """Bytes of the weight as stored in the file."""
        return self.raw.nbytes

    def dequantize(self) -> np.ndarray:
        """Full float32 [out, in] (for checks and for the loader; TQLinear itself never keeps one)."""
        return dequantize(self.raw, self.type_id, self.shape)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """float32 [..., in] -> float32 [..., out]; one token or a batch. Row ranges run on
        ``workers`` threads (NumPy's take, multiply and BLAS release the GIL)."""
        x = np.asarray(x, dtype=np.float32)
        n_out, n_in = self.shape
        if x.shape[-1] != n_in:
            raise ValueError(f"input has {x.shape[-1]} features, weight {self.shape} expects {n_in}")
        lead = x.shape[:-1]
        xr = rotate(x.reshape(-1, n_in))  # [T, in]; rotate() works on every 32-block of the last axis
        xr_t = xr.T  # [in, T], a transposed view: BLAS reads it as is
        out_t = np.empty((n_out, xr.shape[0]), dtype=np.float32)  # rows of W -> contiguous slices
        tile = self.tile_rows
        nw = min(self.workers or n_workers(), -(-n_out // tile))
        if nw <= 1:
            self._range(xr_t, out_t, 0, n_out)
        else:
            per_worker = -(-n_out // nw)  # ceil
            step = -(-per_worker // tile) * tile  # rounded up to whole tiles
            run_ranges(lambda a, b: self._range(xr_t, out_t, a, b), n_out, step)
        return np.ascontiguousarray(out_t.T).reshape(*lead, n_out)

    def _range(self, xr_t: np.ndarray, out_t: np.ndarray, r0: int, r1: int) -> None:
        from turbospec.engine.linear import ROW_LOOP_MAX

        n_tok = xr_t.shape[1]
        for a in range(r0, r1, self.tile_rows):
            b = min(r1, a + self.tile_rows)
            tile = self._decode_tile(a, b)  # scratch only
            if n_tok <= ROW_LOOP_MAX:
                # one matrix-vector product per token: a token's result does not depend on the
                # batch it came in (decode == verification, bit for bit)
                for r in range(n_tok):
                    np.matmul(tile, np.ascontiguousarray(xr_t[:, r]), out=out_t[a:b, r])
            else:
                np.matmul(tile, xr_t, out=out_t[a:b])

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """float32 [len(idx), in]: the selected rows dequantized (an embedding lookup)."""
        idx = np.asarray(idx).reshape(-1)
        return dequantize(self.raw[idx], self.type_id, (idx.size, self.shape[1]))

    __call__ = apply

    def _decode_tile(self, r0: int, r1: int) -> np.ndarray:
        vals = _TABLES[self.type_id].take(self._codes[r0:r1], axis=0)  # [rt, nblk*16, 2] | [rt, nblk*8, 4]
        vals = vals.reshape(r1 - r0, -1, 2, HALF)
        vals *= self._d16[r0:r1].astype(np.float32)[..., None]
        return vals.reshape(r1 - r0, self.shape[1])

    def __repr__(self) -> str:
        return f"TQLinear({self.spec.name}, out={self.shape[0]}, in={self.shape[1]}, {self.nbytes} bytes)"
