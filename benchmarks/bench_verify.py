"""What verifying T tokens costs against decoding one: c(T)/c(1) of the target's forward, and the
speedup ceiling it leaves speculative decoding at each block size.

    python benchmarks/bench_verify.py [-t THREADS] [-r REPS] [--tokens 1,2,3,4,6] [--draft-ms MS] [--json]

bench_spec.py's napkin math: a round that emits τ tokens runs at τ·c(1) / (c(B) + drafting),
so with every draft accepted (τ = B) the speedup over plain decoding is at most
B·c(1) / (c(B) + (B-1)·d), d = one draft step (``--draft-ms``; the MTP assistant's is ~3.5 ms on the CPU now).

Napkin math, the LM head (262144 x 640 Q8_0 rows unpacked to int8 + float32 scales = 189 MB), on
the native kernel (engine/native/rowint16.c, ts_blockint8_matmul): one token is bound by DRAM
(~6 ms at ~30 GB/s); each further token adds 168M FMAs over rows already in L1 — on this Zen 4
core, whose 512-bit FMAs run as two halves and load x for each, ~2-4 ms, now a larger share of
a cheaper c(1). Tokens share each row read but keep their own fixed summation order, so
verification stays bit-identical to decoding alone. The rest of a token's cost in a batch is
per-token work: attention (verification attends token by token; ~1 ms a token with the native f16
step, engine/native/attn.c, 2.5 ms before it), the small layer products' FMA passes, norms and
RoPE. Measured 2026-12-06 16:35 (AMD EPYC, after q8act's packed tail windows and 8 tokens a
pass): c(1) 11.3 ms, c(T)/c(1) 1.10 / 1.28 / 1.41 / 1.54 / 1.72 for T = 2..6 (13:50, before: 11.9 ms,
1.23 / 1.37 / 1.51 / 1.83 / 2.03). 2026-12-05 00:48: c(1) 16.6 ms, c(T)/c(1) 1.24 / 1.44 / 1.82 / 2.27 / 2.61 for
T = 2..6 (2026-12-04 22:36, NumPy attention: 18.8 ms, 1.18 / 1.58 / 1.82 / 2.56 / 2.83; 18:14,
int16 kernel: c(1) 27.5 ms, 1.23 / 1.47 / 1.63 for T = 2..4).

Method: the default model, a 58-token prompt prefilled, ``--warmup`` untimed rounds (the first
passes over freshly mapped weights run up to 5x slower), then per repetition the forward of T
tokens at the same positions for every T (the cache rolled back after each); medians. The
machine's speed drifts (±20% within minutes): read the ratios, not the milliseconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", default=None, help="GGUF (default: the embedded model)")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-r", "--reps", type=int, default=9)
    ap.add_argument("--warmup", type=int, default=3, help="untimed rounds first (the weights' pages map in)")
    ap.add_argument("--tokens", default="1,2,3,4,6", help="batch sizes T to time (default 1,2,3,4,6)")
    ap.add_argument("--draft-ms", type=float, default=5.0, help="one draft step, for the ceiling (default 5)")
    ap.add_argument("--json", action="store_true", help="print the medians as JSON too")
    args = ap.parse_args(argv)
    Ts = sorted({int(v) for v in args.tokens.split(",")} | {1})

    import numpy as np

    from turbospec.engine.backend import set_threads
    from turbospec.engine.generate import Session
    from turbospec.engine.loader import load_model

    set_threads(args.threads)  # the crew's threads, BLAS single-threaded inside each
    model = load_model(args.model, quiet=True)
    sess = Session(model)
    sess.prefill(list(range(2, 60)))
    n0 = sess.n_past
    times: dict[int, list[float]] = {T: [] for T in Ts}
    for rep in range(args.warmup + args.reps):
        for T in Ts:
            sess.rollback(n0)
            t0 = time.perf_counter()
            model.forward(np.arange(100, 100 + T), sess.cache, logits_rows="all")
            if rep >= args.warmup:
                times[T].append(time.perf_counter() - t0)
    med = {T: statistics.median(v) for T, v in times.items()}
    c1 = med[1]
    print(f"verify cost, {model.gguf.path.name}, {args.threads} threads, median of {args.reps} repetitions; "
          f"ceiling = T·c(1) / (c(T) + (T-1) x {args.draft_ms:g} ms)")
    print("| T | c(T) | c(T)/c(1) | speedup ceiling, every draft accepted |")
    print("|---|---|---|---|")
    for T in Ts:
        ceil = T * c1 / (med[T] + (T - 1) * args.draft_ms / 1e3)
        print(f"| {T} | {1e3 * med[T]:.1f} ms | {med[T] / c1:.2f} | {ceil:.2f}x |")
    if args.json:
        print(json.dumps({"c_ms": {T: 1e3 * v for T, v in med.items()}, "threads": args.threads}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
