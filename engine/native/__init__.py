"""Native CPU kernels: C sources in this folder, built with the system C compiler on first use
and loaded with ctypes. The CPU engine stays NumPy; these replace only the few products where
NumPy has no batch-invariant fast path (engine/linear.py says which), the f16 cache's widening
(f16.c), the quantized cache types' block codecs (kvcodec.c: q8_0 and turbo2/3/4, bit-identical)
and one decode token's attention over an f16 cache (attn.c, where NumPy's ~25 small calls
a layer cost more than the arithmetic) and, for decode batches, block-int8 weights times int8
activations (q8act.c, AVX-512 VNNI, AVX-VNNI or AVX2; linear.ACT_INT8); pool.c splits a decode
product's rows over the threads in one call. Each kernel has its
NumPy reference in the module that calls it, and tests compare them (tests/engine/test_native.py,
test_blockint8.py, test_native_attn.py, test_q8act.py, test_kv_codecs.py).

Builds are cached under ``cache_dir()/native`` by the hash of the source, the flags, the
compiler's version and this CPU's feature flags (``-march=native`` code must never be loaded on
another CPU). A build goes to a temporary name and is renamed, so concurrent first starts are
safe. ``TURBOSPEC_NATIVE=0`` turns the kernels off; without a compiler, or when a build fails,
the engine says so in one line and computes with NumPy (slower; the results differ only in the
last bits, and within a process every product takes the same path, so speculative decoding
stays token-identical to plain decoding either way).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SOURCES = ("rowint16.c", "f16.c", "attn.c", "q8act.c", "pool.c", "kvcodec.c")
CFLAGS = ("-O3", "-std=c11", "-shared", "-fPIC", "-pthread", "-ffp-contract=off", "-fno-strict-aliasing")
ARCH_FLAGS = (("-march=native",), ())  # tried in order: the first that builds wins

_lock = threading.Lock()
_state: dict[str, object] = {}


@dataclass(frozen=True)
class NativeStatus:
    enabled: bool
    isa: str  # "avx512" | "avx2" | "portable" | "" when disabled
    reason: str  # why it is off, or the library path

    def describe(self) -> str:
        return f"native {self.isa}" if self.enabled else f"numpy ({self.reason})"


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.machine() + platform.processor()


def compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def _cache_dir() -> Path:
    from turbospec.paths import cache_dir

    return cache_dir() / "native"


def build(cc: str, arch_flags: tuple[tuple[str, ...], ...] = ARCH_FLAGS) -> tuple[Path | None, str]:
    """(library path, "") or (None, the reason it failed); the first of ``arch_flags`` that
    builds wins (tests build the portable variant with ``((),)`` to compare it bit for bit)."""
    text = b"".join((HERE / s).read_bytes() for s in SOURCES)
    try:
        ver = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout.split("\n")[0]
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"compiler {cc} does not run ({type(e).__name__})"
    d = _cache_dir()
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return None, f"cannot create {d} ({e.strerror})"
    last = ""
    for arch in arch_flags:
        flags = (*CFLAGS, *arch)
        key = hashlib.sha256(b"\0".join([text, " ".join(flags).encode(), ver.encode(), _cpu_flags().encode()]))
        so = d / f"turbospec-native-{key.hexdigest()[:20]}.so"
        if so.exists():
            return so, ""
        tmp = so.with_name(f"{so.stem}.{os.getpid()}.{threading.get_ident()}.so")
        cmd = [cc, *flags, "-o", str(tmp), *(str(HERE / s) for s in SOURCES), "-lm"]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.SubprocessError) as e:
            last = f"{cc} failed to run ({type(e).__name__})"
            continue
        if r.returncode == 0 and tmp.exists():
            tmp.replace(so)
            return so, ""
        tmp.unlink(missing_ok=True)
        err = next((ln for ln in (r.stderr or "").splitlines() if "error" in ln), (r.stderr or "").strip()[:120])
        last = f"{cc} {' '.join(arch) or '(generic)'}: {err.strip()[:160]}"
    return None, last or "the build failed"


def open_library(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    _bind(lib)
    return lib


def _bind(lib: ctypes.CDLL) -> None:
    P, L = ctypes.c_void_p, ctypes.c_long
    lib.ts_rowint16_matmul.argtypes = [P, P, L, P, L, P, L, L, L]
    lib.ts_rowint16_matmul.restype = ctypes.c_int
    lib.ts_rowint16_gather.argtypes = [P, P, L, P, L, P, P]
    lib.ts_rowint16_gather.restype = None
    lib.ts_rowint16_isa.restype = ctypes.c_char_p
    lib.ts_blockint8_matmul.argtypes = [P, P, P, L, L, P, L, P, L, L, L]
    lib.ts_blockint8_matmul.restype = ctypes.c_int
    lib.ts_blockint8_gather.argtypes = [P, P, P, L, L, P, L, P, P]
    lib.ts_blockint8_gather.restype = ctypes.c_int
    lib.ts_f16_to_f32.argtypes = [P, P, L]
    lib.ts_f16_to_f32.restype = None
    lib.ts_f16_isa.restype = ctypes.c_char_p
    lib.ts_attn_f16.argtypes = [P, P, L, P, L, L, L, L, P, L, L, L, ctypes.c_float, P]
    lib.ts_attn_f16.restype = ctypes.c_int
    lib.ts_attn_f16_batch.argtypes = [P, P, L, P, L, L, P, L, P, L, L, L, ctypes.c_float, P]
    lib.ts_attn_f16_batch.restype = ctypes.c_int
    lib.ts_q8act_isa.restype = ctypes.c_char_p
    lib.ts_q8act_layout.argtypes = [P, L, L, L, L, P]
    lib.ts_q8act_layout.restype = None
    lib.ts_q8act_matmul.argtypes = [P, P, P, L, L, P, L, P, L, L, L]
    lib.ts_q8act_matmul.restype = ctypes.c_int
    lib.ts_q8act_gather.argtypes = [P, P, P, L, L, P, L, P, P]
    lib.ts_q8act_gather.restype = ctypes.c_int
    lib.ts_pool_rowint16.argtypes = [P, P, L, P, L, P, L, L, L]
    lib.ts_pool_rowint16.restype = ctypes.c_int
    lib.ts_pool_blockint8.argtypes = [P, P, P, L, L, P, L, P, L, L, L]
    lib.ts_pool_blockint8.restype = ctypes.c_int
    lib.ts_pool_q8act.argtypes = [P, P, P, L, L, P, L, P, L, L, L]
    lib.ts_pool_q8act.restype = ctypes.c_int
    lib.ts_pool_threads.restype = ctypes.c_int
    lib.ts_pool_stop.restype = ctypes.c_int
    lib.ts_f32_to_f16.argtypes = [P, P, L]
    lib.ts_f32_to_f16.restype = None
    lib.ts_q8_0_encode.argtypes = [P, L, P]
    lib.ts_q8_0_encode.restype = ctypes.c_int
    lib.ts_q8_0_decode.argtypes = [P, L, P]
    lib.ts_q8_0_decode.restype = None
    lib.ts_turbo_encode.argtypes = [P, L, ctypes.c_int, P, P, L, P]
    lib.ts_turbo_encode.restype = ctypes.c_int
    lib.ts_turbo_decode.argtypes = [P, L, ctypes.c_int, P, P]
    lib.ts_turbo_decode.restype = ctypes.c_int


def _load() -> tuple[ctypes.CDLL | None, NativeStatus]:
    if os.environ.get("TURBOSPEC_NATIVE", "1").strip().lower() in ("0", "off", "no", "false"):
        return None, NativeStatus(False, "", "TURBOSPEC_NATIVE=0")
    cc = compiler()
    if not cc:
        return None, NativeStatus(False, "", "no C compiler: install gcc (apt-get install gcc) for the native kernels")
    so, why = build(cc)
    if so is None:
        return None, NativeStatus(False, "", f"native kernels did not build: {why}")
    try:
        lib = open_library(so)
    except (OSError, AttributeError) as e:
        return None, NativeStatus(False, "", f"native kernels did not load ({e})")
    return lib, NativeStatus(True, lib.ts_rowint16_isa().decode(), str(so))


def library() -> ctypes.CDLL | None:
    """The loaded kernels, or None (disabled, no compiler, failed build). Built once a process."""
    with _lock:
        if "lib" not in _state:
            lib, st = _load()
            _state["lib"], _state["status"] = lib, st
            if lib is None and st.reason != "TURBOSPEC_NATIVE=0":
                print(f"turbospec: {st.reason}; the CPU engine computes its products with NumPy (slower)",
                      file=sys.stderr)
        return _state["lib"]  # type: ignore[return-value]


def status() -> NativeStatus:
    library()
    return _state["status"]  # type: ignore[return-value]


def reset() -> None:
    """Forget the loaded library (tests switch TURBOSPEC_NATIVE within a process)."""
    with _lock:
        _state.clear()


def _ptr(a: np.ndarray) -> int:
    return a.ctypes.data


def rowint16_matmul(lib: ctypes.CDLL, q: np.ndarray, s: np.ndarray, x: np.ndarray, out: np.ndarray,
                    r0: int, r1: int) -> None:
    """Rows [r0, r1) of ``out`` (T, rows) = x (T, K) @ (q * s[:, None]).T. Arrays must be
    C-contiguous: q int16 (rows, K), s float32 (rows,), x and out float32; T <= 32."""
    T, K = x.shape
    rc = lib.ts_rowint16_matmul(_ptr(q), _ptr(s), K, _ptr(x), T, _ptr(out), out.shape[1], r0, r1)
    if rc:
        raise ValueError(f"ts_rowint16_matmul: {T} tokens is more than the kernel takes (32)")


def rowint16_gather(lib: ctypes.CDLL, q: np.ndarray, s: np.ndarray, idx: np.ndarray, h: np.ndarray) -> np.ndarray:
    """(q[idx] * s[idx, None]) @ h for int64 row ids ``idx``; h float32 (K,)."""
    idx = np.ascontiguousarray(idx, np.int64).reshape(-1)
    h = np.ascontiguousarray(h, np.float32)
    out = np.empty(idx.size, np.float32)
    lib.ts_rowint16_gather(_ptr(q), _ptr(s), q.shape[1], _ptr(idx), idx.size, _ptr(h), _ptr(out))
    return out


def blockint8_matmul(lib: ctypes.CDLL, q: np.ndarray, d: np.ndarray, m: np.ndarray | None, x: np.ndarray,
                     out: np.ndarray, r0: int, r1: int) -> None:
    """Rows [r0, r1) of ``out`` (T, rows) = x (T, K) @ w.T, w = q * d - m per group of
    G = K / d.shape[1] (16 or 32). C-contiguous arrays: q int8 (rows, K), d and m (or None)
    float32 (rows, K / G), x and out float32; K % 32 == 0, T <= 32."""
    T, K = x.shape
    G = K // d.shape[1]
    rc = lib.ts_blockint8_matmul(_ptr(q), _ptr(d), None if m is None else _ptr(m), G, K, _ptr(x), T, _ptr(out),
                                 out.shape[1], r0, r1)
    if rc:
        raise ValueError(f"ts_blockint8_matmul: K = {K} (a multiple of 32), G = {G} (16 or 32), T = {T} (<= 32)")


def _block_gather(fn, what: str, q: np.ndarray, d: np.ndarray, m: np.ndarray | None, idx: np.ndarray,
                  h: np.ndarray) -> np.ndarray:
    """The gather kernels' shared call: fn(q, d, m, G, K, idx, n, h, out) != 0 means bad shapes."""
    idx = np.ascontiguousarray(idx, np.int64).reshape(-1)
    h = np.ascontiguousarray(h, np.float32)
    out = np.empty(idx.size, np.float32)
    K = q.shape[1]
    G = K // d.shape[1]
    if fn(_ptr(q), _ptr(d), None if m is None else _ptr(m), G, K, _ptr(idx), idx.size, _ptr(h), _ptr(out)):
        raise ValueError(f"{fn.__name__}: K = {K} ({what}), G = {G} (16 or 32)")
    return out


