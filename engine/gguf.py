"""GGUF reading: metadata, tensor infos and dequantization to float32.

The container is parsed here (header, key/values, tensor infos) with the ``gguf`` package's
enums and block-size tables; gguf-py's own ``GGUFReader`` refuses tensor types it does not
know (TurboQuant's TQ3_1S / TQ4_1S, ids 45/46), and materialising its per-token field views
for a 262144-entry vocabulary costs seconds. Tensor data stays memory-mapped: nothing is read
until a tensor is dequantized.

Every path a user controls ends in ``UserError`` with one line (missing file, not a GGUF,
truncated, unsupported tensor type, missing tensor).
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from turbospec.errors import UserError

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# TurboQuant weight types, in the numbering of the llama.cpp fork turbospec follows
# (AtomicBot-ai/atomic-llama-cpp-turboquant). gguf-py knows neither id.
EXTRA_TYPES: dict[int, tuple[str, int, int]] = {45: ("TQ3_1S", 32, 16), 46: ("TQ4_1S", 32, 20)}

_SCALAR = {
    GGUFValueType.UINT8: "<u1",
    GGUFValueType.INT8: "<i1",
    GGUFValueType.UINT16: "<u2",
    GGUFValueType.INT16: "<i2",
    GGUFValueType.UINT32: "<u4",
    GGUFValueType.INT32: "<i4",
    GGUFValueType.FLOAT32: "<f4",
    GGUFValueType.UINT64: "<u8",
    GGUFValueType.INT64: "<i8",
    GGUFValueType.FLOAT64: "<f8",
    GGUFValueType.BOOL: "<u1",
}


_STRUCT = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
    GGUFValueType.BOOL: "<?",
}


def type_name(type_id: int) -> str:
    if type_id in EXTRA_TYPES:
        return EXTRA_TYPES[type_id][0]
    try:
        return GGMLQuantizationType(type_id).name
    except ValueError:
        return f"type{type_id}"


def block_info(type_id: int) -> tuple[int, int]:
    """(elements per block, bytes per block) for a GGML type id."""
    if type_id in EXTRA_TYPES:
        return EXTRA_TYPES[type_id][1:]
    try:
        return GGML_QUANT_SIZES[GGMLQuantizationType(type_id)]
    except (ValueError, KeyError):
        raise UserError(f"unknown GGML tensor type id {type_id}; this file needs a newer reader") from None


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy order: (ne[n-1], ..., ne[0]); the last axis is contiguous
    type_id: int
    offset: int  # absolute byte offset in the file
    n_bytes: int

    @property
    def type_name(self) -> str:
        return type_name(self.type_id)

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape))


class _Cursor:
    def __init__(self, buf: memoryview, path: Path):
        self.buf = buf
        self.pos = 0
        self.path = path

    def need(self, n: int) -> None:
        if self.pos + n > len(self.buf):
            raise UserError(
                f"{self.path}: truncated GGUF (header ends at byte {len(self.buf)}, needed {self.pos + n}); "
                "re-download or re-create the file"
            )

    def unpack(self, fmt: str) -> Any:
        n = struct.calcsize(fmt)
        self.need(n)
        v = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return v[0] if len(v) == 1 else v

    def string(self) -> str:
        n = self.unpack("<Q")
        if n > 1 << 30:
            raise UserError(f"{self.path}: malformed GGUF (string of {n} bytes at {self.pos}); the file is corrupt")
        self.need(n)
        s = bytes(self.buf[self.pos : self.pos + n]).decode("utf-8", errors="replace")
        self.pos += n
        return s

    def skip_strings(self, count: int) -> LazyStrings:
        offs = np.empty(count, np.int64)
        lens = np.empty(count, np.int64)
        buf, pos, unpack, end = self.buf, self.pos, struct.unpack_from, len(self.buf)
        for i in range(count):
            if pos + 8 > end:
                self.pos = pos
                self.need(8)
            (n,) = unpack("<Q", buf, pos)
            offs[i] = pos + 8
            lens[i] = n
            pos += 8 + n
        if pos > end:
            self.pos = end
            self.need(pos - end)
        self.pos = pos
        return LazyStrings(buf, offs, lens)

    def value(self, vtype: int) -> Any:
        try:
            vt = GGUFValueType(vtype)
        except ValueError:
            raise UserError(
                f"{self.path}: malformed GGUF (unknown value type {vtype} at byte {self.pos}); the file is corrupt"
            ) from None
        if vt == GGUFValueType.STRING:
            return self.string()
        if vt == GGUFValueType.ARRAY:
            etype, count = self.unpack("<IQ")
            if count > 1 << 31:
                raise UserError(f"{self.path}: malformed GGUF (array of {count} items); the file is corrupt")
            if etype == GGUFValueType.STRING:
                return self.string_array(count)
            dt = _SCALAR.get(GGUFValueType(etype)) if etype in GGUFValueType._value2member_map_ else None
            if dt is None:
                return [self.value(etype) for _ in range(count)]
            size = np.dtype(dt).itemsize * count
            self.need(size)
            arr = np.frombuffer(self.buf, dtype=dt, count=count, offset=self.pos).copy()
            self.pos += size
            return arr.astype(bool) if etype == GGUFValueType.BOOL else arr
        v = self.unpack(_STRUCT[vt])
        return bool(v) if vt == GGUFValueType.BOOL else v

    def string_array(self, count: int) -> list[str] | LazyStrings:
        if count > LAZY_STRINGS:
            return self.skip_strings(count)
        out: list[str] = []
        buf, pos, unpack = self.buf, self.pos, struct.unpack_from
        end = len(buf)
        append = out.append
        for _ in range(count):
            if pos + 8 > end:
                self.pos = pos
                self.need(8)
            (n,) = unpack("<Q", buf, pos)
            pos += 8
            if pos + n > end:
                self.pos = pos
                self.need(n)
            append(bytes(buf[pos : pos + n]).decode("utf-8", errors="replace"))
            pos += n
        self.pos = pos
        return out


LAZY_STRINGS = 4096  # longer string arrays (vocabularies) are decoded only when read


class LazyStrings:
    """A GGUF string array decoded on first access (a 262144-token vocabulary costs ~0.3 s)."""

    def __init__(self, buf: memoryview, offsets: np.ndarray, lengths: np.ndarray):
        self._buf = buf
        self._off = offsets
        self._len = lengths
        self._items: list[str] | None = None

    def _all(self) -> list[str]:
        if self._items is None:
            b = self._buf
            self._items = [
                bytes(b[o : o + n]).decode("utf-8", errors="replace")
                for o, n in zip(self._off.tolist(), self._len.tolist(), strict=True)
            ]
        return self._items

    def __len__(self) -> int:
        return len(self._off)

    def __getitem__(self, i):
        return self._all()[i]

    def __iter__(self):
        return iter(self._all())


@dataclass
class GGUFFile:
    """A parsed GGUF file: ``metadata`` (key -> value), ``tensors`` (name -> TensorInfo)."""

    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: dict[str, TensorInfo]
    data_offset: int
    _mm: mmap.mmap | None = field(default=None, repr=False)

    @classmethod
    def open(cls, path: str | os.PathLike) -> GGUFFile:
        p = Path(path)
        if not p.exists():
            raise UserError(f"model file not found: {p}; pass an existing .gguf path with -m/--model")
        if p.is_dir():
            raise UserError(f"{p} is a folder, not a GGUF file; pass the .gguf file itself with -m/--model")
        size = p.stat().st_size
        if size < 24:
            raise UserError(f"{p}: not a GGUF file ({size} bytes); pass a .gguf model file")
        with open(p, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        buf = memoryview(mm)
        if bytes(buf[:4]) != GGUF_MAGIC:
            raise UserError(f"{p}: not a GGUF file (bad magic {bytes(buf[:4])!r}); pass a .gguf model file")
        cur = _Cursor(buf, p)
        cur.pos = 4
        version, n_tensors, n_kv = cur.unpack("<IQQ")
        if version not in (2, 3):
            raise UserError(f"{p}: GGUF version {version} is not supported (2 and 3 are); convert it again")
        if n_tensors > 1 << 24 or n_kv > 1 << 24:
            raise UserError(f"{p}: malformed GGUF header ({n_tensors} tensors, {n_kv} keys); the file is corrupt")
        meta: dict[str, Any] = {}
        for _ in range(n_kv):
            key = cur.string()
            vtype = cur.unpack("<I")
            meta[key] = cur.value(vtype)
        infos = []
        for _ in range(n_tensors):
            name = cur.string()
            n_dims = cur.unpack("<I")
            if n_dims > 8:
                raise UserError(f"{p}: malformed tensor info for {name!r} ({n_dims} dims); the file is corrupt")
            dims = [cur.unpack("<Q") for _ in range(n_dims)]
            type_id, offset = cur.unpack("<IQ")
            infos.append((name, tuple(reversed(dims)), type_id, offset))
        align = int(meta.get("general.alignment", DEFAULT_ALIGNMENT))
        data_offset = (cur.pos + align - 1) // align * align
        tensors: dict[str, TensorInfo] = {}
        for name, shape, type_id, offset in infos:
            blk, tsize = block_info(type_id)
            n = int(np.prod(shape)) if shape else 1
            if shape and shape[-1] % blk:
                raise UserError(
                    f"{p}: tensor {name!r} has row length {shape[-1]}, not a multiple of "
                    f"{type_name(type_id)}'s block {blk}; the file is corrupt"
                )
            nbytes = n // blk * tsize
            start = data_offset + offset
            if start + nbytes > size:
                raise UserError(
                    f"{p}: truncated GGUF: tensor {name!r} needs bytes up to {start + nbytes} but the file "
                    f"has {size}; re-download or re-create the file"
                )
            tensors[name] = TensorInfo(name, shape, type_id, start, nbytes)
        del cur
        return cls(p, version, meta, tensors, data_offset, mm)

    # -- metadata helpers -------------------------------------------------------------------
    @property
    def arch(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def require(self, key: str) -> Any:
        if key not in self.metadata:
            raise UserError(f"{self.path}: missing GGUF key {key!r}; the file was not written for this architecture")
        return self.metadata[key]

    # -- tensor access ---------------------------------------------------------------------
    def info(self, name: str) -> TensorInfo:
        t = self.tensors.get(name)
        if t is None:
            raise UserError(
                f"{self.path}: missing tensor {name!r} ({len(self.tensors)} tensors in the file); "
                "the file is incomplete or for another architecture"
            )
        return t

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as uint8 [rows, row_bytes] (memory-mapped, read-only)."""
        t = self.info(name)
        blk, tsize = block_info(t.type_id)
        a = np.frombuffer(self._mm, dtype=np.uint8, count=t.n_bytes, offset=t.offset)
        rows = t.n_elements // t.shape[-1] if t.shape else 1
        return a.reshape(rows, -1)

    def dequantize(self, name: str, rows: slice | np.ndarray | None = None) -> np.ndarray:
        """float32 array of the tensor's shape (or the selected rows of a 2-D tensor)."""
        t = self.info(name)
        raw = self.raw(name)
        if rows is not None:
            raw = raw[rows]
            shape = (raw.shape[0], t.shape[-1])
        else:
            shape = t.shape
        return dequantize(raw, t.type_id, shape)

    def close(self) -> None:
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:
                pass  # arrays still view it; the OS unmaps when they go
            self._mm = None


