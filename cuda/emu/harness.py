"""Build a .cu source as a host shared library with g++ and launch its kernels through ctypes.

The source is compiled with ``-include cuda_emu.h`` so the very text that CuPy hands to NVRTC
runs on the CPU: one fiber per CUDA thread, blocks one after another, real barriers (see the
header for the supported subset and limits). Libraries are cached by the hash of the source,
the header and the flags under ``$TURBOSPEC_EMU_CACHE`` (default: ``~/.cache/turbospec/emu``,
falling back to the temp dir).

Arguments follow cuLaunchKernel: an array of pointers to the argument values. Array arguments
are copied into guarded scratch buffers (canary bytes before and after) and copied back, so a
kernel that writes outside its arrays fails the launch instead of corrupting memory silently.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HEADER = Path(__file__).with_name("cuda_emu.h")
CXXFLAGS = ("-O2", "-std=c++17", "-shared", "-fPIC", "-fvisibility=hidden", "-fno-strict-aliasing",
            "-ffp-contract=off", "-w")
GUARD = 64  # canary bytes on each side of every array argument
CANARY = 0xA5

_lock = threading.Lock()
_libs: dict[str, ctypes.CDLL] = {}


class HarnessError(RuntimeError):
    """A launch the harness refused or that failed (deadlock, out-of-bounds write, bad config)."""


def cache_dir() -> Path:
    env = os.environ.get("TURBOSPEC_EMU_CACHE")
    cands = [Path(env)] if env else []
    cands += [Path.home() / ".cache" / "turbospec" / "emu", Path(tempfile.gettempdir()) / "turbospec-emu"]
    for c in cands:
        try:
            c.mkdir(parents=True, exist_ok=True)
            if os.access(c, os.W_OK):
                return c
        except OSError:
            continue
    raise HarnessError("no writable cache directory for harness builds; set TURBOSPEC_EMU_CACHE")


def compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        raise HarnessError("no C++ compiler found for the CUDA host harness; install g++ (apt-get install g++)")
    return cxx


def build(source: str, kernels: list[str], tag: str = "mod") -> ctypes.CDLL:
    """Compile ``source`` (include-expanded .cu text) exporting a launch entry per kernel."""
    exports = "".join(f"TS_EMU_EXPORT({k})\n" for k in kernels)
    text = source + "\n// ---- harness exports\n" + exports
    hdr = HEADER.read_bytes()
    key = hashlib.sha256(hdr + b"\0" + text.encode() + b"\0" + " ".join(CXXFLAGS).encode()).hexdigest()[:20]
    with _lock:
        if key in _libs:
            return _libs[key]
        d = cache_dir()
        so = d / f"{tag}-{key}.so"
        if not so.exists():
            src = d / f"{tag}-{key}.cpp"
            src.write_text(text)
            tmp = d / f"{tag}-{key}.{os.getpid()}.so"
            cmd = [compiler(), *CXXFLAGS, "-include", str(HEADER), "-o", str(tmp), str(src)]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                raise HarnessError(f"g++ failed to build {tag} for the harness:\n{r.stderr[-4000:]}")
            os.replace(tmp, so)
        lib = ctypes.CDLL(str(so))
        for k in kernels:
            fn = getattr(lib, f"ts_launch_{k}")
            fn.argtypes = [ctypes.POINTER(ctypes.c_uint), ctypes.c_uint, ctypes.POINTER(ctypes.c_void_p),
                           ctypes.c_char_p, ctypes.c_int]
            fn.restype = ctypes.c_int
            sig = getattr(lib, f"ts_sig_{k}")
            sig.restype = ctypes.c_char_p
        _libs[key] = lib
        return lib


def signature(lib: ctypes.CDLL, kernel: str) -> str:
    """The kernel's parameter codes as compiled: p pointer, i int32, u uint32, f float, q int64."""
    return getattr(lib, f"ts_sig_{kernel}")().decode()


_CT = {"i": ctypes.c_int32, "u": ctypes.c_uint32, "f": ctypes.c_float, "q": ctypes.c_int64}


@dataclass
class _Guarded:
    arr: np.ndarray
    buf: np.ndarray  # uint8 with GUARD bytes either side


def launch(lib: ctypes.CDLL, kernel: str, grid: tuple[int, ...], block: tuple[int, ...], args: tuple,
           sig: str, shared_mem: int = 0) -> None:
    """Run ``kernel`` over ``grid`` x ``block``; ``args`` are NumPy arrays, None (null) or scalars."""
    if len(args) != len(sig):
        raise HarnessError(f"{kernel}: {len(args)} arguments given, the kernel takes {len(sig)}")
    g = tuple(grid) + (1,) * (3 - len(grid))
    b = tuple(block) + (1,) * (3 - len(block))
    dims = (ctypes.c_uint * 6)(*g, *b)
    holders: list = []
    guarded: list[_Guarded] = []
    ptrs = (ctypes.c_void_p * max(1, len(args)))()
    for i, (a, code) in enumerate(zip(args, sig, strict=True)):
        if code == "p":
            if a is None:
                v = ctypes.c_void_p(0)
            else:
                if not isinstance(a, np.ndarray) or not a.flags.c_contiguous:
                    raise HarnessError(f"{kernel}: argument {i} must be a C-contiguous NumPy array")
                raw = a.view(np.uint8).reshape(-1)
                buf = np.full(raw.size + 2 * GUARD, CANARY, dtype=np.uint8)
                buf[GUARD:GUARD + raw.size] = raw
                guarded.append(_Guarded(a, buf))
                v = ctypes.c_void_p(buf.ctypes.data + GUARD)
        else:
            v = _CT[code](a)
        holders.append(v)
        ptrs[i] = ctypes.cast(ctypes.pointer(v), ctypes.c_void_p)
    err = ctypes.create_string_buffer(512)
    rc = getattr(lib, f"ts_launch_{kernel}")(dims, ctypes.c_uint(shared_mem), ptrs, err, 512)
    if rc != 0:
        raise HarnessError(f"{kernel}: {err.value.decode(errors='replace')}")
    for gd in guarded:
        n = gd.buf.size - 2 * GUARD
        if (gd.buf[:GUARD] != CANARY).any() or (gd.buf[GUARD + n:] != CANARY).any():
            raise HarnessError(f"{kernel}: out-of-bounds write next to an array argument of {n} bytes")
        gd.arr.view(np.uint8).reshape(-1)[:] = gd.buf[GUARD:GUARD + n]
