"""Linear layers over stored weights: ``y = x @ W.T`` for W of shape (out, in).

Two storages on the CPU:

- ``Dense``: float32 W, one BLAS call. Exact (what the GGUF dequantizes to).
- ``BlockInt8``: the GGUF's Q8_0 / Q5_0 / Q4_0 / Q4_K / Q6_K blocks as int8 plus a float32
  scale (and minimum) per 16 or 32 weights: exact, 1.125-1.25 bytes a weight; what ``auto``
  storage uses wherever the file allows.
- ``RowInt16``: W ≈ q * s[:, None] with q int16 and one float32 scale per row (|error| ≤ s/2,
  i.e. 2^-16 of the row's largest weight — 256x finer than the Q8_0 rounding the default
  model's token embedding already carries). Half the bytes of float32. Up to ROW_LOOP_MAX
  tokens (decode and verification) go through the native kernel (engine/native/rowint16.c:
  int16 read once, all tokens multiplied while the row is in L1, a fixed summation order per
  output, so batch-invariant by construction); without it, and for prefill batches, the product
  runs over row tiles: cast a tile of int16 to float32 (stays in L2), BLAS on the tile, scale.

Napkin math for the default model's tied LM head (262144 x 640 = 168M weights), one token:
float32 streams 671 MB (~33 ms at 20 GB/s); int16 streams 336 MB, and the int16->float32 cast
runs at ~6 G elements/s per core, so two threads finish the 168M casts in ~14 ms while reading
half the bytes. The native kernel streams the int16 directly: the LM head in ~8 ms for one token
and ~14 ms for four on two cores (NumPy: ~18 ms and ~34 ms). The reference for
``RowInt16.apply`` is ``x @ (q * s[:, None]).T`` (tests).
"""

from __future__ import annotations

import os
import threading
from functools import partial

import numpy as np

from turbospec.engine import native

# Batches of up to this many tokens are multiplied one token at a time (matrix-vector products
# on the same cached tile), so a token's result is bit-identical whether it is decoded alone or
# verified among drafts: BLAS's matrix-matrix kernels sum in another order than its
# matrix-vector kernel, and with a quantized KV cache that last-bit difference can flip a code
# and then a greedy token. The tile cast dominates, so the per-token products cost little.
ROW_LOOP_MAX = 32

_N_WORKERS: int | None = None

# Decode and verification batches (<= ROW_LOOP_MAX tokens) multiply BlockInt8 weights with the
# activations quantized to int8 per group (engine/native/q8act.c, as llama.cpp's CPU backend does
# for these types): integer dot products, ~3x less work a token than forming every weight as a
# float. ``TURBOSPEC_ACT_INT8=0`` keeps float activations (ts_blockint8_matmul). Either way one
# process uses one path for every product, so speculative output stays token-identical to plain
# decoding; prefill batches and the NumPy fallback always use float activations.
ACT_INT8 = os.environ.get("TURBOSPEC_ACT_INT8", "1").strip().lower() not in ("0", "off", "no", "false")


def set_workers(n: int) -> None:
    """Worker threads for the row-parallel products (BLAS itself runs single-threaded)."""
    global _N_WORKERS
    _N_WORKERS = max(1, int(n))


def n_workers() -> int:
    global _N_WORKERS
    if _N_WORKERS is None:
        _N_WORKERS = max(1, int(os.environ.get("TURBOSPEC_THREADS", "0") or 0) or (os.cpu_count() or 1))
    return _N_WORKERS


