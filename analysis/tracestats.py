"""Figures of one NDJSON trace (turbospec's or the fork's bare lines) for the report.

Parsing and the totals (acceptance, τ, per-position, paths, throughput) come from
``turbospec.trace``; this module only adds the series over time (rolling acceptance, h_l2) and
the draft/verify/plain-step costs the predicted speedup needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TraceStats:
    path: Path
    run_start: dict[str, Any] | None = None
    run_end: dict[str, Any] | None = None
    has_clock: bool = False
    lines: int = 0
    malformed: int = 0
    rounds: int = 0  # mtp_accept lines
    skipped: int = 0  # draft lines without drafts (skip-streak / skip-nsteps)
    drafted: int = 0
    accepted: int = 0
    acceptance_rate: float = math.nan
    tau: float = math.nan
    per_position: list[float] = field(default_factory=list)
    alpha: list[float] = field(default_factory=list)
    drafted_at: list[int] = field(default_factory=list)
    paths: dict[str, int] = field(default_factory=dict)
    path_acceptance: dict[str, float] = field(default_factory=dict)  # draft acceptance rate per path
    decode_tok_s: float = math.nan
    prefill_tok_s: float = math.nan
    draft_us: float = math.nan  # mean per round
    verify_us: float = math.nan  # mean per round
    plain_step_us: float = math.nan  # mean per plain decode step
    h_l2_mean: float = math.nan
    window: int = 1
    round_x: list[float] = field(default_factory=list)
    rolling_acceptance: list[float] = field(default_factory=list)
    h_l2_x: list[float] = field(default_factory=list)
    h_l2: list[float] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)


def rolling_rate(accepted: list[int], drafted: list[int], window: int) -> list[float]:
    """Σ accepted / Σ drafted over the last ``window`` rounds, at every round."""
    out, sa, sd = [], 0, 0
    for i, (a, d) in enumerate(zip(accepted, drafted, strict=True)):
        sa += a
        sd += d
        if i >= window:
            sa -= accepted[i - window]
            sd -= drafted[i - window]
        out.append(sa / sd if sd else math.nan)
    return out


def window_for(rounds: int) -> int:
    return max(1, min(64, rounds // 20))


def read(path: str | Path) -> TraceStats:
    """Read and summarise one trace; never raises on bad content (messages instead). A missing
    file raises turbospec's UserError (from turbospec.trace)."""
    from turbospec import trace as T  # the trace contract: parsing and totals

    p = Path(path)
    st = TraceStats(p)
    events: list[dict[str, Any]] = []
    bad = 0
    agg = T.Aggregator()
    for obj in T.read_trace(p):
        if obj is None:
            bad += 1
            continue
        events.append(obj)
        agg.feed_obj(obj)
    m = T.compute_metrics(agg)
    st.lines = len(events) + bad
    st.malformed = bad + int(m["malformed_lines"])
    st.run_start = m["header"] or None
    st.run_end = m["end"] or None
    st.has_clock = m["clock"] == "trace"
    st.rounds, st.skipped = int(m["rounds"]), int(m["skip_rounds"])
    st.drafted, st.accepted = int(m["n_drafted"]), int(m["n_accepted"])
    st.acceptance_rate = _f(m["draft_acceptance_rate"])
    st.tau = _f(m["tau"])
    st.per_position = [_f(x) for x in m["per_position"]]
    st.alpha = [_f(x) for x in m["conditional"]]
    st.drafted_at = [sum(c for (nd, _), c in agg.pair_counts.items() if nd > i) for i in range(len(st.per_position))]
    st.paths = dict(m["paths"])
    st.path_acceptance = {k: _f(v.get("draft_acceptance_rate")) for k, v in m["path_acceptance"].items()}
    st.decode_tok_s = _f(m["decode_tok_s"]) if st.has_clock else math.nan
    st.prefill_tok_s = _f(m["prefill_tok_s"])
    st.draft_us = _f(m["draft_us_mean"])
    st.verify_us = _f(m["verify_us_mean"])
    st.h_l2_mean = _f(m["h_l2"]["mean"])
    plain = [float(e["us"]) for e in events if e.get("evt") == "decode" and _isnum(e.get("us"))]
    st.plain_step_us = sum(plain) / len(plain) if plain else math.nan
    _series(events, st)
    if st.lines == 0:
        st.messages.append(f"{p}: empty trace; nothing to report from it")
    elif not events:
        st.messages.append(f"{p}: no line of the trace could be read")
    if st.malformed:
        st.messages.append(f"{p}: {st.malformed} malformed or half-written line(s) skipped")
    if m["unknown_events"]:
        st.messages.append(f"{p}: {m['unknown_events']} line(s) of unknown events ignored")
    return st


def _f(x: Any) -> float:
    return float(x) if _isnum(x) else math.nan


def _isnum(x: Any) -> bool:
    return type(x) is int or type(x) is float


def _series(events: list[dict[str, Any]], st: TraceStats) -> None:
    """Rolling acceptance per round and h_l2 per draft line, against seconds since the first
    clocked line (when the trace has a clock) or the round/draft index."""
    t0 = next((e["t_us"] for e in events if type(e.get("t_us")) is int), None)
    acc: list[int] = []
    dr: list[int] = []
    for e in events:
        evt = e.get("evt")
        t = e.get("t_us")
        clocked = st.has_clock and t0 is not None and type(t) is int
        if evt == "mtp_accept":
            na, nd = e.get("n_accepted"), e.get("n_drafted_prev")
            if type(na) is not int or type(nd) is not int or na < 0 or nd < 0:
                continue
            acc.append(na)
            dr.append(nd)
            st.round_x.append((t - t0) / 1e6 if clocked else float(len(st.round_x)))
        elif evt == "mtp_draft" and _isnum(e.get("h_l2")) and e.get("drafts"):
            st.h_l2.append(float(e["h_l2"]))
            st.h_l2_x.append((t - t0) / 1e6 if clocked else float(len(st.h_l2_x)))
    st.window = window_for(len(acc))
    st.rolling_acceptance = rolling_rate(acc, dr, st.window)