def blockint8_gather(lib: ctypes.CDLL, q: np.ndarray, d: np.ndarray, m: np.ndarray | None, idx: np.ndarray,
                     h: np.ndarray) -> np.ndarray:
    """w[idx] @ h for int64 row ids ``idx`` (in range), w as in blockint8_matmul; h float32 (K,)."""
    return _block_gather(lib.ts_blockint8_gather, "a multiple of 32", q, d, m, idx, h)


def f16_to_f32(lib: ctypes.CDLL, h: np.ndarray, out: np.ndarray) -> None:
    """out[...] = h as float32; h uint16 (or float16) bit patterns and out float32, both
    C-contiguous with the same number of elements."""
    if h.size != out.size or not (h.flags.c_contiguous and out.flags.c_contiguous):
        raise ValueError("f16_to_f32: contiguous arrays of the same size")
    if h.dtype.itemsize != 2 or out.dtype != np.float32:
        raise ValueError("f16_to_f32: 2-byte input, float32 output")
    lib.ts_f16_to_f32(_ptr(h), _ptr(out), h.size)


def attn_f16(lib: ctypes.CDLL, k: np.ndarray, v: np.ndarray, pos: np.ndarray | None, lo: int, hi: int,
             new_slot: int, q: np.ndarray, scale: float, out: np.ndarray) -> bool:
    """One query token's attention over a layer's f16 cells (engine/native/attn.c; the NumPy
    reference is LayerKV._attend_step): k, v (cap, hkv, hd * 2) uint8 cells, C-contiguous; pos
    None for a global layer (cells lo..hi, slot = position) or the ring's int64 positions (cap,)
    for a sliding one (the slots holding positions lo..hi, then ``new_slot``); q and out float32
    (n_head, hd), C-contiguous. Fills out; False when a score is not finite."""
    cap, hkv = k.shape[:2]
    n_head, hd = q.shape
    ok = (k.flags.c_contiguous and v.flags.c_contiguous and k.shape == v.shape and k.shape[2] == 2 * hd
          and q.dtype == out.dtype == np.float32 and q.flags.c_contiguous and out.flags.c_contiguous
          and out.shape == q.shape and (pos is None or (pos.dtype == np.int64 and pos.shape == (cap,)))
          and (pos is not None or 0 <= lo and hi < cap) and new_slot < cap)
    if not ok:
        raise ValueError("attn_f16: contiguous f16 cells (cap, hkv, 2 * hd), float32 q and out (n_head, hd), "
                         "int64 positions (cap,), cells inside the cache")
    rc = lib.ts_attn_f16(_ptr(k), _ptr(v), hkv * hd, None if pos is None else _ptr(pos), cap, lo, hi, new_slot,
                         _ptr(q), n_head, hkv, hd, scale, _ptr(out))
    if rc < 0:
        raise ValueError(f"attn_f16: head size {hd} (a multiple of 16), {n_head} heads over {hkv}, and cells to read")
    return rc == 0


