"""The decode / verification products alone: the LM head and one layer's four products (x 18)
for T = 1, 2, 4, 6 tokens, medians — where c(T) of bench_verify.py goes in the matrix kernels.

    python benchmarks/bench_products.py [-t THREADS] [-r REPS] [--tokens 1,2,4,6]

Napkin math (engine/native/q8act.c): the LM head is 262144 x 640 int8 (+ scales) = 189 MB, so T = 1
is DRAM-bound (~4 ms at ~50 GB/s); each further token adds 168M multiply-adds = 2.6M vpdpbusd
(zmm) plus the per-window scale steps, so T > 1 is issue-bound. Random activations: the kernels'
cost does not depend on the values.
"""

from __future__ import annotations

import argparse
import statistics
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", default=None, help="GGUF (default: the embedded model)")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-r", "--reps", type=int, default=30)
    ap.add_argument("--tokens", default="1,2,4,6")
    args = ap.parse_args(argv)

    import numpy as np

    from turbospec.engine import native
    from turbospec.engine.backend import set_threads
    from turbospec.engine.loader import load_model

    set_threads(args.threads)
    m = load_model(args.model, quiet=True)
    rng = np.random.default_rng(0)
    b = m.blk[0]
    names = [n for n in ("attn_qkv", "attn_output", "ffn_gate_up", "ffn_down") if getattr(b, n, None) is not None]

    def med(f, x) -> float:
        for _ in range(3):
            f(x)
        ts = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            f(x)
            ts.append(time.perf_counter() - t0)
        return 1e3 * statistics.median(ts)

    lib = native.library()
    isa = lib.ts_q8act_isa().decode() if lib is not None else "none"
    print(f"products of {m.gguf.path.name}, {args.threads} threads, q8act ISA {isa}, median of {args.reps}")
    print(f"| T | LM head | {len(m.blk)} x layer 0's {' + '.join(names)} |")
    print("|---|---|---|")
    for T in sorted({int(v) for v in args.tokens.split(",")}):
        head = med(m.output.apply, rng.standard_normal((T, m.cfg.n_embd)).astype(np.float32))
        lay = sum(med(getattr(b, n).apply, rng.standard_normal((T, getattr(b, n).shape[1])).astype(np.float32))
                  for n in names)
        print(f"| {T} | {head:.2f} ms | {len(m.blk) * lay:.2f} ms |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