class _Helper:
    """One persistent thread that runs a job when handed one: two plain locks as semaphores
    (~16 µs a round trip here, against ~36 µs for ThreadPoolExecutor's submit + result)."""

    def __init__(self, name: str):
        self._req = threading.Lock()
        self._req.acquire()
        self._done = threading.Lock()
        self._done.acquire()
        self._job = None
        self._err: BaseException | None = None
        threading.Thread(target=self._loop, name=name, daemon=True).start()

    def _loop(self) -> None:
        while True:
            self._req.acquire()
            job = self._job
            if job is None:
                return
            try:
                job()
            except BaseException as e:  # handed back to the caller by wait()
                self._err = e
            self._done.release()

    def start(self, job) -> None:
        self._err = None
        self._job = job
        self._req.release()

    def wait(self) -> BaseException | None:
        self._done.acquire()
        self._job = None
        return self._err

    def stop(self) -> None:
        self._job = None
        self._req.release()


class _Crew:
    """``n_workers() - 1`` helper threads plus the calling thread."""

    def __init__(self, n: int):
        self.n = n
        self.busy = threading.Lock()
        self.helpers = [_Helper(f"turbospec-linear-{i}") for i in range(n - 1)]

    def run(self, jobs: list) -> None:
        """Run every job; the first ones on the helpers, the rest in the calling thread. When
        another thread is using the crew (a drafter thread beside the target), this caller runs
        its jobs itself: both cores are busy then anyway."""
        if len(jobs) == 1 or not self.helpers or not self.busy.acquire(blocking=False):
            for job in jobs:
                job()
            return
        try:
            handed = list(zip(self.helpers, jobs[: len(jobs) - 1], strict=False))
            for h, job in handed:
                h.start(job)
            err: BaseException | None = None
            try:
                for job in jobs[len(handed):]:
                    job()
            except BaseException as e:
                err = e
            for h, _ in handed:  # always collect every helper before the outputs are touched
                while True:
                    try:
                        e = h.wait()
                        break
                    except BaseException as interrupt:  # Ctrl-C while waiting: wait on, raise after
                        err = err or interrupt
                err = err or e
            if err is not None:
                raise err
        finally:
            self.busy.release()

    def close(self) -> None:
        with self.busy:  # after any run in flight
            for h in self.helpers:
                h.stop()


_CREW: _Crew | None = None
_CREW_LOCK = threading.Lock()


def run_ranges(fn, n: int, step: int) -> None:
    """``fn(a, b)`` over [0, n) in ranges of ``step``, spread over the crew (``n_workers()``
    threads, the caller included); the calling thread computes the last range itself."""
    global _CREW
    jobs = [partial(fn, a, min(a + step, n)) for a in range(0, n, step)]
    if len(jobs) <= 1:
        for job in jobs:
            job()
        return
    with _CREW_LOCK:
        if _CREW is None or _CREW.n != n_workers():
            if _CREW is not None:
                _CREW.close()
            _CREW = _Crew(n_workers())
        crew = _CREW
    crew.run(jobs)


def _product(w: np.ndarray, x: np.ndarray, out: np.ndarray) -> None:
    """out = x @ w.T; token by token (matrix-vector) for small batches, see ROW_LOOP_MAX."""
    if x.shape[0] <= ROW_LOOP_MAX:
        for r in range(x.shape[0]):
            np.matmul(w, x[r], out=out[r])
    else:
        np.matmul(x, w.T, out=out)


PARALLEL_MIN_WEIGHTS = 1 << 18  # smaller products run in the calling thread. Since the caller
# computes one range itself (one hand-off per split instead of one per range, ~50 µs each)
# every layer product of the default model is worth splitting: decode 16.1 -> 17.4 tok/s in an
# interleaved A/B run (2 threads; the LM head 27.8 -> 22.9 ms, gate+up 0.51 -> 0.32 ms)


POOL = os.environ.get("TURBOSPEC_POOL", "1").strip().lower() not in ("0", "off", "no", "false")
POOL_MIN_WEIGHTS = 1 << 16  # decode products split their rows over the threads in C (pool.c, ~1 µs
# a split while its helpers spin) from this size on: every layer product of the default model.
# ``TURBOSPEC_POOL=0`` goes back to the Python crew below (split from 2M weights on).