def q8act_layout(lib: ctypes.CDLL, q: np.ndarray, G: int) -> np.ndarray:
    """q (rows, K) int8 in q8act.c's window layout (lanes = groups of G), a new array."""
    q = np.ascontiguousarray(q, np.int8)
    qv = np.empty_like(q)
    lib.ts_q8act_layout(_ptr(q), q.shape[1], G, 0, q.shape[0], _ptr(qv))
    return qv


def q8act_matmul(lib: ctypes.CDLL, qv: np.ndarray, d: np.ndarray, m: np.ndarray | None, x: np.ndarray,
                 out: np.ndarray, r0: int, r1: int) -> None:
    """Rows [r0, r1) of ``out`` (T, rows) = int8-quantized x (T, K) against w = q * d - m, with
    qv = q8act_layout(q). C-contiguous: qv int8 (rows, K), d and m (or None) float32
    (rows, K / G), x and out float32; G = K / d.shape[1] in (16, 32), T <= 32."""
    T, K = x.shape
    G = K // d.shape[1]
    rc = lib.ts_q8act_matmul(_ptr(qv), _ptr(d), None if m is None else _ptr(m), G, K, _ptr(x), T, _ptr(out),
                             out.shape[1], r0, r1)
    if rc:
        raise ValueError(f"ts_q8act_matmul: K = {K}, G = {G} (16 or 32, dividing K), T = {T} (1..32)")


