#!/usr/bin/env python3
"""GPU check for turbospec's CUDA kernels: correctness against NumPy at real sizes, and speed.

Self-contained: needs only Python, NumPy and CuPy, offline (no model file, no gguf, no install
of turbospec — it loads cuda/loader.py and cuda/reference.py from this checkout by path).

    python tests/gpu/check.py            # on an NVIDIA machine: real sizes, table, exit 1 on a mismatch
    python tests/gpu/check.py --emu      # no GPU: the same checks at small sizes through the host harness
                                         # (what CI runs, so the script itself cannot rot)

It first measures the device copy bandwidth (device-to-device copy of 1 GiB), then checks each
kernel on fresh random inputs against cuda/reference.py and times it with CUDA events; the
table gives µs per call, achieved GB/s (bytes the kernel must move, napkin math in each .cu)
and that as a share of the copy bandwidth.

Not yet here (issue 4, item 4): the synthetic-model forward comparison (CuPy vs NumPy logits
and 64 greedy tokens per cache type) and decode/prefill tok/s — they need the CuPy backend of
the engine, which is not wired yet.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def _load_cuda_package() -> tuple[Any, Any]:
    """Import cuda/loader.py and cuda/reference.py as a private package (no install needed)."""
    name = "_turbospec_cuda_check"
    spec = importlib.util.spec_from_file_location(name, ROOT / "cuda" / "__init__.py",
                                                  submodule_search_locations=[str(ROOT / "cuda")])
    pkg = importlib.util.module_from_spec(spec)
    sys.modules[name] = pkg
    spec.loader.exec_module(pkg)
    return importlib.import_module(f"{name}.loader"), importlib.import_module(f"{name}.reference")


L, R = _load_cuda_package()


@dataclass
class Row:
    kernel: str
    size: str
    us: float
    nbytes: float
    err: float
    ok: bool


class Dev:
    """The array module and a timer: CuPy + CUDA events, or NumPy + the harness (--emu)."""

    def __init__(self, emu: bool):
        self.emu = emu
        if emu:
            self.xp = np
        else:
            import cupy

            self.xp = cupy
            self.cp = cupy

    def put(self, a: np.ndarray) -> Any:
        return a.copy() if self.emu else self.cp.asarray(a)

    def get(self, a: Any) -> np.ndarray:
        return np.asarray(a) if self.emu else self.cp.asnumpy(a)

    def time(self, fn, iters: int = 20) -> float:
        """Microseconds per call (median of iters after warm-up)."""
        if self.emu:
            fn()
            t = time.perf_counter()
            fn()
            return (time.perf_counter() - t) * 1e6
        for _ in range(3):
            fn()
        self.cp.cuda.Device().synchronize()
        times = []
        for _ in range(iters):
            a, b = self.cp.cuda.Event(), self.cp.cuda.Event()
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(self.cp.cuda.get_elapsed_time(a, b) * 1e3)
        return float(np.median(times))

    def name(self) -> str:
        if self.emu:
            return "host harness (CPU, --emu)"
        p = self.cp.cuda.runtime.getDeviceProperties(0)
        return p["name"].decode() if isinstance(p["name"], bytes) else str(p["name"])


def copy_bandwidth(dev: Dev, nbytes: int) -> float:
    """GB/s of a device-to-device copy (read + write counted)."""
    xp = dev.xp
    a = xp.zeros(nbytes // 4, xp.float32)
    b = xp.empty_like(a)
    us = dev.time(lambda: xp.copyto(b, a))
    return 2 * nbytes / us / 1e3


def rel_err(got: np.ndarray, exp: np.ndarray) -> float:
    scale = float(np.abs(exp).max()) or 1.0
    return float(np.abs(got.astype(np.float64) - exp).max() / scale)


def check_all(dev: Dev, small: bool, rng: np.random.Generator) -> list[Row]:
    rows: list[Row] = []
    put, get, xp = dev.put, dev.get, dev.xp
    n_embd, n_ff, vocab, hd = (640, 2048, 262144, 256) if not small else (256, 512, 4096, 256)
    n_ctx_check = 32768 if not small else 300
    n_ctx_bw = (1 << 20) if not small else 600
    prefill = 512 if not small else 9

    def add(kernel, size, fn, nbytes, err, tol):
        rows.append(Row(kernel, size, dev.time(fn), nbytes, err, bool(err <= tol)))

    # norms / rope / geglu (launch-bound at decode sizes; timed for the record)
    x = rng.standard_normal((1, n_embd)).astype(np.float32)
    w = rng.standard_normal(n_embd).astype(np.float32)
    dx, dw, do = put(x), put(w), xp.empty((1, n_embd), xp.float32)
    L.rmsnorm(dx, dw, 1e-6, out=do)
    add("rmsnorm", f"1x{n_embd}", lambda: L.rmsnorm(dx, dw, 1e-6, out=do), 3 * x.nbytes,
        rel_err(get(do), R.rmsnorm(x, w, 1e-6)), 1e-5)
    q = rng.standard_normal((prefill, 4, hd)).astype(np.float32)
    pos = np.arange(prefill, dtype=np.int32)
    dq, dpos = put(q), put(pos)
    L.rope_neox(dq, dpos, 1e6)
    add("rope_neox", f"{prefill}x4x{hd}", lambda: L.rope_neox(dq, dpos, 1e6), 2 * q.nbytes,
        rel_err(get(dq), R.rope_neox(q, pos, 1e6)), 2e-3)
    g, u = (rng.standard_normal(prefill * n_ff).astype(np.float32) for _ in range(2))
    dg, du, dgo = put(g), put(u), xp.empty(prefill * n_ff, xp.float32)
    L.geglu(dg, du, out=dgo)
    add("geglu", f"{prefill}x{n_ff}", lambda: L.geglu(dg, du, out=dgo), 3 * g.nbytes,
        rel_err(get(dgo), R.geglu(g, u)), 1e-5)

    # quantized matvec (decode) and matmul (prefill); the LM head checked on a row sample
    # (type, rows, K): FFN gate/up (K = n_embd, not a multiple of 256: Q8_0/Q5_0 in the default
    # model), FFN down (K = n_ff: Q4_K/Q6_K), the tied LM head (vocab x n_embd)
    shapes = [("q8_0", n_ff, n_embd), ("q5_0", n_ff, n_embd), ("q4_k", n_embd, n_ff), ("q6_k", n_embd, n_ff),
              ("tq3_1s", n_ff, n_embd), ("tq4_1s", n_embd, n_ff), ("q8_0", vocab, n_embd)]
    for wt, nr, k in shapes:
        wq = R.random_weight(rng, wt, nr, k)
        xv = rng.standard_normal(k).astype(np.float32)
        dwq, dxv, dy = put(wq), put(xv), xp.empty(nr, xp.float32)
        L.matvec(dwq, wt, dxv, nr, out=dy)
        y = get(dy)
        pick = rng.choice(nr, min(nr, 2048), replace=False)
        rb = wq.size // nr
        sub = wq.reshape(nr, rb)[pick].reshape(-1)
        err = rel_err(y[pick], R.matmul(sub, wt, xv, len(pick)))
        add(f"matvec_{wt}", f"{nr}x{k}",
            lambda dwq=dwq, wt=wt, dxv=dxv, nr=nr, dy=dy: L.matvec(dwq, wt, dxv, nr, out=dy),
            wq.nbytes + xv.nbytes + 4 * nr, err, 1e-4)
    wt, nr, k = "q5_0", n_ff, n_embd
    wq = R.random_weight(rng, wt, nr, k)
    xm = rng.standard_normal((prefill, k)).astype(np.float32)
    dwq, dxm, dym = put(wq), put(xm), xp.empty((prefill, nr), xp.float32)
    L.matmul(dwq, wt, dxm, nr, out=dym)
    add(f"matmul_{wt}", f"{prefill}x{nr}x{k}", lambda: L.matmul(dwq, wt, dxm, nr, out=dym),
        wq.nbytes * -(-prefill // L.MATMUL_NB) + xm.nbytes + 4 * prefill * nr,
        rel_err(get(dym), R.matmul(wq, wt, xm, nr)), 1e-4)

    # KV append and decode attention per cache type
    for kt in ("f16", "q8_0", "q4_0", "turbo4", "turbo3", "turbo2"):
        xk = rng.standard_normal((prefill, 1, hd)).astype(np.float32)
        rb = R.kv_row_bytes(kt, hd)
        dc = xp.zeros((prefill, 1, rb), xp.uint8)
        dxk = put(xk)
        L.kv_append(dxk, dc, kt, 0)
        ok = np.array_equal(get(dc).reshape(prefill, -1), R.kv_encode(xk.reshape(prefill, hd), kt))
        add(f"kv_append {kt}", f"{prefill}x{hd}", lambda dxk=dxk, dc=dc, kt=kt: L.kv_append(dxk, dc, kt, 0),
            xk.nbytes + prefill * rb, 0.0 if ok else 1.0, 0.0)

        kk = rng.standard_normal((n_ctx_check, 1, hd)).astype(np.float32)
        vv = rng.standard_normal((n_ctx_check, 1, hd)).astype(np.float32)
        kc = R.kv_encode(kk.reshape(-1, hd), kt).reshape(n_ctx_check, 1, -1)
        vc = R.kv_encode(vv.reshape(-1, hd), kt).reshape(n_ctx_check, 1, -1)
        qh = rng.standard_normal((4, hd)).astype(np.float32)
        start = n_ctx_check - min(n_ctx_check, 512 * 8)  # a window, to keep the NumPy side quick
        out = get(L.attn_decode(put(qh), put(kc), put(vc), kt, kt, start, n_ctx_check, 1 / 16))
        err = rel_err(out, R.attn_decode(qh, kc, vc, kt, kt, 1, start, n_ctx_check, 1 / 16))
        # bandwidth at a context far beyond L2: the byte values do not matter for timing (0x3C3C is
        # a finite f16 ~1.06 for every scale and norm), so fill instead of generating 1 GB randomly
        big_k = xp.full((n_ctx_bw, 1, R.kv_row_bytes(kt, hd)), 0x3C, xp.uint8)
        big_v = big_k.copy()
        dqh = put(qh)
        add(f"attn_decode {kt}", f"{n_ctx_bw} cells",
            lambda big_k=big_k, big_v=big_v, kt=kt, dqh=dqh: L.attn_decode(dqh, big_k, big_v, kt, kt, 0, n_ctx_bw,
                                                                          1 / 16),
            big_k.nbytes + big_v.nbytes, err, 2e-4)
        del big_k, big_v

    # vocab argmax / softmax, centroid top-k
    logits = rng.standard_normal(vocab).astype(np.float32)
    dl = put(logits)
    tok = int(get(L.argmax(dl))[0])
    add("argmax", f"{vocab}", lambda: L.argmax(dl), logits.nbytes, 0.0 if tok == R.argmax(logits) else 1.0, 0.0)
    dso = xp.empty_like(dl)
    L.softmax(dl, 1.0, out=dso)
    add("softmax", f"{vocab}", lambda: L.softmax(dl, 1.0, out=dso), 4 * logits.nbytes,
        rel_err(get(dso), R.softmax(logits)), 1e-4)
    cl = rng.standard_normal(2048).astype(np.float32)
    dcl = put(cl)
    idx, _ = L.topk(dcl, 32)
    add("topk", "2048 -> 32", lambda: L.topk(dcl, 32), cl.nbytes,
        0.0 if np.array_equal(get(idx), R.topk(cl, 32)[0]) else 1.0, 0.0)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--emu", action="store_true", help="no GPU: run through the host harness at small sizes")
    ap.add_argument("--small", action="store_true", help="small sizes (implied by --emu)")
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args(argv)
    if not args.emu:
        try:
            import cupy

            cupy.cuda.runtime.getDeviceCount()
        except Exception as e:  # any failure here means: no usable GPU
            print(f"check.py: no usable CUDA device through CuPy ({type(e).__name__}: {e}); "
                  "install cupy-cuda13x on an NVIDIA machine, or run with --emu", file=sys.stderr)
            return 2
    dev = Dev(args.emu)
    small = args.small or args.emu
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    bw = copy_bandwidth(dev, (1 << 30) if not small else (1 << 22))
    rows = check_all(dev, small, rng)
    print(f"device: {dev.name()}   copy bandwidth: {bw:.0f} GB/s   ({time.perf_counter() - t0:.0f} s)")
    print(f"{'kernel':22s} {'size':>18s} {'us':>10s} {'GB/s':>8s} {'%copy':>6s} {'max rel err':>12s}  ok")
    for r in rows:
        gbs = r.nbytes / r.us / 1e3
        print(f"{r.kernel:22s} {r.size:>18s} {r.us:10.1f} {gbs:8.1f} {100 * gbs / bw:5.1f}% {r.err:12.2e}  "
              f"{'ok' if r.ok else 'FAIL'}")
    bad = [r.kernel for r in rows if not r.ok]
    if args.emu:
        print("(--emu: timings are of the CPU harness and mean nothing for the GPU)")
    print("not measured here yet: synthetic-model forward vs NumPy and decode/prefill tok/s (needs the CuPy backend)")
    if bad:
        print(f"FAILED: {', '.join(bad)}")
        return 1
    print(f"{len(rows)} passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
