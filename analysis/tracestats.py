"""Figures of one NDJSON trace (turbospec's or the fork's bare lines) for the report.

Parsing and the totals (acceptance, τ, per-position, paths, throughput) come from
``turbospec.trace``; this module only adds the series over time (rolling acceptance, h_l2) and
the draft/verify/plain-step costs the predicted speedup needs.
"""

from __future__ import annotations

import math
from array import array
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
    """Rolling window: about 1/50 of the rounds, at least 1, at most 1000."""
    return max(1, min(1000, rounds // 50))


MAX_POINTS = 4000  # points per plotted series (longer series are thinned evenly)


def read(path: str | Path) -> TraceStats:
    """Read and summarise one trace in one streaming pass (memory: a few numbers per round, not
    the lines); never raises on bad content (messages instead). A missing file raises turbospec's
    UserError (from turbospec.trace)."""
    from turbospec import trace as T  # the trace contract: parsing and totals

    p = Path(path)
    st = TraceStats(p)
    series = _Series()
    bad = good = 0
    plain_sum, plain_n = 0.0, 0
    agg = T.Aggregator()
    ignored = 0
    for raw in T.iter_file_lines(p):
        head = raw.lstrip()[:1]
        if not head:
            continue
        if head != b"{":  # e.g. llama.cpp's own stderr lines around LLAMA_MTP_ACC_TRACE=1 output
            ignored += 1
            continue
        obj = T.parse_line(raw)
        if obj is None:
            bad += 1
            continue
        good += 1
        agg.feed_obj(obj)
        series.feed(obj)
        if obj.get("evt") == "decode" and _isnum(obj.get("us")):
            plain_sum += obj["us"]
            plain_n += 1
    m = T.compute_metrics(agg)
    st.lines = good + bad + ignored
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
    st.plain_step_us = plain_sum / plain_n if plain_n else math.nan
    series.finish(st)
    if st.lines == 0:
        st.messages.append(f"{p}: empty trace; nothing to report from it")
    elif not good:
        st.messages.append(f"{p}: no line of the trace could be read")
    if st.malformed:
        st.messages.append(f"{p}: {st.malformed} malformed or half-written line(s) skipped")
    if ignored:
        st.messages.append(f"{p}: {ignored} non-JSON line(s) ignored (other output around the trace lines)")
    if m["unknown_events"]:
        st.messages.append(f"{p}: {m['unknown_events']} line(s) of unknown events ignored")
    return st


def _f(x: Any) -> float:
    return float(x) if _isnum(x) else math.nan


def _isnum(x: Any) -> bool:
    return type(x) is int or type(x) is float


def thin(xs: list[float], ys: list[float], max_points: int = MAX_POINTS) -> tuple[list[float], list[float]]:
    """Every k-th point so that at most ``max_points`` remain (the last point is kept)."""
    n = len(xs)
    if n <= max_points:
        return xs, ys
    step = math.ceil(n / max_points)
    idx = list(range(0, n, step))
    if idx[-1] != n - 1:
        idx.append(n - 1)
    return [xs[i] for i in idx], [ys[i] for i in idx]


class _Series:
    """Per-round acceptance and per-draft h_l2 against the trace clock (seconds since the first
    clocked line) or, for the fork's clock-less lines, the round/draft index. Compact arrays."""

    def __init__(self) -> None:
        self.t0: int | None = None
        self.acc, self.dr = array("i"), array("i")
        self.rx, self.hx, self.h = array("d"), array("d"), array("d")
        self.clock_missing = False

    def _x(self, obj: dict[str, Any], n: int) -> float:
        t = obj.get("t_us")
        if type(t) is int:
            if self.t0 is None:
                self.t0 = t
            return (t - self.t0) / 1e6
        self.clock_missing = True
        return float(n)

    def feed(self, obj: dict[str, Any]) -> None:
        evt = obj.get("evt")
        if evt == "mtp_accept":
            na, nd = obj.get("n_accepted"), obj.get("n_drafted_prev")
            if type(na) is not int or type(nd) is not int or na < 0 or nd < 0:
                return
            self.acc.append(na)
            self.dr.append(nd)
            self.rx.append(self._x(obj, len(self.rx)))
        elif evt == "mtp_draft" and _isnum(obj.get("h_l2")) and obj.get("drafts"):
            self.h.append(float(obj["h_l2"]))
            self.hx.append(self._x(obj, len(self.hx)))
        elif type(obj.get("t_us")) is int and self.t0 is None:
            self.t0 = obj["t_us"]

    def finish(self, st: TraceStats) -> None:
        if not st.has_clock or self.clock_missing:  # mixed or no clock: index axes throughout
            rx, hx = [float(i) for i in range(len(self.rx))], [float(i) for i in range(len(self.hx))]
            st.has_clock = st.has_clock and not self.clock_missing
        else:
            rx, hx = list(self.rx), list(self.hx)
        st.window = window_for(len(self.acc))
        rate = rolling_rate(list(self.acc), list(self.dr), st.window)
        st.round_x, st.rolling_acceptance = thin(rx, rate)
        st.h_l2_x, st.h_l2 = thin(hx, list(self.h))
