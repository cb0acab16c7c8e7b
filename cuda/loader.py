"""Load turbospec's CUDA kernels and launch them through CuPy or the host harness.

One Python signature per kernel. The backend follows the arrays: CuPy arrays launch the kernel
on the GPU through ``cupy.RawModule(code=<source>, options=OPTIONS)``; NumPy arrays launch the
same source compiled with g++ through ``cuda/emu`` (a CPU harness for tests without a GPU).
CuPy is imported lazily and only when a CuPy array is seen.

Sources are read from this package and their local ``#include "x.cuh"`` lines are expanded, so
the text handed to NVRTC is self-contained (no include path, and CuPy's compile cache, which is
keyed by the text, cannot serve a stale kernel after a header changes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

CUDA_DIR = Path(__file__).resolve().parent
# What the CuPy backend passes to RawModule. CuPy itself adds "-ftz=true" and
# "-arch=compute_XY" (and -I paths for its own and the toolkit's headers, which change nothing
# here: the expanded sources include no header). nvrtc_options() gives that list, which
# tests/cuda/test_compile.py compiles every source with. Giving --std ourselves stops CuPy from
# adding its default --std=c++11.
OPTIONS: tuple[str, ...] = ("--std=c++17",)
CUPY_ADDED_OPTIONS: tuple[str, ...] = ("-ftz=true",)
MAX_GRID_YZ = 65535  # CUDA's limit on gridDim.y and gridDim.z


def nvrtc_options(arch: int) -> tuple[str, ...]:
    """The exact NVRTC option list CuPy ends up using for compute capability ``arch`` (e.g. 90)."""
    return OPTIONS + CUPY_ADDED_OPTIONS + (f"-arch=compute_{arch}",)


@dataclass(frozen=True)
class KernelSpec:
    file: str
    sig: str  # p pointer, i int32, u uint32, f float32, q int64 (checked against the harness build)


WEIGHT_KERNEL_TYPES = ("q8_0", "q5_0", "q4_k", "q6_k", "tq3_1s", "tq4_1s", "f16", "f32")
MATMUL_NB = 8  # tokens per weight pass in matmul_* (TS_NB in matvec.cu)


def _registry() -> dict[str, KernelSpec]:
    k = {
        # norm.cu, rope.cu, act.cu
        "rmsnorm": KernelSpec("norm.cu", "pppif"),
        "add_rmsnorm": KernelSpec("norm.cu", "pppppif"),
        "rope_neox": KernelSpec("rope.cu", "ppiiif"),
        "geglu": KernelSpec("act.cu", "pppi"),
        # matvec.cu
        "tq_rotate_x": KernelSpec("matvec.cu", "ppi"),
        # kv.cu, attn.cu
        "kv_append": KernelSpec("kv.cu", "pppiiiip"),
        "attn_decode": KernelSpec("attn.cu", "pppppiiiiiiifip"),
        "attn_reduce": KernelSpec("attn.cu", "pppiii"),
        # sample.cu
        "argmax_partial": KernelSpec("sample.cu", "pipp"),
        "argmax_final": KernelSpec("sample.cu", "ppipp"),
        "softmax": KernelSpec("sample.cu", "ppif"),
        "topk": KernelSpec("sample.cu", "piipp"),
        "gather_cluster_ids": KernelSpec("sample.cu", "ppiip"),
        "fill_f32": KernelSpec("sample.cu", "pif"),
        "scatter_f32": KernelSpec("sample.cu", "ppip"),
    }
    for t in WEIGHT_KERNEL_TYPES:
        k[f"matvec_{t}"] = KernelSpec("matvec.cu", "pppii")
        k[f"matmul_{t}"] = KernelSpec("matvec.cu", "pppiii")
        k[f"matvec_rows_{t}"] = KernelSpec("matvec.cu", "ppppii")
        k[f"get_rows_{t}"] = KernelSpec("matvec.cu", "pppiif")
    return k


# every kernel of cuda/*.cu by name (test_compile checks this against what nvcc and NVRTC build)
KERNELS: dict[str, KernelSpec] = _registry()


def cu_files() -> list[Path]:
    return sorted(CUDA_DIR.glob("*.cu"))


_INC = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$', re.M)


def expand(path: Path, seen: set[Path] | None = None) -> str:
    """The text of ``path`` with local includes inlined once each (``#pragma once`` semantics)."""
    seen = set() if seen is None else seen
    path = path.resolve()
    if path in seen:
        return ""
    seen.add(path)
    text = path.read_text()

    def sub(m: re.Match) -> str:
        inc = path.parent / m.group(1)
        return f"// ---- begin {m.group(1)}\n{expand(inc, seen)}\n// ---- end {m.group(1)}"

    return _INC.sub(sub, text).replace("#pragma once", "")


@cache
def source(file: str) -> str:
    return expand(CUDA_DIR / file)


def kernels_in(file: str) -> list[str]:
    return [k for k, s in KERNELS.items() if s.file == file]


# ------------------------------------------------------------------ backends
def is_cupy(a: Any) -> bool:
    return type(a).__module__.split(".")[0] == "cupy"


@cache
def _cupy_module(file: str) -> Any:
    import cupy  # optional dependency: only reached with CuPy arrays

    return cupy.RawModule(code=source(file), options=OPTIONS)


@cache
def _emu_lib(file: str) -> Any:
    from .emu import harness

    lib = harness.build(source(file), kernels_in(file), tag=Path(file).stem)
    for k in kernels_in(file):
        got = harness.signature(lib, k)
        if got != KERNELS[k].sig:
            raise RuntimeError(f"kernel {k}: signature in loader.KERNELS is {KERNELS[k].sig!r}, "
                               f"the source has {got!r}")
    return lib


def launch(name: str, grid: tuple[int, ...], block: tuple[int, ...], args: tuple, shared_mem: int = 0,
           gpu: bool | None = None) -> None:
    """Launch kernel ``name``; ``gpu`` defaults to whether any array argument is a CuPy array."""
    spec = KERNELS[name]
    if gpu is None:
        gpu = any(is_cupy(a) for a in args)
    if gpu:
        conv = []
        for a, c in zip(args, spec.sig, strict=True):
            if c == "p":
                conv.append(np.uint64(0) if a is None else a)
            else:
                conv.append({"i": np.int32, "u": np.uint32, "f": np.float32, "q": np.int64}[c](a))
        fn = _cupy_module(spec.file).get_function(name)
        fn(tuple(grid), tuple(block), tuple(conv), shared_mem=shared_mem)
        return
    from .emu import harness

    harness.launch(_emu_lib(spec.file), name, grid, block, args, spec.sig, shared_mem)


def _xp(a: Any) -> Any:
    if is_cupy(a):
        import cupy

        return cupy
    return np


def _f32(a: Any) -> Any:
    xp = _xp(a)
    return xp.ascontiguousarray(a, dtype=xp.float32)


def _need(a: Any, dtype: Any, what: str) -> None:
    """Arrays a kernel writes in place must already have the kernel's layout (no silent copy)."""
    if a.dtype != dtype or not a.flags.c_contiguous:
        raise ValueError(f"{what} must be a C-contiguous {np.dtype(dtype).name} array, got {a.dtype} "
                         f"{'contiguous' if a.flags.c_contiguous else 'strided'}")


def _weight_bytes(wtype: str, rows: int, k: int) -> int:
    qk, bs = {"q8_0": (32, 34), "q5_0": (32, 22), "q4_k": (256, 144), "q6_k": (256, 210), "tq3_1s": (32, 16),
              "tq4_1s": (32, 20), "f16": (1, 2), "f32": (1, 4)}[wtype]
    return rows * (k // qk) * bs


# ------------------------------------------------------------------ ops: norms, rope, activation
def rmsnorm(x: Any, w: Any, eps: float, out: Any = None, threads: int = 256) -> Any:
    """Row-wise RMSNorm over the last axis of ``x`` (any leading shape); per-head Q/K norm when
    ``x`` is [..., n_heads, head_dim] and ``w`` has head_dim entries. Reference: reference.rmsnorm."""
    x = _f32(x)
    n = x.shape[-1]
    if w.shape != (n,):
        raise ValueError(f"rmsnorm: weight shape {w.shape} does not match the last axis {n}")
    out = _xp(x).empty_like(x) if out is None else out
    _need(out, np.float32, "rmsnorm out")
    rows = x.size // n
    if rows:
        launch("rmsnorm", (rows,), (threads,), (x, _f32(w), out, n, float(eps)))
    return out


def add_rmsnorm(x: Any, y: Any, w_post: Any, w_next: Any, eps: float, h: Any = None,
                threads: int = 256) -> Any:
    """x += rmsnorm(y) * w_post in place; returns h = rmsnorm(x) * w_next (None if w_next is None).
    Reference: reference.add_rmsnorm."""
    _need(x, np.float32, "add_rmsnorm x (updated in place)")
    n = x.shape[-1]
    rows = x.size // n
    if w_next is not None and h is None:
        h = _xp(x).empty_like(x)
    if h is not None:
        _need(h, np.float32, "add_rmsnorm h")
    launch("add_rmsnorm", (rows,), (threads,),
           (x, _f32(y), _f32(w_post), None if w_next is None else _f32(w_next), h, n, float(eps)))
    return h


def rope_neox(x: Any, positions: Any, base: float, n_rot: int | None = None) -> Any:
    """NEOX RoPE in place on x [n_tok, n_heads, head_dim]. Reference: reference.rope_neox."""
    _need(x, np.float32, "rope_neox x (rotated in place)")
    n_tok, n_heads, head_dim = x.shape
    n_rot = head_dim if n_rot is None else n_rot
    pos = _xp(x).ascontiguousarray(positions, dtype=np.int32)
    launch("rope_neox", (n_tok, n_heads), (n_rot // 2,), (x, pos, n_heads, head_dim, n_rot, float(base)))
    return x


def geglu(gate: Any, up: Any, out: Any = None) -> Any:
    """gelu_tanh(gate) * up. Reference: reference.geglu."""
    gate, up = _f32(gate), _f32(up)
    out = _xp(gate).empty_like(gate) if out is None else out
    n = gate.size
    blocks = max(1, min(1024, (n + 255) // 256))
    launch("geglu", (blocks,), (256,), (gate, up, out, n))
    return out


# ------------------------------------------------------------------ ops: quantized matvec / matmul
def _check_weight(wtype: str, k: int, w: Any = None, rows: int | None = None) -> None:
    if wtype not in WEIGHT_KERNEL_TYPES:
        raise ValueError(f"no CUDA matvec for weight type {wtype!r}; have {', '.join(WEIGHT_KERNEL_TYPES)}")
    qk = 256 if wtype in ("q4_k", "q6_k") else 32
    if k % qk:
        raise ValueError(f"{wtype}: K={k} is not a multiple of {qk}")
    if w is not None:
        _need(w, np.uint8, f"{wtype} weight (raw GGML bytes)")
        if rows is not None and w.size != _weight_bytes(wtype, rows, k):
            raise ValueError(f"{wtype} weight has {w.size} bytes, [{rows}, {k}] needs {_weight_bytes(wtype, rows, k)}")


def _prep_x(wtype: str, x: Any, xr: Any = None) -> Any:
    """TQ weights are stored rotated per 32-block: rotate the input once instead (quant.cuh).
    ``xr``: a buffer of x's size for the rotated copy (none is allocated then)."""
    if not wtype.startswith("tq"):
        return x
    xr = _xp(x).empty_like(x) if xr is None else xr.reshape(x.shape)
    n = x.size
    launch("tq_rotate_x", (max(1, min(4096, -(-n // 256))),), (256,), (x, xr, n))
    return xr


def get_rows(w: Any, wtype: str, ids: Any, k: int, scale: float = 1.0, out: Any = None) -> Any:
    """Y[i] = scale * dequantized row ids[i] of a raw GGML weight of width ``k`` (the embedding
    lookup; TQ rows come back un-rotated). Reference: reference.dequant_rows(...)[ids] * scale."""
    _check_weight(wtype, k, w)
    if w.size % _weight_bytes(wtype, 1, k):
        raise ValueError(f"{wtype} weight of {w.size} bytes is not a whole number of rows of K={k}")
    xp = _xp(w)
    ids = xp.ascontiguousarray(ids, dtype=xp.int32).reshape(-1)
    n = ids.size
    out = xp.empty((n, k), xp.float32) if out is None else out
    _need(out, np.float32, "get_rows out")
    if n:
        launch(f"get_rows_{wtype}", ((n + 3) // 4,), (128,), (w, ids, out, n, k, float(scale)))
    return out


def matvec_rows(w: Any, wtype: str, ids: Any, x: Any, out: Any = None) -> Any:
    """y[i] = W[ids[i]] . x (gathered rows of a raw GGML weight). Reference: reference.matvec_rows."""
    x = _f32(x)
    k = x.shape[-1]
    _check_weight(wtype, k, w)
    if w.size % _weight_bytes(wtype, 1, k):
        raise ValueError(f"{wtype} weight of {w.size} bytes is not a whole number of rows of K={k}")
    xp = _xp(x)
    ids = xp.ascontiguousarray(ids, dtype=xp.int32)
    n = ids.size
    out = xp.empty((n,), xp.float32) if out is None else out
    if n:
        launch(f"matvec_rows_{wtype}", ((n + 3) // 4,), (128,), (w, ids, _prep_x(wtype, x), out, n, k))
    return out


def matvec(w: Any, wtype: str, x: Any, rows: int, out: Any = None, xr: Any = None) -> Any:
    """y[rows] = W x for a raw GGML weight ``w`` (uint8 bytes of [rows, K]), x [K] f32.
    Reference: reference.matmul. K must be a multiple of the type's block (32 or 256)."""
    return matmul(w, wtype, x, rows, out, xr)


def matmul(w: Any, wtype: str, x: Any, rows: int, out: Any = None, xr: Any = None) -> Any:
    """Y[T, rows] = X W^T for X [T, K] (or [K] -> matvec kernel). Reference: reference.matmul.
    ``xr``: scratch of x's size for TQ types (the rotated input), so nothing is allocated."""
    x = _f32(x)
    k = x.shape[-1]
    _check_weight(wtype, k, w, rows)
    xp = _xp(x)
    x = _prep_x(wtype, x, xr)
    if x.ndim == 1:
        out = xp.empty((rows,), xp.float32) if out is None else out
        launch(f"matvec_{wtype}", ((rows + 3) // 4,), (128,), (w, x, out, rows, k))
        return out
    t = x.shape[0]
    out = xp.empty((t, rows), xp.float32) if out is None else out
    launch(f"matmul_{wtype}", ((rows + 3) // 4, (t + MATMUL_NB - 1) // MATMUL_NB), (128,),
           (w, x, out, rows, k, t))
    return out


# ------------------------------------------------------------------ ops: KV cache
KV_TYPE_ID = {"f16": 0, "q8_0": 1, "q4_0": 2, "turbo4": 3, "turbo3": 4, "turbo2": 5, "turbo4lm": 6}


def kv_append(x: Any, cache: Any, kvtype: str, pos0: int, eq: Any = None, pos_dev: Any = None) -> None:
    """Encode rows x [n_tok, n_kv_heads, D] into cache [n_ctx, n_kv_heads, row_bytes] at pos0...
    ``eq``: optional [D] K equalization scales (x * eq is stored). Reference: reference.kv_encode.
    ``pos_dev``: optional int32 device array whose first entry the kernel uses instead of pos0
    (for CUDA graphs; pos0 is then only checked against the cache size)."""
    x = _f32(x)
    n_tok, n_heads, d = x.shape
    if n_heads > MAX_GRID_YZ:
        raise ValueError(f"kv_append: at most {MAX_GRID_YZ} heads")
    if kvtype not in KV_TYPE_ID:
        raise ValueError(f"unknown cache type {kvtype!r}; have {', '.join(KV_TYPE_ID)}")
    if d % 128:
        raise ValueError(f"head_dim {d} is not a multiple of 128 (zero-pad it)")
    if pos_dev is not None and n_tok > MAX_GRID_YZ:
        raise ValueError(f"kv_append with pos_dev: at most {MAX_GRID_YZ} rows")
    if pos0 < 0 or pos0 + n_tok > cache.shape[0]:
        raise ValueError(f"cache has {cache.shape[0]} cells, appending {n_tok} at {pos0}")
    _need(cache, np.uint8, "KV cache")
    if cache.shape[1:] != (n_heads, _kv_row_bytes(kvtype, d)):
        raise ValueError(f"{kvtype} cache rows are {cache.shape[1:]}, need ({n_heads}, {_kv_row_bytes(kvtype, d)})")
    eqa = None if eq is None else _f32(eq)
    for t0 in range(0, n_tok, MAX_GRID_YZ):  # gridDim.z is at most 65535
        xs = x[t0:t0 + MAX_GRID_YZ]
        launch("kv_append", (d // 128, n_heads, xs.shape[0]), (128,),
               (xs, eqa, cache, KV_TYPE_ID[kvtype], pos0 + t0, n_heads, d, pos_dev))


def _kv_row_bytes(kvtype: str, d: int) -> int:
    qk, bs = {"f16": (1, 2), "q8_0": (32, 34), "q4_0": (32, 18), "turbo4": (128, 68), "turbo3": (128, 50),
              "turbo2": (128, 34), "turbo4lm": (128, 68)}[kvtype]
    return d // qk * bs


ATT_D = 256
ATT_GMAX = 4


def attn_split(n_cells: int, max_split: int = 512, min_chunk: int = 128) -> tuple[int, int]:
    """(n_split, chunk) for n_cells: chunks of >= min_chunk cells, at most max_split of them.
    512 splits keep ~4 blocks per SM of an H200 busy on long contexts (flash-decoding); the
    reduce reads n_split x n_q_heads x 1 KiB of partials, small next to the cache."""
    if n_cells <= 0:
        return 1, 1
    n_split = max(1, min(max_split, -(-n_cells // min_chunk)))
    chunk = -(-n_cells // n_split)
    return n_split, chunk


def attn_decode(q: Any, kc: Any, vc: Any, ktype: str, vtype: str, kv_start: int, kv_end: int, scale: float,
                n_split: int | None = None, out: Any = None, window: int = 0, end_dev: Any = None,
                work: tuple[Any, Any] | None = None) -> Any:
    """Attention of Q [n_q_heads, 256] (one token) or [T, n_q_heads, 256] (causal prefill) over
    K/V caches [n_ctx, n_kv_heads, row_bytes] (uint8). Query t attends cells
    [max(kv_start, kv_end + t - window) if window else kv_start, kv_end + t): for prefill, append
    the T tokens' K/V first and pass kv_end = the first query's position + 1.
    Returns Q's shape. Reference: reference.attn_decode / reference.attn_prefill.
    Two launches: attn_decode over n_split chunks of the sequence, then attn_reduce.
    ``end_dev``: optional int32 device array whose first entry the kernel uses as kv_end (CUDA
    graphs: give n_split; kv_end is then only checked against the cache size, and the window
    start and the chunk are derived on the device). ``work``: (o_part, ml_part) buffers of at
    least [n_split, T, n_q_heads, 256] and [n_split, T, n_q_heads, 2] floats (none allocated)."""
    q = _f32(q)
    single = q.ndim == 2
    q3 = q.reshape((1,) + q.shape) if single else q
    t, nq, d = q3.shape
    n_kv = kc.shape[1]
    for c, ty, what in ((kc, ktype, "K"), (vc, vtype, "V")):
        if ty not in KV_TYPE_ID:
            raise ValueError(f"unknown cache type {ty!r}; have {', '.join(KV_TYPE_ID)}")
        _need(c, np.uint8, f"{what} cache")
        if c.ndim != 3 or c.shape[1:] != (n_kv, _kv_row_bytes(ty, d)) or c.shape[0] < kv_end + (
                q.shape[0] if q.ndim == 3 else 1) - 1:
            raise ValueError(f"{what} cache of shape {c.shape} does not hold {ty} rows of head_dim {d} up to "
                             f"cell {kv_end}")
    if d != ATT_D:
        raise ValueError(f"attn_decode supports head_dim {ATT_D}, got {d}")
    if nq % n_kv or nq // n_kv > ATT_GMAX:
        raise ValueError(f"{nq} Q heads over {n_kv} KV heads: need a ratio of at most {ATT_GMAX}")
    if t > MAX_GRID_YZ:
        raise ValueError(f"attn_decode: at most {MAX_GRID_YZ} queries per launch")
    if window > 0 and end_dev is None:  # the first query's window start is the earliest cell any query reads
        kv_start = max(kv_start, kv_end - window)
    n_cells = kv_end + t - 1 - kv_start
    if n_split is None:
        n_split, chunk = attn_split(n_cells)
    else:
        chunk = max(1, -(-n_cells // n_split))
    xp = _xp(q)
    if end_dev is not None and n_split is None:
        raise ValueError("attn_decode with end_dev needs an explicit n_split")
    if work is None:
        o_part = xp.empty((n_split, t, nq, d), xp.float32)
        ml_part = xp.empty((n_split, t, nq, 2), xp.float32)
    else:
        o_part = work[0].reshape(-1)[:n_split * t * nq * d]
        ml_part = work[1].reshape(-1)[:n_split * t * nq * 2]
    out = xp.empty(q.shape, xp.float32) if out is None else out
    launch("attn_decode", (n_split, n_kv, t), (128,),
           (q3, kc, vc, o_part, ml_part, KV_TYPE_ID[ktype], KV_TYPE_ID[vtype], n_kv, nq // n_kv, kv_start, kv_end,
            chunk, float(scale), int(window), end_dev))
    launch("attn_reduce", (t * nq,), (ATT_D,), (o_part, ml_part, out, n_split, t * nq, KV_TYPE_ID[vtype]))
    return out


# ------------------------------------------------------------------ ops: sampling and the routed head
ARGMAX_BLOCKS = 264  # 2 x the SMs of an H100/H200; any count is correct


def argmax(x: Any, ids: Any = None, out: Any = None, blocks: int = ARGMAX_BLOCKS,
           work: tuple[Any, Any] | None = None) -> Any:
    """Index of the largest finite-or-inf entry of x (first on ties; NaN never wins) as an int32[1]
    array on x's device — only this id needs to reach the host. With ``ids``: ids[index].
    Reference: reference.argmax. ``work``: (f32, int32) buffers of >= ``blocks`` entries."""
    x = _f32(x).reshape(-1)
    xp = _xp(x)
    n = x.size
    g = max(1, min(blocks, -(-n // 256)))
    if work is None:
        pv = xp.empty((g,), xp.float32)
        pi = xp.empty((g,), xp.int32)
    else:
        pv, pi = work[0][:g], work[1][:g]
    out = xp.empty((1,), xp.int32) if out is None else out
    launch("argmax_partial", (g,), (256,), (x, n, pv, pi))
    launch("argmax_final", (1,), (256,), (pv, pi, g, None if ids is None else xp.ascontiguousarray(ids, xp.int32),
                                         out))
    return out


def softmax(x: Any, temperature: float = 1.0, out: Any = None, threads: int = 1024) -> Any:
    """Row-wise softmax(x / temperature) over the last axis. Reference: reference.softmax."""
    x = _f32(x)
    n = x.shape[-1]
    out = _xp(x).empty_like(x) if out is None else out
    launch("softmax", (x.size // n,), (threads,), (x, out, n, 1.0 / float(temperature)))
    return out


def topk(x: Any, k: int, threads: int = 256) -> tuple[Any, Any]:
    """(indices int32[k], values f32[k]) of the k largest entries, descending, ties to the lower index.
    Reference: reference.topk."""
    x = _f32(x).reshape(-1)
    xp = _xp(x)
    n = x.size
    if not 0 < k <= n:
        raise ValueError(f"topk: k={k} must be in 1..{n}")
    idx = xp.empty((k,), xp.int32)
    val = xp.empty((k,), xp.float32)
    launch("topk", (1,), (threads,), (x, n, k, idx, val), shared_mem=n)
    return idx, val


def routed_head(h: Any, centroids: Any, ctype: str, n_centroids: int, token_ordering: Any, emb: Any, etype: str,
                top_k: int, full_row: bool = False) -> tuple[Any, Any]:
    """Centroid-routed LM head (DESIGN.md, MTP assistant): centroid logits = C h; top_k clusters;
    their token ids from token_ordering [n_centroids, n_vocab / n_centroids]; score only those
    with the tied embedding rows; greedy id = the best of them.
    Returns (token id int32[1], full logits row filled with -1e30 outside the candidates or None).
    Reference: reference.routed_head."""
    h = _f32(h)
    xp = _xp(h)
    n_vocab = token_ordering.size
    per = n_vocab // n_centroids
    clogits = matvec(centroids, ctype, h, n_centroids)
    clusters, _ = topk(clogits, top_k)
    ids = xp.empty((top_k * per,), xp.int32)
    launch("gather_cluster_ids", (max(1, min(1024, -(-top_k * per // 256))),), (256,),
           (clusters, xp.ascontiguousarray(token_ordering, xp.int32), per, top_k, ids))
    vals = matvec_rows(emb, etype, ids, h)
    tok = argmax(vals, ids=ids)
    row = None
    if full_row:
        row = xp.empty((n_vocab,), xp.float32)
        launch("fill_f32", (max(1, min(1024, -(-n_vocab // 256))),), (256,), (row, n_vocab, -1e30))
        launch("scatter_f32", (max(1, min(1024, -(-ids.size // 256))),), (256,), (ids, vals, ids.size, row))
    return tok, row
