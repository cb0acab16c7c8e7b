"""Speculative decoding benchmark: prompt lookup (ngram) at B = 2..6, depth 1 vs 2, against plain
decoding in the same engine, on held-out prompts (chat, code, lists, translation, prose).

    python benchmarks/bench_spec.py [-n 64] [--blocks 2 3 4 5 6] [--per-kind 1] [--json out.json]

For every prompt: one plain greedy run (the baseline and the exactness oracle), then one
speculative run per (B, depth). Reported per configuration, summed over prompts: draft
acceptance rate = Σ n_accepted / Σ n_drafted, τ = 1 + Σ n_accepted / rounds, per-position
acceptance p_i (DESIGN.md's definitions, via turbospec.trace.per_position), decode tok/s
(emitted tokens after the first / decode seconds, summed over prompts) and its ratio to plain;
"same" = every speculative run produced the plain run's tokens. One extra run per prompt at
B=3 depth 2 writes the trace to a file and measures the time spent inside the TraceWriter
calls as a share of decode time (the < 2% budget).

Napkin math: a verify step over T = B tokens costs c(T) target-forward time; with τ tokens
emitted per round the speedup over plain is τ·c(1)/(c(T) + draft time). On this NumPy CPU
engine c(T) grows with T (the tied 262144 x 640 LM head alone is 168 M MACs per row), so a
speedup needs τ well above c(B)/c(1).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

PROMPTS: list[tuple[str, str]] = [
    ("chat", "My landlord wants to raise the rent by 15% next month. How should I respond politely?"),
    ("chat", "What are three good habits for someone who just started working from home?"),
    ("code", "Write a Python function that returns the n-th Fibonacci number iteratively, with a docstring."),
    ("code", "Write a SQL query that selects the ten customers with the highest total order value."),
    ("lists", "List the days of the week, one per line, each followed by its abbreviation."),
    ("lists", "Give a numbered list of the first twelve chemical elements with their symbols."),
    ("translation", "Translate into French: The train leaves at eight o'clock, so we must be at the station early."),
    ("translation", "Translate into German: My brother lives in a small house near the river with two cats."),
    ("prose", "Write a short paragraph describing an old harbour town on a foggy winter morning."),
    ("prose", "Describe, in a few sentences, how bread is made, from flour to the finished loaf."),
]


class TimedTrace:
    """Wraps a TraceWriter and sums the wall time spent inside its calls."""

    def __init__(self, w):
        self.w = w
        self.enabled = w.enabled
        self.us = 0

    def __getattr__(self, name):
        f = getattr(self.w, name)

        def timed(*a, **k):
            t = time.perf_counter_ns()
            try:
                return f(*a, **k)
            finally:
                self.us += (time.perf_counter_ns() - t) // 1000

        return timed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", default=None, help="GGUF (default: the embedded Gemma 3 270M)")
    ap.add_argument("-n", "--n-predict", type=int, default=64)
    ap.add_argument("--blocks", type=int, nargs="+", default=[2, 3, 4, 5, 6])
    ap.add_argument("--depths", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--per-kind", type=int, default=2, help="prompts per kind (1..2)")
    ap.add_argument("-ctk", default="f16")
    ap.add_argument("-ctv", default="f16")
    ap.add_argument("-t", "--threads", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    ap.add_argument("--chat", action="store_true",
                    help="wrap prompts in Gemma's turn format (the default 270M is a base model: it then echoes them, "
                    "which inflates prompt-lookup acceptance); default: raw text as the model continues it")
    args = ap.parse_args(argv)

    from turbospec.engine.backend import set_threads

    threads = set_threads(args.threads)
    from turbospec.engine.generate import GenConfig, chat_prompt, generate
    from turbospec.engine.kv.cache import KVConfig
    from turbospec.engine.loader import load_model, load_tokenizer
    from turbospec.engine.spec.loop import SpecConfig
    from turbospec.engine.spec.ngram import NGramDrafter
    from turbospec.trace import TraceWriter, fmt_pct, fmt_tau, per_position

    model = load_model(args.model, quiet=True)
    tok = load_tokenizer(model)
    kinds: dict[str, int] = {}
    prompts = []
    for kind, text in PROMPTS:
        if kinds.get(kind, 0) < args.per_kind:
            kinds[kind] = kinds.get(kind, 0) + 1
            prompts.append((kind, tok.encode(chat_prompt(text) if args.chat else text, add_bos=True,
                                             parse_special=True)))
    cfg = GenConfig(n_predict=args.n_predict, kv=KVConfig(type_k=args.ctk, type_v=args.ctv), ignore_eos=True)

    def agg() -> dict:
        return {"tokens": 0, "decode_s": 0.0, "rounds": 0, "acc": 0, "dr": 0, "pairs": {}, "same": True,
                "by_kind": {}}

    rows: dict[tuple, dict] = {("plain", 0, 0): agg()}
    for b in args.blocks:
        for d in args.depths:
            rows[("ngram", b, d)] = agg()
    trace_us = trace_decode_s = 0.0
    t_all = time.perf_counter()
    for pi, (kind, ids) in enumerate(prompts):
        base = generate(model, tok, ids, cfg)
        r = rows[("plain", 0, 0)]
        r["tokens"] += len(base.tokens) - 1
        r["decode_s"] += base.decode_s
        for key in rows:
            if key[0] == "plain":
                continue
            res = generate(model, tok, ids, cfg, drafter=(dr := NGramDrafter()),
                           spec=SpecConfig(block_size=key[1], pipeline_depth=key[2]))
            dr.close()
            r = rows[key]
            r["tokens"] += len(res.tokens) - 1
            r["decode_s"] += res.decode_s
            s = res.spec
            r["rounds"] += s["rounds"]
            r["acc"] += s["n_accepted"]
            r["dr"] += s["n_drafted"]
            r["same"] &= res.tokens == base.tokens
            for (nd, na), c in s.get("pair_counts", {}).items():
                r["pairs"][(nd, na)] = r["pairs"].get((nd, na), 0) + c
            k = r["by_kind"].setdefault(kind, [0, 0, 0])
            k[0] += s["rounds"]
            k[1] += s["n_accepted"]
            k[2] += s["n_drafted"]
        # the trace's cost, at B=3 depth 2
        with tempfile.TemporaryDirectory() as td:
            w = TimedTrace(TraceWriter.open(str(Path(td) / "t.ndjson")))
            res = generate(model, tok, ids, cfg, drafter=(dr := NGramDrafter()),
                           spec=SpecConfig(block_size=3, pipeline_depth=2), trace=w)
            dr.close()
            w.w.close()
            trace_us += w.us
            trace_decode_s += res.decode_s
        print(f"[{pi + 1}/{len(prompts)}] {kind} done ({time.perf_counter() - t_all:.0f} s)", file=sys.stderr,
              flush=True)

    plain_tps = rows[("plain", 0, 0)]["tokens"] / rows[("plain", 0, 0)]["decode_s"]
    nb = max(args.blocks) - 1
    print(f"\nngram (prompt lookup) on {Path(model.gguf.path).name}, {len(prompts)} prompts x {args.n_predict} tokens, "
          f"greedy, K {args.ctk} / V {args.ctv}, {threads} threads (measured under load)\n")
    head = "| spec | B | depth | draft acceptance | τ | " + " | ".join(f"p{i}" for i in range(nb)) + \
        " | decode tok/s | vs plain | same tokens |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    out_rows = []
    for (name, b, d), r in rows.items():
        tps = r["tokens"] / r["decode_s"] if r["decode_s"] else 0.0
        if name == "plain":
            cells = ["plain", "—", "—", "—", "1.00"] + ["—"] * nb
        else:
            ps, _ = per_position(r["pairs"])
            rate = r["acc"] / r["dr"] if r["dr"] else None
            tau = 1 + r["acc"] / r["rounds"] if r["rounds"] else None
            cells = [name, str(b), str(d), fmt_pct(rate), fmt_tau(tau)]
            cells += [fmt_pct(ps[i]) if i < len(ps) else "—" for i in range(nb)]
            out_rows.append({"spec": name, "B": b, "depth": d, "draft_acceptance_rate": rate, "tau": tau,
                             "per_position": ps, "decode_tok_s": tps, "vs_plain": tps / plain_tps,
                             "same_tokens": r["same"],
                             "by_kind": {k: {"draft_acceptance_rate": v[1] / v[2] if v[2] else None,
                                             "tau": 1 + v[1] / v[0] if v[0] else None}
                                         for k, v in r["by_kind"].items()}})
        cells += [f"{tps:.2f}", f"{tps / plain_tps:.2f}x", "—" if name == "plain" else ("yes" if r["same"] else "NO")]
        print("| " + " | ".join(cells) + " |")
    print("\nτ by prompt kind (depth 2):\n")
    kinds_l = list(kinds)
    print("| B | " + " | ".join(kinds_l) + " |")
    print("|" + "---|" * (len(kinds_l) + 1))
    for b in args.blocks:
        key = ("ngram", b, 2 if 2 in args.depths else args.depths[0])
        bk = rows[key]["by_kind"]
        print(f"| {b} | " + " | ".join(
            f"{fmt_tau(1 + bk[k][1] / bk[k][0] if bk.get(k) and bk[k][0] else None)} "
            f"({fmt_pct(bk[k][1] / bk[k][2] if bk.get(k) and bk[k][2] else None)})" for k in kinds_l) + " |")
    share = trace_us / 1e6 / trace_decode_s if trace_decode_s else 0.0
    print(f"\ntrace cost (B=3, depth 2, file): {trace_us / 1e3:.1f} ms inside the writer over "
          f"{trace_decode_s:.1f} s of decoding = {100 * share:.3f}% of decode time")
    if args.json:
        Path(args.json).write_text(json.dumps({"plain_tok_s": plain_tps, "rows": out_rows, "trace_share": share},
                                              indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
