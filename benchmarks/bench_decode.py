"""Decode and prefill throughput: turbospec's NumPy engine vs llama.cpp (llama-cpp-python), same run.

    python benchmarks/bench_decode.py [-t THREADS] [-r REPS] [--n-gen 128] [--n-prompt 512] [--json]
    python benchmarks/bench_decode.py --profile     # where turbospec's decode step spends its time

Both engines: the default model, greedy, the same thread count, a warm-up first, then
``-r`` repetitions of (a) 128 tokens decoded after a short prompt and (b) one 512-token
prompt prefilled, the two engines' repetitions interleaved; mean ± std, median and best of
tokens per second, and the decode ratio of each interleaved pair. llama.cpp is the optional
``bench`` extra (`pip install -e '.[bench]'`, ~10 minutes to build); without it only turbospec
is measured.

Napkin math (the roofline printed at the end): a decode step must stream every weight once.
turbospec holds linear weights and the tied LM head as row-scaled int16 (bytes = 2 per
weight, ``model.weight_bytes``); at the measured streaming bandwidth B the ceiling is
B / weight_bytes tokens per second. llama.cpp streams the file's Q4_K_M/Q8_0 bytes (~250 MB).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def stream_bandwidth(threads: int, n_bytes: int = 512 << 20, reps: int = 5) -> dict:
    """NumPy streaming bandwidth with ``threads`` threads (each on its own slice), best of ``reps``:
    read (a reduction: it only loads) and copy (load + store, both counted)."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    a = np.ones(n_bytes // 4, np.float32)
    b = np.empty_like(a)
    parts = np.array_split(np.arange(a.size), threads)
    sl = [slice(int(p[0]), int(p[-1]) + 1) for p in parts]
    best_copy = best_read = 0.0
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(reps):
            t = time.perf_counter()
            list(pool.map(lambda s_: np.copyto(b[s_], a[s_]), sl))
            best_copy = max(best_copy, 2 * a.nbytes / (time.perf_counter() - t))
            t = time.perf_counter()
            list(pool.map(lambda s_: np.add.reduce(a[s_]), sl))
            best_read = max(best_read, a.nbytes / (time.perf_counter() - t))
    return {"copy_gb_s": best_copy / 1e9, "read_gb_s": best_read / 1e9}


def prompt_tokens(tok, n: int) -> list[int]:
    text = (ROOT / "tests" / "fixtures" / "ppl_text.txt").read_text()
    ids = tok.encode(text, add_bos=True)
    return ids[:n]


SHORT_PROMPT = "The capital of France is"


def load_turbospec(args):
    """(model, tokenizer, load seconds) with ``args.threads`` threads."""
    from turbospec.engine.backend import set_threads

    set_threads(args.threads)
    from turbospec.engine.loader import load_model, load_tokenizer

    t = time.perf_counter()
    model = load_model(args.model, quiet=True)
    return model, load_tokenizer(model), time.perf_counter() - t


def decode_seconds(model, short: list[int], n: int, before_timing=None) -> float:
    """Greedy decode of n tokens after prefilling ``short``; wall seconds of the n steps."""
    from turbospec.engine.generate import Session

    s = Session(model)
    nxt = int(s.prefill(short)[-1].argmax())
    if before_timing is not None:
        before_timing()
    t0 = time.perf_counter()
    for _ in range(n):
        nxt = int(s.step([nxt])[-1].argmax())
    return time.perf_counter() - t0


def bench_turbospec(args) -> dict:
    from turbospec.engine.generate import Session

    model, tok, load_s = load_turbospec(args)
    short = tok.encode(SHORT_PROMPT, add_bos=True)
    long_prompt = prompt_tokens(tok, args.n_prompt)

    def decode_once(n: int) -> float:
        return n / decode_seconds(model, short, n)

    def prefill_once() -> float:
        s = Session(model)
        t0 = time.perf_counter()
        s.prefill(long_prompt)
        return len(long_prompt) / (time.perf_counter() - t0)

    from turbospec.engine import native

    decode_once(8)
    prefill_once()
    return {
        "engine": f"turbospec (NumPy + {native.status().describe()} kernels)",
        "load_s": load_s,
        "decode_once": decode_once,
        "prefill_once": prefill_once,
        "weight_bytes": model.weight_bytes,
    }


