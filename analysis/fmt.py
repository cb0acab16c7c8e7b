"""Number formatting shared by every report: one convention, one place.

Percentages with one decimal (83.2%), tau with two (2.47), rates as mean ± std."""

from __future__ import annotations

import math
from typing import Any


def missing(x: Any) -> bool:
    if x is None:
        return True
    try:
        return math.isnan(float(x))
    except (TypeError, ValueError):
        return False


def pct(x: Any) -> str:
    """0.832 -> '83.2%'."""
    return "n/a" if missing(x) else f"{100.0 * float(x):.1f}%"


def signed_pct(x: Any) -> str:
    """Relative change 0.123 -> '+12.3%'."""
    return "n/a" if missing(x) else f"{100.0 * float(x):+.1f}%"


def tau(x: Any) -> str:
    """2.4666 -> '2.47'."""
    return "n/a" if missing(x) else f"{float(x):.2f}"


def num(x: Any, digits: int = 2) -> str:
    return "n/a" if missing(x) else f"{float(x):.{digits}f}"


def ratio(x: Any) -> str:
    """Speedup 1.234 -> '1.23x'."""
    return "n/a" if missing(x) else f"{float(x):.2f}x"


def mean_std(mean: Any, std: Any, digits: int = 2) -> str:
    """'12.34 ± 0.56'; a single sample (std missing) shows the mean alone."""
    if missing(mean):
        return "n/a"
    if missing(std):
        return f"{float(mean):.{digits}f}"
    return f"{float(mean):.{digits}f} ± {float(std):.{digits}f}"


def pct_std(mean: Any, std: Any) -> str:
    if missing(mean):
        return "n/a"
    if missing(std):
        return pct(mean)
    return f"{100.0 * float(mean):.1f}% ± {100.0 * float(std):.1f}"


def nbytes(x: Any) -> str:
    """Binary units: 1536 -> '1.50 KiB'."""
    if missing(x):
        return "n/a"
    v = float(x)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(v) < 1024.0 or unit == "TiB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.2f} {unit}"
        v /= 1024.0
    raise AssertionError("unreachable")


def integer(x: Any) -> str:
    return "n/a" if missing(x) else f"{int(round(float(x)))}"