def pool_matmul(lib: ctypes.CDLL, kind: str, q: np.ndarray, d: np.ndarray, m: np.ndarray | None, x: np.ndarray,
                out: np.ndarray, threads: int) -> None:
    """The whole of ``out`` (T, rows) in one call, its rows split over ``threads`` threads by
    pool.c (the caller included): ``kind`` "rowint16" (q int16, d = the row scales s, m None),
    "blockint8" (q int8 row-major) or "q8act" (q = q8act_layout(q)); the same arrays and bits as
    the serial calls over any row ranges."""
    T, K = x.shape
    rows = out.shape[1]
    if kind == "rowint16":
        rc = lib.ts_pool_rowint16(_ptr(q), _ptr(d), K, _ptr(x), T, _ptr(out), rows, rows, threads)
    else:
        fn = lib.ts_pool_q8act if kind == "q8act" else lib.ts_pool_blockint8
        rc = fn(_ptr(q), _ptr(d), None if m is None else _ptr(m), K // d.shape[1], K, _ptr(x), T, _ptr(out), rows,
                rows, threads)
    if rc:
        raise ValueError(f"pool {kind}: K = {K}, T = {T} (<= 32), groups {d.shape} do not fit the kernel")


def q8act_gather(lib: ctypes.CDLL, qv: np.ndarray, d: np.ndarray, m: np.ndarray | None, idx: np.ndarray,
                 h: np.ndarray) -> np.ndarray:
    """q8act_matmul's product for the rows ``idx`` (int64, in range) and one token h (K,)."""
    return _block_gather(lib.ts_q8act_gather, "a multiple of G", qv, d, m, idx, h)


