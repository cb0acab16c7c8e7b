"""GGUF container layout for the quantizer: the header, key/value entries kept as raw bytes, tensor
infos, and a streaming writer that accepts tensor type ids gguf-py does not know (45 / 46).

GGUF (v2/v3, little-endian): ``"GGUF"``, u32 version, u64 n_tensors, u64 n_kv; n_kv entries (key
string, u32 value type, value); n_tensors infos (name string, u32 n_dims, u64 ne[n_dims] with ne0
first, u32 type, u64 offset relative to the data section); zero padding to ``general.alignment``
(32 when absent); tensor data, each tensor's start aligned the same way. Strings are u64 length +
UTF-8 bytes; arrays are u32 element type, u64 count, elements.

Key/values are copied byte for byte (only a few are decoded), so the tokenizer and every other
key reach the output exactly as they were.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from turbospec.errors import UserError

from .tq_format import TQ_TYPES

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
# value type -> struct format for scalars (GGUFValueType numbering)
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


def type_name(type_id: int) -> str:
    if type_id in TQ_TYPES:
        return TQ_TYPES[type_id][0]
    try:
        return GGMLQuantizationType(type_id).name
    except ValueError:
        return f"type {type_id}"


def block_info(type_id: int) -> tuple[int, int] | None:
    """(weights per block, bytes per block), or None for a type id nobody here knows."""
    if type_id in TQ_TYPES:
        return TQ_TYPES[type_id][1], TQ_TYPES[type_id][2]
    try:
        return GGML_QUANT_SIZES[GGMLQuantizationType(type_id)]
    except (ValueError, KeyError):
        return None


@dataclass
class KV:
    key: str
    raw: bytes  # the whole entry as stored: key string, value type, value
    vtype: int
    value: Any = None  # decoded for scalars and strings only


@dataclass
class Tensor:
    name: str
    ne: tuple[int, ...]  # GGUF order: ne0 (the row length) first
    type_id: int
    offset: int  # relative to the data section

    @property
    def shape(self) -> tuple[int, ...]:
        """NumPy order (rows last-index-fastest): reversed ne."""
        return tuple(reversed(self.ne))

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.ne, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        info = block_info(self.type_id)
        if info is None:
            raise UserError(f"tensor {self.name} has unknown GGML type id {self.type_id}; turbospec cannot copy it")
        qk, bb = info
        if self.ne[0] % qk:
            raise UserError(f"tensor {self.name}: row length {self.ne[0]} is not a multiple of {qk}; malformed GGUF")
        return self.n_elements // qk * bb


@dataclass
class GGUFLayout:
    path: Path
    version: int
    kvs: list[KV]
    tensors: list[Tensor]
    alignment: int
    data_start: int
    _mm: mmap.mmap | None = field(default=None, repr=False)
    _file: BinaryIO | None = field(default=None, repr=False)

    def get(self, key: str, default: Any = None) -> Any:
        for kv in self.kvs:
            if kv.key == key:
                return kv.value
        return default

    def raw(self, t: Tensor) -> np.ndarray:
        """The tensor's bytes (memory-mapped, read-only) as uint8 [rows, row_bytes]."""
        assert self._mm is not None
        start = self.data_start + t.offset
        n = t.nbytes
        if start + n > len(self._mm):
            raise UserError(f"{self.path}: tensor {t.name} runs past the end of the file; the GGUF is truncated")
        arr = np.frombuffer(self._mm, dtype=np.uint8, count=n, offset=start)
        rows = t.n_elements // t.ne[0] if t.ne else 1
        return arr.reshape(rows, -1)

    def close(self) -> None:
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:  # arrays handed out by raw() still view it: they keep it alive
                pass
            self._mm = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> GGUFLayout:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Cursor:
    def __init__(self, buf: mmap.mmap, path: Path):
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.buf):
            raise UserError(f"{self.path}: file ends inside the GGUF header; the file is truncated or not a GGUF")
        b = self.buf[self.pos : self.pos + n]
        self.pos += n
        return b

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.unpack("<Q")
        if n > len(self.buf):
            raise UserError(f"{self.path}: corrupt GGUF header (string of {n} bytes)")
        return self.take(n).decode("utf-8", errors="replace")

    def skip_value(self, vtype: int) -> Any:
        if vtype in _SCALAR:
            return self.unpack(_SCALAR[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype, count = self.unpack("<I"), self.unpack("<Q")
            if etype in _SCALAR:
                size = struct.calcsize(_SCALAR[etype]) * count
                self.take(size)
            else:
                for _ in range(count):
                    self.skip_value(etype)
            return None
        raise UserError(f"{self.path}: corrupt GGUF header (value type {vtype})")


def open_layout(path: str | os.PathLike) -> GGUFLayout:
    """Parse a GGUF's header; tensor data stays memory-mapped. User errors end in one line."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such file; pass the path of a .gguf model")
    f = open(p, "rb")  # noqa: SIM115 - kept open by the layout, closed by close()
    try:
        if p.stat().st_size < 24 or f.read(4) != MAGIC:
            raise UserError(f"{p} is not a GGUF file (no GGUF magic); pass a .gguf model")
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except BaseException:
        f.close()
        raise
    cur = _Cursor(mm, p)
    cur.take(4)
    version = cur.unpack("<I")
    if version not in (2, 3):
        mm.close()
        f.close()
        raise UserError(f"{p}: GGUF version {version} is not supported (2 or 3); re-export the model")
    n_tensors, n_kv = cur.unpack("<Q"), cur.unpack("<Q")
    kvs: list[KV] = []
    for _ in range(n_kv):
        start = cur.pos
        key = cur.string()
        vtype = cur.unpack("<I")
        value = cur.skip_value(vtype)
        kvs.append(KV(key, bytes(mm[start : cur.pos]), vtype, value))
    tensors = []
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.unpack("<I")
        if n_dims > 8:
            raise UserError(f"{p}: corrupt GGUF tensor info for {name} ({n_dims} dims)")
        ne = tuple(cur.unpack("<Q") for _ in range(n_dims))
        type_id, offset = cur.unpack("<I"), cur.unpack("<Q")
        tensors.append(Tensor(name, ne, type_id, offset))
    alignment = DEFAULT_ALIGNMENT
    for kv in kvs:
        if kv.key == "general.alignment" and isinstance(kv.value, int) and kv.value > 0:
            alignment = kv.value
    data_start = _pad(cur.pos, alignment)
    return GGUFLayout(p, version, kvs, tensors, alignment, data_start, mm, f)


def _pad(n: int, align: int) -> int:
    return (n + align - 1) // align * align


def _string(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def kv_string(key: str, value: str) -> KV:
    return KV(key, _string(key) + struct.pack("<I", _STRING) + _string(value), _STRING, value)


def kv_u32(key: str, value: int) -> KV:
    return KV(key, _string(key) + struct.pack("<I", 4) + struct.pack("<I", value), 4, value)


class GGUFStreamWriter:
    """Writes header, key/values and tensor infos at once, then tensor data in the announced order.

    ``tensors`` carry their output type and ne; offsets are assigned here. Each tensor's bytes
    are then passed to ``write_data`` (in one or several pieces) in the same order."""

    def __init__(self, f: BinaryIO, kvs: list[KV], tensors: list[Tensor], alignment: int = DEFAULT_ALIGNMENT):
        self.f, self.alignment = f, alignment
        offset = 0
        self.tensors: list[Tensor] = []
        for t in tensors:
            self.tensors.append(Tensor(t.name, t.ne, t.type_id, offset))
            offset = _pad(offset + t.nbytes, alignment)
        head = bytearray(MAGIC + struct.pack("<IQQ", 3, len(self.tensors), len(kvs)))
        for kv in kvs:
            head += kv.raw
        for t in self.tensors:
            head += _string(t.name) + struct.pack("<I", len(t.ne))
            head += b"".join(struct.pack("<Q", n) for n in t.ne)
            head += struct.pack("<IQ", t.type_id, t.offset)
        head += bytes(_pad(len(head), alignment) - len(head))
        f.write(head)
        self._data_start = len(head)
        self._index = 0
        self._written = 0  # bytes of the current tensor so far

    def write_data(self, chunk: np.ndarray | bytes) -> None:
        t = self.tensors[self._index]
        b = (
            memoryview(np.ascontiguousarray(chunk).view(np.uint8).reshape(-1))
            if isinstance(chunk, np.ndarray)
            else memoryview(chunk)
        )
        if self._written + b.nbytes > t.nbytes:
            raise ValueError(f"{t.name}: more data than its {t.nbytes} bytes")
        self.f.write(b)
        self._written += b.nbytes
        if self._written == t.nbytes:
            self.f.write(bytes(_pad(t.nbytes, self.alignment) - t.nbytes))
            self._index += 1
            self._written = 0

    def finish(self) -> None:
        if self._index != len(self.tensors) or self._written:
            raise ValueError(f"{len(self.tensors) - self._index} tensors were announced but not written")
        self.f.flush()
