"""Report figures as PNG bytes (matplotlib, Agg backend; no display needed)."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    _plt().close(fig)
    return buf.getvalue()


def _clean(xs: Sequence[float]) -> list[float]:
    return [math.nan if x is None else float(x) for x in xs]


def lines(
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    title: str,
    xlabel: str,
    ylabel: str,
    *,
    logx: bool = False,
    percent: bool = False,
    hline: float | None = None,
    markers: bool = True,
) -> bytes:
    """One line per label: label -> (x, y)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for label, (x, y) in series.items():
        yy = [100.0 * v for v in _clean(y)] if percent else _clean(y)
        ax.plot(_clean(x), yy, marker="o" if markers else None, ms=3, lw=1.4, label=label)
    if hline is not None:
        ax.axhline(hline, color="grey", lw=0.8, ls="--")
    if logx:
        ax.set_xscale("log", base=2)
    elif all(float(v).is_integer() for x, _ in series.values() for v in _clean(x) if not math.isnan(v)):
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel + (" (%)" if percent else ""))
    ax.grid(alpha=0.3)
    if 1 < len(series) <= 12:
        ax.legend(fontsize=7)
    return _png(fig)


def bars(
    labels: Sequence[str],
    values: Sequence[float],
    title: str,
    ylabel: str,
    *,
    errors: Sequence[float] | None = None,
    percent: bool = False,
    hline: float | None = None,
) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(labels) + 2.0), 3.6))
    scale = 100.0 if percent else 1.0
    vals = [scale * v for v in _clean(values)]
    err = None if errors is None else [0.0 if math.isnan(e) else scale * e for e in _clean(errors)]
    ax.bar(range(len(vals)), vals, yerr=err, capsize=3, color="#4c72b0")
    ax.set_xticks(range(len(vals)), labels, rotation=30 if len(labels) > 4 else 0, ha="right", fontsize=8)
    if hline is not None:
        ax.axhline(scale * hline, color="grey", lw=0.8, ls="--")
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel + (" (%)" if percent else ""))
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def grouped_bars(
    labels: Sequence[str], groups: dict[str, Sequence[float]], title: str, ylabel: str, *, hline: float | None = None
) -> bytes:
    """Bars side by side per label: group name -> one value per label (e.g. measured / predicted)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.8 * len(labels) + 2.0), 3.6))
    n = max(1, len(groups))
    width = 0.8 / n
    for j, (name, vals) in enumerate(groups.items()):
        xs = [i + (j - (n - 1) / 2) * width for i in range(len(labels))]
        ax.bar(xs, _clean(vals), width=width, label=name)
    ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 4 else 0, ha="right", fontsize=8)
    if hline is not None:
        ax.axhline(hline, color="grey", lw=0.8, ls="--")
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    return _png(fig)