def f32_to_f16(lib: ctypes.CDLL, x: np.ndarray) -> np.ndarray:
    """kvcodec.c's float -> half conversion (round to nearest even) of float32 x, as uint16."""
    x = np.ascontiguousarray(x, np.float32)
    out = np.empty(x.shape, np.uint16)
    lib.ts_f32_to_f16(_ptr(x), _ptr(out), x.size)
    return out


def kv_encode(lib: ctypes.CDLL, name: str, blocks: np.ndarray, out: np.ndarray, book: np.ndarray | None = None,
              mids: np.ndarray | None = None, bits: int = 0) -> bool:
    """Encode float32 blocks (M, 32) for q8_0 or (M, 128) for turbo (``bits``, its ``book`` and
    ``mids``) into out uint8 (M, type size), all C-contiguous. False: a scale or norm would
    overflow f16 (the caller runs the NumPy reference, which names the block)."""
    m = blocks.shape[0]
    if name == "q8_0":
        return lib.ts_q8_0_encode(_ptr(blocks), m, _ptr(out)) == 0
    rc = lib.ts_turbo_encode(_ptr(blocks), m, bits, _ptr(book), _ptr(mids), mids.size, _ptr(out))
    if rc < 0:
        raise ValueError(f"ts_turbo_encode: {bits} bits (2, 3 or 4) with {mids.size} midpoints")
    return rc == 0


def kv_decode(lib: ctypes.CDLL, name: str, packed: np.ndarray, out: np.ndarray, book: np.ndarray | None = None,
              bits: int = 0) -> None:
    """Decode uint8 blocks (M, type size) into float32 out (M, block), both C-contiguous."""
    m = packed.shape[0]
    if name == "q8_0":
        lib.ts_q8_0_decode(_ptr(packed), m, _ptr(out))
    elif lib.ts_turbo_decode(_ptr(packed), m, bits, _ptr(book), _ptr(out)):
        raise ValueError(f"ts_turbo_decode: {bits} bits (2, 3 or 4)")
