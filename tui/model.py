"""Window, peak and sparkline numbers of one trace, computed from the Aggregator's buckets.

Plain Python, no textual: the dashboard calls :func:`view_of` on each refresh. A bucket is one
second of trace clock, or one round for the fork's clock-less traces (windows then count rounds).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from turbospec.trace import (
    B_ACC,
    B_DECODE_US,
    B_DRAFTED,
    B_H_N,
    B_H_SUM,
    B_KEY,
    B_PREFILL_TOK,
    B_PREFILL_US,
    B_ROUNDS,
    B_TIMED,
)

WINDOWS_S = (5.0, 10.0, 30.0, 60.0, 300.0)
WINDOWS_ROUNDS = (10.0, 50.0, 100.0, 500.0, 1000.0)
DEFAULT_WINDOW_S = 10.0
DEFAULT_WINDOW_ROUNDS = 100.0
SPARK_POINTS = 100


@dataclass
class Triple:
    """A headline number as current window / whole run / peak (of the window value over the run)."""

    window: float | None = None
    run: float | None = None
    peak: float | None = None


@dataclass
class View:
    metrics: dict[str, Any]
    clocked: bool
    window: float
    acceptance: Triple = field(default_factory=Triple)
    tau: Triple = field(default_factory=Triple)
    decode: Triple = field(default_factory=Triple)
    prefill: Triple = field(default_factory=Triple)
    spark_acceptance: list[float] = field(default_factory=list)
    spark_tau: list[float] = field(default_factory=list)
    spark_decode: list[float] = field(default_factory=list)
    spark_h_l2: list[float] = field(default_factory=list)
    window_rounds: int = 0


def _sums(bs: Sequence[list[Any]]) -> list[float]:
    s = [0.0] * 11
    for b in bs:
        for i in (B_ROUNDS, B_ACC, B_DRAFTED, B_DECODE_US, B_TIMED, B_PREFILL_TOK, B_PREFILL_US, B_H_SUM, B_H_N):
            s[i] += b[i]
    return s


def _acc(s: Sequence[float]) -> float | None:
    return s[B_ACC] / s[B_DRAFTED] if s[B_DRAFTED] else None


def _tau(s: Sequence[float]) -> float | None:
    return 1.0 + s[B_ACC] / s[B_ROUNDS] if s[B_ROUNDS] else None


def _dec(s: Sequence[float]) -> float | None:
    return s[B_TIMED] / (s[B_DECODE_US] / 1e6) if s[B_DECODE_US] > 0 else None


def _pre(s: Sequence[float]) -> float | None:
    return s[B_PREFILL_TOK] / (s[B_PREFILL_US] / 1e6) if s[B_PREFILL_US] > 0 else None


def _h(s: Sequence[float]) -> float | None:
    return s[B_H_SUM] / s[B_H_N] if s[B_H_N] else None


def window_sums(buckets: Sequence[list[Any]], width: float, since_key: int | None = None) -> list[float]:
    """Sums over the buckets of the last `width` keys (seconds or rounds), after `since_key` if set."""
    if not buckets:
        return [0.0] * 11
    last = buckets[-1][B_KEY]
    lo = last - width
    if since_key is not None:
        lo = max(lo, since_key)
    sel = []
    for b in reversed(buckets):
        if b[B_KEY] <= lo:
            break
        sel.append(b)
    return _sums(sel)


def rolling(buckets: Sequence[list[Any]], width: float, since_key: int | None = None) -> list[list[float]]:
    """The window sums ending at each bucket (two pointers, O(n))."""
    out: list[list[float]] = []
    s = [0.0] * 11
    j = 0
    idx = (B_ROUNDS, B_ACC, B_DRAFTED, B_DECODE_US, B_TIMED, B_PREFILL_TOK, B_PREFILL_US, B_H_SUM, B_H_N)
    start = 0
    if since_key is not None:
        while start < len(buckets) and buckets[start][B_KEY] <= since_key:
            start += 1
    j = start
    for i in range(start, len(buckets)):
        b = buckets[i]
        for k in idx:
            s[k] += b[k]
        lo = b[B_KEY] - width
        while buckets[j][B_KEY] <= lo:
            for k in idx:
                s[k] -= buckets[j][k]
            j += 1
        out.append(list(s))
    return out


def _peak(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return max(vals) if vals else None


def _chunked(buckets: Sequence[list[Any]], chunk: int, fn: Any, n_points: int) -> list[float]:
    """One point per `chunk` keys over the last n_points chunks; gaps repeat nothing (skipped)."""
    if not buckets:
        return []
    last = buckets[-1][B_KEY]
    lo = last - chunk * n_points
    groups: dict[int, list[list[Any]]] = {}
    for b in reversed(buckets):
        if b[B_KEY] <= lo:
            break
        groups.setdefault((b[B_KEY] - lo - 1) // chunk, []).append(b)
    out = []
    for g in sorted(groups):
        v = fn(_sums(groups[g]))
        if v is not None:
            out.append(float(v))
    return out


def view_of(
    metrics: dict[str, Any], buckets: Sequence[list[Any]], clocked: bool, width: float, since_key: int | None = None
) -> View:
    """Everything the dashboard shows for one trace."""
    v = View(metrics=metrics, clocked=clocked, window=width)
    w = window_sums(buckets, width, since_key)
    roll = rolling(buckets, width, since_key)
    v.window_rounds = int(w[B_ROUNDS])
    v.acceptance = Triple(_acc(w), metrics["draft_acceptance_rate"], _peak([_acc(s) for s in roll]))
    v.tau = Triple(_tau(w), metrics["tau"], _peak([_tau(s) for s in roll]))
    v.decode = Triple(_dec(w), metrics["decode_tok_s"], _peak([_dec(s) for s in roll]))
    v.prefill = Triple(_pre(w), metrics["prefill_tok_s"], _peak([_pre(s) for s in roll]))
    chunk = max(1, int(width // 10))
    v.spark_acceptance = _chunked(buckets, chunk, _acc, SPARK_POINTS)
    v.spark_tau = _chunked(buckets, chunk, _tau, SPARK_POINTS)
    v.spark_decode = _chunked(buckets, chunk, _dec, SPARK_POINTS)
    v.spark_h_l2 = _chunked(buckets, chunk, _h, SPARK_POINTS)
    return v


def next_window(current: float, clocked: bool, longer: bool) -> float:
    """The next window length in the ladder (seconds, or rounds for clock-less traces)."""
    ladder = WINDOWS_S if clocked else WINDOWS_ROUNDS
    if longer:
        return next((x for x in ladder if x > current), ladder[-1])
    return next((x for x in reversed(ladder) if x < current), ladder[0])