NATIVE_PARALLEL_MIN_WEIGHTS = 1 << 21  # the same rule on the native kernel, which streams a
# matrix at DRAM speed: there a split pays for its hand-off only from ~2M weights on. The default
# model's q+k+v (0.98M), attn_output (0.66M) and ffn_down (1.3M) run in the calling thread,
# gate+up (2.6M) and the LM head split. Interleaved A/B, 14 repetitions, 2 threads, forward of T
# tokens: T = 1 33.8 -> 29.1 ms, T = 2 37.7 -> 33.9, T = 3 41.3 -> 39.7 (1M: 31.9 / 36.3 / 39.0).
# The kernel's per-output arithmetic ignores the split, so this changes no bits.


SPLIT_ALIGN = 16  # row ranges start at multiples of this (BLAS's gemv kernels work on row groups)


def _parallel_rows(fn, x: np.ndarray, n_out: int, min_weights: int | None = None) -> np.ndarray:
    """out = f(x) computed by ``fn(x2, out, r0, r1)`` over equal row ranges, one per worker.

    The ranges depend only on n_out and the worker count (never on the batch), so a token's
    result is the same decoded alone or verified in a batch. Ranges are equal, not whole
    tiles: whole 1024-row tiles split q+k+v (1536 rows) 1024/512 and left attn_output (640
    rows = one tile) on one thread."""
    x2 = np.ascontiguousarray(x.reshape(-1, x.shape[-1]), dtype=np.float32)
    out = np.empty((x2.shape[0], n_out), np.float32)
    nw = min(n_workers(), -(-n_out // SPLIT_ALIGN))
    if n_out * x2.shape[1] < (min_weights or PARALLEL_MIN_WEIGHTS) and x2.shape[0] <= ROW_LOOP_MAX:
        nw = 1
    if nw <= 1:
        fn(x2, out, 0, n_out)
    else:
        step = -(-n_out // nw)
        step = -(-step // SPLIT_ALIGN) * SPLIT_ALIGN
        run_ranges(lambda a, b: fn(x2, out, a, b), n_out, step)
    return out.reshape(*x.shape[:-1], n_out)


class Dense:
    """float32 weight (out, in)."""

    MIN_PARALLEL = 1 << 16  # weights below this run in the calling thread

    def __init__(self, w: np.ndarray):
        self.w = w
        self.shape = w.shape

    @property
    def nbytes(self) -> int:
        return int(self.w.nbytes)

    def _range(self, x: np.ndarray, out: np.ndarray, r0: int, r1: int) -> None:
        _product(self.w[r0:r1], x, out[:, r0:r1])

    def apply(self, x: np.ndarray) -> np.ndarray:
        if self.w.size < self.MIN_PARALLEL:
            x2 = np.ascontiguousarray(x.reshape(-1, x.shape[-1]), dtype=np.float32)
            out = np.empty((x2.shape[0], self.w.shape[0]), np.float32)
            _product(self.w, x2, out)
            return out.reshape(*x.shape[:-1], self.w.shape[0])
        return _parallel_rows(self._range, x, self.w.shape[0])

    def rows(self, idx: np.ndarray) -> np.ndarray:
        return np.asarray(self.w[idx], dtype=np.float32)


def quantize_rows_int16(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row symmetric int16: returns (q int16 (out, in), s float32 (out,))."""
    w = np.asarray(w, dtype=np.float32)
    amax = np.max(np.abs(w), axis=1)
    s = (amax / 32767.0).astype(np.float32)
    inv = np.where(s > 0, 1.0 / np.where(s > 0, s, 1.0).astype(np.float64), 0.0)
    q = np.empty(w.shape, np.int16)
    for a in range(0, w.shape[0], 4096):  # float64 rounding, a slab at a time
        q[a : a + 4096] = np.rint(w[a : a + 4096] * inv[a : a + 4096, None])
    return q, s


class _RowProducts:
    """What the integer storages share: ``_range(x, out, r0, r1)`` (native kernel or widened
    tiles) spread over the crew by ``apply``, or run in the calling thread by ``apply_serial``."""

    TILE_ELEMS = 1024 * 640  # a float32 tile of 2.6 MB (L2 is 1 MB here, L3 32 MB; 1024 rows measured
    # 10% faster than 512 on the LM head: fewer Python round trips)
    q: np.ndarray
    _native_ok: bool

    def _range(self, x: np.ndarray, out: np.ndarray, r0: int, r1: int) -> None:
        raise NotImplementedError

    @property
    def tile_rows(self) -> int:
        return max(16, self.TILE_ELEMS // self.q.shape[1] // 16 * 16)

    def _pool(self, lib, x: np.ndarray, out: np.ndarray, threads: int) -> None:
        raise NotImplementedError

    def apply(self, x: np.ndarray) -> np.ndarray:
        lib = native.library() if self._native_ok else None
        if lib is not None and POOL and x.size <= ROW_LOOP_MAX * x.shape[-1]:
            # decode / verification: one native call, rows split over the threads in C (pool.c)
            x2 = np.ascontiguousarray(x.reshape(-1, x.shape[-1]), dtype=np.float32)
            out = np.empty((x2.shape[0], self.shape[0]), np.float32)
            small = self.shape[0] * self.shape[1] < POOL_MIN_WEIGHTS
            self._pool(lib, x2, out, 1 if small else n_workers())
            return out.reshape(*x.shape[:-1], self.shape[0])
        native_path = lib is not None
        return _parallel_rows(self._range, x, self.q.shape[0], NATIVE_PARALLEL_MIN_WEIGHTS if native_path else None)

    def apply_serial(self, x: np.ndarray) -> np.ndarray:
        """apply() in the calling thread only: for products of ~1 MB, where handing half to the
        crew and waiting for it (~50 µs) costs more than it saves (the MTP assistant's step)."""
        x2 = np.ascontiguousarray(x.reshape(-1, x.shape[-1]), dtype=np.float32)
        out = np.empty((x2.shape[0], self.q.shape[0]), np.float32)
        self._range(x2, out, 0, self.q.shape[0])
        return out.reshape(*x.shape[:-1], self.q.shape[0])


class RowInt16(_RowProducts):
    """int16 weight with a float32 scale per output row; the native kernel for decode-sized
    batches, else tiled cast + BLAS."""

    def __init__(self, q: np.ndarray, s: np.ndarray):
        self.q = q
        self.s = s
        self.shape = q.shape
        # the native kernel reads the arrays in place: int16 rows and float32 scales, C order
        self._native_ok = (q.dtype == np.int16 and q.ndim == 2 and q.flags.c_contiguous
                           and s.dtype == np.float32 and s.flags.c_contiguous)

    @property
    def nbytes(self) -> int:
        return int(self.q.nbytes + self.s.nbytes)

    def rows(self, idx: np.ndarray) -> np.ndarray:
        return self.q[idx].astype(np.float32) * self.s[idx, None]

    def score_rows(self, idx: np.ndarray, h: np.ndarray) -> np.ndarray:
        """rows(idx) @ h without the float32 copy of every row: gather int16 rows in blocks of
        512 (a 1.3 MB float32 tile stays in L2), cast, product, then the row scales. The MTP
        head scores its 4096 routed candidates with this (gathering + scaling all of them first
        cost ~9 ms a draft step)."""
        idx = np.asarray(idx).reshape(-1)
        lib = native.library() if self._native_ok else None
        if lib is not None:
            return native.rowint16_gather(lib, self.q, self.s, idx, h)
        return self.score_rows_numpy(idx, h)

    def score_rows_numpy(self, idx: np.ndarray, h: np.ndarray) -> np.ndarray:
        """score_rows without the native kernel."""
        out = np.empty(idx.size, np.float32)
        blk = 512
        buf = np.empty((min(blk, idx.size), self.q.shape[1]), np.float32)
        h = np.asarray(h, np.float32)
        for a in range(0, idx.size, blk):
            b = min(a + blk, idx.size)
            t = buf[: b - a]
            np.copyto(t, self.q[idx[a:b]], casting="unsafe")
            np.matmul(t, h, out=out[a:b])
        out *= self.s[idx]
        return out

    def _pool(self, lib, x: np.ndarray, out: np.ndarray, threads: int) -> None:
        native.pool_matmul(lib, "rowint16", self.q, self.s, None, x, out, threads)

    def _range(self, x: np.ndarray, out: np.ndarray, r0: int, r1: int) -> None:
        if x.shape[0] <= ROW_LOOP_MAX and self._native_ok:
            lib = native.library()
            if lib is not None:
                native.rowint16_matmul(lib, self.q, self.s, x, out, r0, r1)
                return
        tile = self.tile_rows
        buf = np.empty((tile, self.q.shape[1]), np.float32)
        for a in range(r0, r1, tile):
            b = min(a + tile, r1)
            t = buf[: b - a]
            np.copyto(t, self.q[a:b], casting="unsafe")
            _product(t, x, out[:, a:b])
        np.multiply(out[:, r0:r1], self.s[r0:r1], out=out[:, r0:r1])



def block_int8_exact(w: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """w (out, in) as block int8 (q int8, d float32 per 32) when that is exact — a matrix
    dequantized from Q8_0 (or Q5_0, Q4_0) is, since a block's largest |value| is a small
    integer times its f16 scale — else None. The candidate scale is the block's max |w| / 127
    (Q8_0), else / 16, 15, 8 or 7 (Q5_0, Q4_0), the first that gives integers times the scale."""
    w = np.asarray(w, np.float32)
    if w.ndim != 2 or w.shape[1] % 32 or w.size == 0:
        return None
    b = w.reshape(w.shape[0], -1, 32)
    amax = np.abs(b).max(axis=2)
    best_q = np.zeros(b.shape, np.int8)
    best_d = np.zeros(amax.shape, np.float32)
    todo = amax > 0
    for m in (127.0, 16.0, 15.0, 8.0, 7.0):
        if not todo.any():
            break
        d = (amax / np.float32(m)).astype(np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            qf = np.rint(b / np.where(d > 0, d, 1)[:, :, None])
        in_range = ((qf >= -128) & (qf <= 127)).all(axis=2)
        ok = todo & in_range & ((qf.astype(np.float32) * d[:, :, None]) == b).all(axis=2)
        best_q[ok] = qf[ok].astype(np.int8)
        best_d[ok] = d[ok]
        todo &= ~ok
    if todo.any():
        return None
    return best_q.reshape(w.shape), best_d


def q8act_quantize(x: np.ndarray, G: int) -> tuple[np.ndarray, np.ndarray]:
    """x (T, K) float32 -> (qx int32 (T, K), dx float32 (T, K / G)): per group of G,
    dx = max |x| / 127 and qx = rint(x / dx) in [-127, 127] (0 where dx is 0); a token with a
    non-finite value gets dx = NaN everywhere. engine/native/q8act.c quantize_token."""
    x = np.asarray(x, np.float32)
    T, K = x.shape
    xg = x.reshape(T, K // G, G)
    finite = np.isfinite(xg)
    amax = np.where(finite, np.abs(xg), np.float32(0)).max(axis=2).astype(np.float32)
    dx = (amax / np.float32(127)).astype(np.float32)
    ok = (dx > 0) & np.isfinite(dx)
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.rint(xg / np.where(ok, dx, np.float32(1))[:, :, None])
    v = np.where(ok[:, :, None] & finite, v, 0)
    qx = np.clip(v, -127, 127).astype(np.int32).reshape(T, K)
    bad = ~finite.reshape(T, -1).all(axis=1)
    dx[bad] = np.nan
    return qx, dx


def q8act_reference(q: np.ndarray, d: np.ndarray, m: np.ndarray | None, x: np.ndarray) -> np.ndarray:
    """NumPy reference for engine/native/q8act.c, bit for bit: x (T, K) @ w.T with
    w = q * d - m per group and x quantized by q8act_quantize; lane l of 16 float32 accumulators
    adds, for groups l, l + 16, ..., float(I) * (d * dx) and then subtracts m * (dx * float(S)),
    then the lane tree 8 + 8, 4 + 4, 2 + 2, 1 + 1 (float32 throughout, one rounding per op)."""
    q = np.asarray(q)
    R, K = q.shape
    ng = d.shape[1]
    G = K // ng
    qx, dx = q8act_quantize(x, G)
    T = qx.shape[0]
    I = np.einsum("rgk,tgk->trg", q.reshape(R, ng, G).astype(np.int64), qx.reshape(T, ng, G).astype(np.int64))
    S = qx.reshape(T, ng, G).sum(axis=2)
    p = I.astype(np.float32) * (d[None, :, :] * dx[:, None, :])
    mm = None if m is None else m[None, :, :] * (dx * S.astype(np.float32))[:, None, :]
    acc = np.zeros((T, R, 16), np.float32)
    for w0 in range(0, ng, 16):
        W = min(16, ng - w0)
        acc[:, :, :W] = acc[:, :, :W] + p[:, :, w0:w0 + W]
        if mm is not None:
            acc[:, :, :W] = acc[:, :, :W] - mm[:, :, w0:w0 + W]
    a8 = acc[..., :8] + acc[..., 8:]
    a4 = a8[..., :4] + a8[..., 4:]
    a2 = a4[..., :2] + a4[..., 2:]
    return (a2[..., 0] + a2[..., 1]).astype(np.float32)


class BlockInt8(_RowProducts):
    """The GGUF's own blocks, unpacked to int8: W = q * d - m per group of G = 16 or 32 weights
    (q int8 (out, in); d and m float32 (out, in / G); m None when the type has no minimum). Q8_0 /
    Q5_0 / Q4_0 (G = 32, no m: an int8 times a widened f16, exact), Q4_K (G = 32, 0..15 times
    d*sc minus dmin*m) and Q6_K (G = 16): each weight formed with the float32 operations the
    dequantizer uses, so bit for bit what the file dequantizes to. 1.125 bytes a weight for Q8_0
    (against RowInt16's 2): the default model's tied LM head streams 189 MB a token instead of
    336 MB; Q4_K / Q6_K 1.25. Decode and verification batches (<= ROW_LOOP_MAX tokens) go through
    the native kernel (engine/native/rowint16.c, ts_blockint8_matmul: batch-invariant like the
    int16 kernel); prefill and the NumPy fallback widen a row tile to float32 (the exact weights)
    and use BLAS. Reference: ``x @ self.dense().T``."""

    def __init__(self, q: np.ndarray, d: np.ndarray, m: np.ndarray | None = None):
        G = q.shape[1] // d.shape[1] if q.ndim == 2 and d.ndim == 2 and d.shape[1] else 0
        if (q.ndim != 2 or G not in (16, 32) or d.shape != (q.shape[0], q.shape[1] // G) or q.shape[1] % 32
                or (m is not None and m.shape != d.shape)):
            raise ValueError(f"BlockInt8: q {q.shape}, d {d.shape} and m {None if m is None else m.shape} "
                             "do not form groups of 16 or 32")
        self.q, self.d, self.m, self.group = q, d, m, G
        self.shape = q.shape
        self._native_ok = (q.dtype == np.int8 and q.flags.c_contiguous and d.dtype == np.float32
                           and d.flags.c_contiguous
                           and (m is None or (m.dtype == np.float32 and m.flags.c_contiguous)))
        self._qv: np.ndarray | None = None  # q in q8act.c's window layout, made on first use
        self._qv_lock = threading.Lock()

    def _int8_path(self):
        """(lib, qv) when decode products take the int8-activation kernel, else None."""
        if not (ACT_INT8 and self._native_ok):
            return None
        lib = native.library()
        if lib is None:
            return None
        if self._qv is None:
            with self._qv_lock:
                if self._qv is None:
                    self._qv = native.q8act_layout(lib, self.q, self.group)
        return lib, self._qv

    def apply(self, x: np.ndarray) -> np.ndarray:
        if x.size <= ROW_LOOP_MAX * self.q.shape[1]:
            self._int8_path()  # the layout is made here, before the row ranges split
        return super().apply(x)

    @property
    def nbytes(self) -> int:
        return int(self.q.nbytes + self.d.nbytes + (0 if self.m is None else self.m.nbytes))

    def _widen(self, q: np.ndarray, d: np.ndarray, m: np.ndarray | None, out: np.ndarray) -> np.ndarray:
        """out (n, K) float32 = q * d - m per group (the dequantizer's two roundings)."""
        n, K = q.shape
        G = self.group
        o3 = out.reshape(n, K // G, G)
        np.copyto(o3, q.reshape(n, K // G, G), casting="unsafe")
        np.multiply(o3, d[:, :, None], out=o3)
        if m is not None:
            np.subtract(o3, m[:, :, None], out=o3)
        return out

    def dense(self) -> np.ndarray:
        return self._widen(self.q, self.d, self.m, np.empty(self.q.shape, np.float32))

    def rows(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx)
        f = idx.reshape(-1)
        out = self._widen(self.q[f], self.d[f], None if self.m is None else self.m[f],
                          np.empty((f.size, self.q.shape[1]), np.float32))
        return out.reshape(*idx.shape, self.q.shape[1])

    def score_rows(self, idx: np.ndarray, h: np.ndarray) -> np.ndarray:
        """rows(idx) @ h: the MTP head's routed candidates scored with the target's rows."""
        idx = np.asarray(idx).reshape(-1)
        p = self._int8_path()
        if p is not None:
            return native.q8act_gather(p[0], p[1], self.d, self.m, idx, h)
        lib = native.library() if self._native_ok else None
        if lib is not None:
            return native.blockint8_gather(lib, self.q, self.d, self.m, idx, h)
        return self.score_rows_numpy(idx, h)

    def score_rows_numpy(self, idx: np.ndarray, h: np.ndarray) -> np.ndarray:
        out = np.empty(idx.size, np.float32)
        h = np.asarray(h, np.float32)
        for a in range(0, idx.size, 512):
            b = min(a + 512, idx.size)
            np.matmul(self.rows(idx[a:b]), h, out=out[a:b])
        return out

    def _pool(self, lib, x: np.ndarray, out: np.ndarray, threads: int) -> None:
        p = self._int8_path()
        if p is not None:
            native.pool_matmul(lib, "q8act", p[1], self.d, self.m, x, out, threads)
        else:
            native.pool_matmul(lib, "blockint8", self.q, self.d, self.m, x, out, threads)

    def _range(self, x: np.ndarray, out: np.ndarray, r0: int, r1: int) -> None:
        if x.shape[0] <= ROW_LOOP_MAX and self._native_ok:
            p = self._int8_path()
            if p is not None:
                native.q8act_matmul(p[0], p[1], self.d, self.m, x, out, r0, r1)
                return
            lib = native.library()
            if lib is not None:
                native.blockint8_matmul(lib, self.q, self.d, self.m, x, out, r0, r1)
                return
        tile = self.tile_rows
        buf = np.empty((tile, self.q.shape[1]), np.float32)
        for a in range(r0, r1, tile):
            b = min(a + tile, r1)
            t = self._widen(self.q[a:b], self.d[a:b], None if self.m is None else self.m[a:b], buf[: b - a])
            _product(t, x, out[:, a:b])

