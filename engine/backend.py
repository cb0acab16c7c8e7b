"""Backend selection (NumPy on the CPU, CuPy on an NVIDIA GPU) and BLAS thread control."""

from __future__ import annotations

import ctypes
import os
import sys
from dataclasses import dataclass

from turbospec.errors import UserError

BACKENDS = ("auto", "numpy", "cupy")


@dataclass
class BackendChoice:
    name: str  # "numpy" | "cupy"
    device: str
    reason: str


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _cupy_device() -> tuple[bool, str]:
    try:
        import cupy  # noqa: F401
    except Exception as e:  # ImportError, or a broken CUDA install
        return False, f"CuPy is not installed ({type(e).__name__}); `pip install 'turbospec[gpu]'`"
    try:
        import cupy

        n = cupy.cuda.runtime.getDeviceCount()
        if n < 1:
            return False, "CuPy found no CUDA device"
        props = cupy.cuda.runtime.getDeviceProperties(0)
        name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        return True, name
    except Exception as e:
        return False, f"CuPy cannot use a CUDA device ({type(e).__name__}: {str(e).splitlines()[0][:80]})"


def choose_backend(name: str = "auto", quiet: bool = False) -> BackendChoice:
    if name not in BACKENDS:
        raise UserError(f"unknown backend {name!r}; use one of {', '.join(BACKENDS)}")
    if name == "numpy":
        return BackendChoice("numpy", cpu_name(), "asked for")
    ok, info = _cupy_device()
    if name == "cupy":
        if not ok:
            raise UserError(f"--backend cupy needs a usable GPU: {info}; use --backend numpy")
        return BackendChoice("cupy", info, "asked for")
    if ok:
        choice = BackendChoice("cupy", info, f"auto: CUDA device {info} is usable")
    else:
        choice = BackendChoice("numpy", cpu_name(), f"auto: {info}")
    if not quiet:
        print(f"turbospec: backend {choice.name} ({choice.reason})", file=sys.stderr)
    return choice


def set_threads(n: int | None) -> int:
    """Use ``n`` threads: turbospec's worker pool splits every large product by output rows
    across them, and BLAS runs single-threaded inside each worker (two levels of threads on
    2 cores oversubscribe: prefill ran 2.8x slower with both at 2)."""
    if not n or n <= 0:
        n = os.cpu_count() or 1
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    os.environ["TURBOSPEC_THREADS"] = str(n)
    if "numpy" in sys.modules:
        _set_openblas_threads(1)
    from turbospec.engine.linear import set_workers

    set_workers(n)
    return n


def _set_openblas_threads(n: int) -> None:
    import glob

    import numpy

    libdir = os.path.join(os.path.dirname(numpy.__file__), "..", "numpy.libs")
    for lib in glob.glob(os.path.join(libdir, "*openblas*")):
        try:
            h = ctypes.CDLL(lib)
        except OSError:
            continue
        for sym in ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_", "openblas_set_num_threads"):
            fn = getattr(h, sym, None)
            if fn is not None:
                fn(ctypes.c_int(n))
                return


def blas_info() -> str:
    try:
        import numpy

        cfg = numpy.show_config(mode="dicts")
        b = cfg["Build Dependencies"]["blas"]
        return f"{b.get('name')} {b.get('version')}"
    except Exception:
        return "unknown"