def profile_turbospec(args) -> dict:
    """Where one decode step's time goes (``--profile``): wall time per component, ms a token,
    over ``--n-gen`` tokens after the short prompt (after a warm-up). The products are timed
    around each layer's ``apply`` (both threads' work inside), attention around
    ``LayerKV.attend`` (encoding the new token included); "other" is the rest of the step
    (norms, RoPE, GELU, residuals, embedding, sampling)."""
    from collections import defaultdict

    from turbospec.engine.kv.cache import LayerKV

    model, tok, _ = load_turbospec(args)
    short = tok.encode(SHORT_PROMPT, add_bos=True)
    ms_in: dict[str, float] = defaultdict(float)

    def timed(key, fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                ms_in[key] += time.perf_counter() - t
        return wrapper

    patched = [(model.output, "apply", "LM head")]
    for b in model.blk:
        patched += [(b.attn_qkv, "apply", "q+k+v"), (b.attn_output, "apply", "attn_output"),
                    (b.ffn_gate_up, "apply", "gate+up"), (b.ffn_down, "apply", "down")]
    for obj, name, key in patched:
        setattr(obj, name, timed(key, getattr(obj, name)))
    attend = LayerKV.attend
    LayerKV.attend = timed("attention", attend)
    try:
        decode_seconds(model, short, 8)
        total = decode_seconds(model, short, args.n_gen, before_timing=ms_in.clear)
    finally:
        LayerKV.attend = attend
        for obj, name, _ in patched:
            delattr(obj, name)  # the instance attribute goes, the class's apply shows again
    per_tok = {k: v / args.n_gen * 1e3 for k, v in ms_in.items()}
    per_tok["other"] = total / args.n_gen * 1e3 - sum(per_tok.values())
    return {"total_ms": total / args.n_gen * 1e3, "components_ms": per_tok}


def bench_llamacpp(args) -> dict | None:
    try:
        import llama_cpp
    except ImportError as e:  # the peer is optional; say why it is missing from the table
        print(f"bench_decode: no llama.cpp peer ({e}); install it with `pip install -e '.[bench]'`", file=sys.stderr)
        return None
    from turbospec.engine.loader import default_model_path

    path = str(args.model or default_model_path())
    llm = llama_cpp.Llama(
        path, n_ctx=2048, n_batch=512, n_ubatch=512, n_threads=args.threads, n_threads_batch=args.threads,
        verbose=False,
    )
    short = llm.tokenize(SHORT_PROMPT.encode(), add_bos=True, special=True)
    text = (ROOT / "tests" / "fixtures" / "ppl_text.txt").read_bytes()
    long_prompt = llm.tokenize(text, add_bos=True)[: args.n_prompt]

    def decode_once(n: int) -> float:
        llm.reset()
        llm.eval(short)
        import numpy as np

        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        t0 = time.perf_counter()
        for _ in range(n):
            llm.eval([nxt])
            nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        return n / (time.perf_counter() - t0)

    def prefill_once() -> float:
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(long_prompt)
        return len(long_prompt) / (time.perf_counter() - t0)

    decode_once(8)
    prefill_once()
    return {"engine": f"llama.cpp (llama-cpp-python {llama_cpp.__version__})", "decode_once": decode_once,
            "prefill_once": prefill_once, "weight_bytes": os.path.getsize(path)}


PEER_SETTLE_S = 0.5  # after a llama.cpp repetition: its OpenMP threads spin a while before sleeping


def measure(rows: list[dict], args) -> None:
    """Interleaved repetitions (ours, the peer, ours, ...): on a shared machine whose speed drifts
    by ±20% within minutes both engines see the same conditions, and each pair gives a ratio."""
    for r in rows:
        r["decode"], r["prefill"] = [], []
    for what, n in (("decode", args.n_gen), ("prefill", None)):
        for _ in range(args.reps):
            for i, r in enumerate(rows):
                r[what].append(r[f"{what}_once"](n) if n else r[f"{what}_once"]())
                if i > 0:
                    time.sleep(PEER_SETTLE_S)
    for r in rows:
        del r["decode_once"], r["prefill_once"]


def ms(xs: list[float]) -> str:
    m = statistics.mean(xs)
    s = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{m:.1f} ± {s:.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default=None)
    ap.add_argument("-t", "--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("-r", "--reps", type=int, default=3)
    ap.add_argument("--n-gen", type=int, default=128)
    ap.add_argument("--n-prompt", type=int, default=512)
    ap.add_argument("--no-llamacpp", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--profile", action="store_true",
                    help="only profile turbospec's decode step: ms a token per component")
    args = ap.parse_args()
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(args.threads))
    if args.profile:
        prof = profile_turbospec(args)
        print(f"turbospec decode step, {args.threads} threads, {args.n_gen} tokens after a short prompt: "
              f"{prof['total_ms']:.1f} ms a token ({1e3 / prof['total_ms']:.1f} tok/s, timers included)")
        print("| component | ms a token | share |")
        print("|---|---:|---:|")
        for k, v in sorted(prof["components_ms"].items(), key=lambda kv: -kv[1]):
            print(f"| {k} | {v:.2f} | {v / prof['total_ms']:.0%} |")
        if args.json:
            print(json.dumps(prof))
        return 0
    load0 = os.getloadavg()[0]
    bw = stream_bandwidth(args.threads)
    ours = bench_turbospec(args)
    peer = None if args.no_llamacpp else bench_llamacpp(args)
    rows = [ours] + ([peer] if peer else [])
    measure(rows, args)
    print(f"threads {args.threads}; load average at the start {load0:.2f}; NumPy streaming bandwidth "
          f"({args.threads} threads): read {bw['read_gb_s']:.1f} GB/s, copy {bw['copy_gb_s']:.1f} GB/s; "
          f"{args.reps} interleaved repetitions")
    print(f"| engine | decode tok/s ({args.n_gen} tok), mean ± std | median | best "
          f"| prefill tok/s ({args.n_prompt} tok) | weight bytes/token |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['engine']} | {ms(r['decode'])} | {statistics.median(r['decode']):.1f} | {max(r['decode']):.1f} "
              f"| {ms(r['prefill'])} | {r['weight_bytes'] / 1e6:.0f} MB |")
    roof = bw["read_gb_s"] * 1e9 / ours["weight_bytes"]
    print(f"turbospec decode roofline at {bw['read_gb_s']:.1f} GB/s: {roof:.1f} tok/s "
          f"(measured {statistics.mean(ours['decode']) / roof:.0%} of it)")
    result = {"bandwidth": bw, "results": rows, "threads": args.threads, "load_avg_start": load0}
    if peer:
        pairs = [a / b for a, b in zip(ours["decode"], peer["decode"], strict=True)]
        rp = statistics.mean(ours["prefill"]) / statistics.mean(peer["prefill"])
        rd = statistics.mean(ours["decode"]) / statistics.mean(peer["decode"])
        print(f"ratio turbospec / llama.cpp: decode {rd:.2f}x (per interleaved pair: median "
              f"{statistics.median(pairs):.3f}, range {min(pairs):.3f}-{max(pairs):.3f}), prefill {rp:.2f}x")
        result["decode_ratio_pairs"] = pairs
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
