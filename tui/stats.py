"""`turbospec stats`: the dashboard's aggregates without a screen (no textual import)."""

from __future__ import annotations

import sys
from typing import Any

import orjson

from turbospec.errors import UserError
from turbospec.trace import (
    Aggregator,
    aggregate_file,
    fmt_pct,
    fmt_tau,
    merge_aggregators,
)

JSON_KEYS = (
    "draft_acceptance_rate", "tau", "per_position", "rounds", "n_accepted", "n_drafted", "paths", "malformed_lines",
)


def load(path: str) -> Aggregator:
    """Whole-file aggregates; ``-`` reads standard input to its end (non-JSON lines ignored)."""
    if path == "-":
        agg = Aggregator(pipe=True)
        batch: list[bytes] = []
        for raw in sys.stdin.buffer:
            batch.append(raw)
            if len(batch) >= 8192:
                agg.feed_lines(batch)
                batch = []
        agg.feed_lines(batch)
        return agg
    return aggregate_file(path)


def _us(x: float | None) -> str:
    return "—" if x is None else f"{x / 1000:.2f} ms"


def _rate(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def format_text(name: str, m: dict[str, Any]) -> str:
    """Human-readable block of one trace's aggregates, labelled with DESIGN.md's metric names."""
    h = m["header"]
    out = [f"trace {name}: {m['lines']} lines, {m['malformed_lines']} malformed"
           + (f", {m['ignored_lines']} non-JSON ignored" if m["ignored_lines"] else "")
           + (f", {m['runs']} runs" if m["runs"] > 1 else "")]
    if h:
        kv = m.get("kv_bytes")
        out.append("  run                    " + "  ".join(
            f"{k}={h[k]}" for k in ("model", "backend", "device", "type_k", "type_v", "spec", "draft_block_size",
                                    "pipeline_depth") if k in h) + (f"  kv_bytes={kv}" if kv is not None else ""))
    rows = [
        ("draft acceptance rate", f"{fmt_pct(m['draft_acceptance_rate'])}  ({m['n_accepted']} accepted / "
                                  f"{m['n_drafted']} drafted)"),
        ("acceptance length τ", f"{fmt_tau(m['tau'])}  ({m['rounds']} rounds, {m['skip_rounds']} skipped)"),
        ("per-position p_i", "  ".join(f"p{i} {fmt_pct(p)}" for i, p in enumerate(m["per_position"])) or "—"),
        ("conditional α_i", "  ".join(f"α{i} {fmt_pct(p)}" for i, p in enumerate(m["conditional"])) or "—"),
        ("accepted lengths", "  ".join(f"{i}:{c}" for i, c in enumerate(m["accepted_hist"])) or "—"),
        ("paths", "  ".join(
            f"{p} {c} ({fmt_pct(c / max(1, sum(m['paths'].values())))})" for p, c in m["paths"].items()) or "—"),
        ("tokens", f"prompt {m['n_prompt']}  generated {m['n_gen']}"),
        ("decode tok/s", _rate(m["decode_tok_s"]) + ("  (trace clock)" if m["clock"] == "trace"
                                                      else "  (arrival time; no clock in trace)")),
        ("prefill tok/s", _rate(m["prefill_tok_s"])),
        ("h_l2", "—" if not m["h_l2"]["n"] else
         f"mean {m['h_l2']['mean']:.2f}  min {m['h_l2']['min']:.2f}  max {m['h_l2']['max']:.2f}"),
        ("draft / verify", f"{_us(m['draft_us_mean'])} / {_us(m['verify_us_mean'])} per round"),
        ("malformed lines", str(m["malformed_lines"])),
    ]
    out += [f"  {k:<23}{v}" for k, v in rows]
    return "\n".join(out)


def cmd_stats(args: Any) -> int:
    if args.traces.count("-") > 1:
        raise UserError("'-' (standard input) can be given once; pass the other traces as files")
    aggs = [load(p) for p in args.traces]
    metrics = [a.snapshot() for a in aggs]
    combined = merge_aggregators(aggs).snapshot() if len(aggs) > 1 else metrics[0]
    if not args.json:
        for name, m in zip(args.traces, metrics, strict=True):
            print(format_text(name, m))
        if len(aggs) > 1:
            print(format_text("(all)", combined))
        return 0
    obj = {k: combined[k] for k in JSON_KEYS}
    obj.update({k: v for k, v in combined.items() if k not in obj})
    if len(aggs) > 1:
        obj["traces"] = {name: m for name, m in zip(args.traces, metrics, strict=True)}
    sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS).decode() + "\n")
    return 0
