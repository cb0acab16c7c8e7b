"""The int8-activation kernel (engine/native/q8act.c) in each build this CPU can run, against the
float-activation block-int8 kernel (rowint16.c ts_blockint8_matmul) of the same build, same run.

    python benchmarks/bench_q8act.py [-r REPS] [--rows 16384] [--k 640] [--tokens 1,2,4,6]

One thread (the engine splits rows over its crew; each worker runs exactly this loop), one
(rows, K) matrix of Q8_0-style blocks (G = 32, no minimum), x of T tokens. Builds: the default
(-march=native), AVX-VNNI (ymm vpdpbusd), AVX2 (vpmaddubsw) and portable C, each only when this
CPU has the instructions; every build's output is checked bit-equal to the default build's
before it is timed. Prints, per build, ms per product (best of -r) with float and with int8
activations (what a CPU with only that ISA runs), the weight bytes the int8 kernel streams per
second (1.125 bytes a weight: the int8 code + its f32 scale per 32) and the ratio.

Napkin math, the default model's LM head (262144 x 640 = 168M weights, 189 MB as int8 + scales):
at ~10 GB/s for one core, ~19 ms is the streaming floor for T = 1, whichever ISA; the float
kernel is issue-bound (it forms every weight as a float), so the ratio shows how close each
build gets to the floor and what an extra token costs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

VARIANTS = [  # (label, arch flags, /proc/cpuinfo flags needed)
    ("avxvnni", ("-mavx2", "-mfma", "-mf16c", "-mavxvnni"), ("avx2", "avx_vnni")),
    ("avx2", ("-mavx2", "-mfma", "-mf16c"), ("avx2",)),
    ("portable", (), ()),
]


def cpu_flags() -> set[str]:
    from turbospec.engine.native import _cpu_flags

    return set(_cpu_flags().split())


def best_ms(fn, reps: int) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best * 1e3


def main(argv: list[str] | None = None) -> int:
    from turbospec.engine import native

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-r", "--reps", type=int, default=7)
    ap.add_argument("--rows", type=int, default=16384)
    ap.add_argument("--k", type=int, default=640)
    ap.add_argument("--tokens", default="1,2,4,6")
    args = ap.parse_args(argv)
    lib = native.library()
    if lib is None:
        print(f"native kernels unavailable: {native.status()}", file=sys.stderr)
        return 2
    rng = np.random.default_rng(0)
    R, K, G = args.rows, args.k, 32
    q = rng.integers(-127, 128, (R, K), dtype=np.int8)
    d = rng.uniform(1e-4, 1e-2, (R, K // G)).astype(np.float32)
    qv = native.q8act_layout(lib, q, G)
    libs = [(f"default ({lib.ts_q8act_isa().decode()})", lib)]
    have = cpu_flags()
    for label, arch, needs in VARIANTS:
        if not all(f in have for f in needs):
            print(f"{label}: skipped, this CPU lacks {'/'.join(needs)}")
            continue
        path, why = native.build(native.compiler(), (arch,))
        if path is None:
            print(f"{label}: build failed: {why}")
            continue
        libs.append((label, native.open_library(path)))
    wbytes = R * K * 1.125
    tokens = [int(t) for t in args.tokens.split(",")]
    print(f"\n{R} x {K} block-int8 (G = {G}), one thread, best of {args.reps}; {wbytes / 1e6:.1f} MB of weights\n")
    print("| build | T | float activations ms | int8 activations ms | int8 GB/s of weights | int8 vs float |")
    print("|---|---|---|---|---|---|")
    for T in tokens:
        x = rng.standard_normal((T, K)).astype(np.float32)
        out = np.empty((T, R), np.float32)
        ref = np.empty((T, R), np.float32)
        native.q8act_matmul(lib, qv, d, None, x, ref, 0, R)
        for label, lb in libs:
            native.q8act_matmul(lb, qv, d, None, x, out, 0, R)
            if not np.array_equal(out, ref):
                print(f"{label}: output differs from the default build's; not timed", file=sys.stderr)
                return 1
            f_ms = best_ms(lambda lb=lb, x=x, out=out: native.blockint8_matmul(lb, q, d, None, x, out, 0, R), args.reps)
            ms = best_ms(lambda lb=lb, x=x, out=out: native.q8act_matmul(lb, qv, d, None, x, out, 0, R), args.reps)
            print(f"| {label} | {T} | {f_ms:.2f} | {ms:.2f} | {wbytes / ms / 1e6:.1f} | {f_ms / ms:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