# --------------------------------------------------------------------------------------------
# Dequantization (vectorised NumPy). Block layouts are ggml's; the tests compare every type
# against gguf.quants.dequantize on random blocks.
# --------------------------------------------------------------------------------------------


def _f16(b: np.ndarray) -> np.ndarray:
    """Little-endian f16 from a [..., 2] uint8 view, as float32."""
    return np.ascontiguousarray(b).view(np.float16)[..., 0].astype(np.float32)


def _int_q8_0(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # [n, 34] -> (int8 [n, 32], d [n])
    return np.ascontiguousarray(b[:, 2:34]).view(np.int8), _f16(b[:, 0:2])


def _deq_q8_0(b: np.ndarray) -> np.ndarray:  # [n, 34]
    q, d = _int_q8_0(b)
    return q.astype(np.float32) * d[:, None]


def _int_q4_0(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # [n, 18]
    qs = b[:, 2:18]
    lo = (qs & 0x0F).astype(np.int8) - 8
    hi = (qs >> 4).astype(np.int8) - 8
    return np.concatenate([lo, hi], axis=1), _f16(b[:, 0:2])


def _deq_q4_0(b: np.ndarray) -> np.ndarray:  # [n, 18]
    q, d = _int_q4_0(b)
    return q.astype(np.float32) * d[:, None]


def _int_q5_0(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # [n, 22]
    d = _f16(b[:, 0:2])
    qh = np.ascontiguousarray(b[:, 2:6]).view("<u4")[:, 0]
    qs = b[:, 6:22]
    j = np.arange(16, dtype=np.uint32)
    h0 = ((qh[:, None] >> j) & 1).astype(np.uint8) << 4
    h1 = ((qh[:, None] >> (j + 16)) & 1).astype(np.uint8) << 4
    x0 = ((qs & 0x0F) | h0).astype(np.int8) - 16
    x1 = ((qs >> 4) | h1).astype(np.int8) - 16
    return np.concatenate([x0, x1], axis=1), d


def _deq_q5_0(b: np.ndarray) -> np.ndarray:  # [n, 22]
    q, d = _int_q5_0(b)
    return q.astype(np.float32) * d[:, None]


def _scale_min_k4(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ggml's get_scale_min_k4 for j = 0..7 at once: [n, 12] uint8 -> ([n, 8], [n, 8])."""
    q = scales.astype(np.uint8)
    sc = np.empty((q.shape[0], 8), np.uint8)
    mn = np.empty((q.shape[0], 8), np.uint8)
    sc[:, :4] = q[:, 0:4] & 63
    mn[:, :4] = q[:, 4:8] & 63
    sc[:, 4:] = (q[:, 8:12] & 0x0F) | ((q[:, 0:4] >> 6) << 4)
    mn[:, 4:] = (q[:, 8:12] >> 4) | ((q[:, 4:8] >> 6) << 4)
    return sc.astype(np.float32), mn.astype(np.float32)


def _int_q4_k(b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # [n, 144]
    """(q 0..15 int8 [n, 256], d*sc [n, 8], dmin*m [n, 8]): w = q * (d*sc) - dmin*m per 32."""
    d = _f16(b[:, 0:2])
    dmin = _f16(b[:, 2:4])
    sc, mn = _scale_min_k4(b[:, 4:16])
    qs = b[:, 16:144].reshape(-1, 4, 32)  # 4 chunks of 64 values, 32 bytes each
    lo = (qs & 0x0F).astype(np.int8)  # values 0..31 of the chunk: sub-block 2c
    hi = (qs >> 4).astype(np.int8)  # values 32..63: sub-block 2c+1
    q = np.stack([lo, hi], axis=2).reshape(-1, 256)
    return q, d[:, None] * sc, dmin[:, None] * mn


def _deq_q4_k(b: np.ndarray) -> np.ndarray:  # [n, 144] -> [n, 256]
    q, dl, ml = _int_q4_k(b)
    return (dl[:, :, None] * q.reshape(-1, 8, 32).astype(np.float32) - ml[:, :, None]).reshape(-1, 256)


def _int_q6_k(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # [n, 210]
    """(q -32..31 int8 [n, 256], d*sc [n, 16]): w = q * (d*sc) per 16."""
    ql = b[:, 0:128].reshape(-1, 2, 64)
    qh = b[:, 128:192].reshape(-1, 2, 32)
    sc = b[:, 192:208].view(np.int8).astype(np.float32).reshape(-1, 2, 8)
    d = _f16(b[:, 208:210])
    q1 = (ql[:, :, 0:32] & 0x0F) | (((qh >> 0) & 3) << 4)
    q2 = (ql[:, :, 32:64] & 0x0F) | (((qh >> 2) & 3) << 4)
    q3 = (ql[:, :, 0:32] >> 4) | (((qh >> 4) & 3) << 4)
    q4 = (ql[:, :, 32:64] >> 4) | (((qh >> 6) & 3) << 4)
    q = np.stack([q1, q2, q3, q4], axis=2).astype(np.int8) - 32  # [n, half, 4 quarters, 32]
    # 16-value groups in order (half, quarter, l // 16); scale index = 2*quarter + l//16 within the half
    return q.reshape(-1, 256), d[:, None] * sc.reshape(-1, 16)


def _deq_q6_k(b: np.ndarray) -> np.ndarray:  # [n, 210] -> [n, 256]
    q, s = _int_q6_k(b)
    return (s[:, :, None] * q.reshape(-1, 16, 16).astype(np.float32)).reshape(-1, 256)


def _deq_f16(b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b).view(np.float16).astype(np.float32).reshape(-1)


def _deq_bf16(b: np.ndarray) -> np.ndarray:
    u = np.ascontiguousarray(b).view(np.uint16).astype(np.uint32) << 16
    return u.view(np.float32).reshape(-1)


def _deq_f32(b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b).view(np.float32).reshape(-1).copy()


_DEQUANT = {
    GGMLQuantizationType.F32: _deq_f32,
    GGMLQuantizationType.F16: _deq_f16,
    GGMLQuantizationType.BF16: _deq_bf16,
    GGMLQuantizationType.Q8_0: _deq_q8_0,
    GGMLQuantizationType.Q4_0: _deq_q4_0,
    GGMLQuantizationType.Q5_0: _deq_q5_0,
    GGMLQuantizationType.Q4_K: _deq_q4_k,
    GGMLQuantizationType.Q6_K: _deq_q6_k,
}

SUPPORTED_TYPES = tuple(t.name for t in _DEQUANT) + tuple(v[0] for v in EXTRA_TYPES.values())


# Types whose blocks unpack to int8 values times a float32 scale (minus a minimum) per group of
# 16 or 32: the CPU engine keeps these as int8 (engine/linear.py BlockInt8), exactly what they
# dequantize to. (function, group size)
_BLOCK_INT8 = {
    GGMLQuantizationType.Q8_0: (_int_q8_0, 32),
    GGMLQuantizationType.Q4_0: (_int_q4_0, 32),
    GGMLQuantizationType.Q5_0: (_int_q5_0, 32),
    GGMLQuantizationType.Q4_K: (_int_q4_k, 32),
    GGMLQuantizationType.Q6_K: (_int_q6_k, 16),
}
BLOCK_INT8_TYPES = tuple(int(t) for t in _BLOCK_INT8)


def block_int8_group(type_id: int) -> int:
    return _BLOCK_INT8[GGMLQuantizationType(type_id)][1]


def block_int8(raw: np.ndarray, type_id: int,
               shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """A 2-D tensor of a BLOCK_INT8_TYPES type as (q int8 (rows, K), d float32 (rows, K / G),
    m float32 (rows, K / G) or None) with ``q * d - m`` per group of G, computed in float32,
    equal bit for bit to ``dequantize(raw, type_id, shape)``."""
    rows, K = shape
    fn, G = _BLOCK_INT8[GGMLQuantizationType(type_id)]
    _, tsize = block_info(type_id)
    parts = fn(np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1, tsize))
    q = np.ascontiguousarray(parts[0].reshape(rows, K), np.int8)
    d = np.ascontiguousarray(parts[1].reshape(rows, K // G), np.float32)
    m = np.ascontiguousarray(parts[2].reshape(rows, K // G), np.float32) if len(parts) > 2 else None
    return q, d, m


def dequantize(raw: np.ndarray, type_id: int, shape: tuple[int, ...]) -> np.ndarray:
    """Dequantize raw GGML bytes (any shape of uint8 holding whole blocks) to float32 ``shape``."""
    blk, tsize = block_info(type_id)
    flat = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1)
    if type_id in EXTRA_TYPES:
        try:
            from turbospec.engine.quant.tq import dequantize_tq
        except ImportError:
            raise UserError(
                f"tensor type {type_name(type_id)} needs turbospec's TQ weight support, which this build lacks"
            ) from None
        return dequantize_tq(flat, type_id, shape)
    fn = _DEQUANT.get(GGMLQuantizationType(type_id))
    if fn is None:
        raise UserError(
            f"tensor type {type_name(type_id)} is not supported (supported: {', '.join(SUPPORTED_TYPES)}); "
            "re-quantize the model to one of them"
        )
    blocks = flat.reshape(-1, tsize)
    return fn(blocks).reshape(shape)
