"""CLI: `turbospec top` (the live dashboard) and `turbospec stats` (the same aggregates, no screen).

Heavy imports (textual) happen inside the command functions only.
"""

from __future__ import annotations

import argparse
from typing import Any


def _positive(x: str) -> float:
    try:
        v = float(x)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{x!r} is not a number") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"{x!r} must be > 0")
    return v


def register(sub: Any) -> None:
    top = sub.add_parser(
        "top",
        help="live dashboard: follow NDJSON traces (acceptance rate, τ, tok/s) like tail -F",
        description="Follow one or more NDJSON traces (turbospec's or the fork's LLAMA_MTP_ACC_TRACE) and show "
        "draft acceptance rate, acceptance length τ and throughput as they happen. "
        "`-` reads a pipe, e.g. `LLAMA_MTP_ACC_TRACE=1 llama-server ... 2>&1 | turbospec top -`.",
    )
    top.add_argument("traces", nargs="+", metavar="TRACE", help="trace file(s); '-' for standard input")
    top.add_argument("--replay", action="store_true",
                     help="play finished traces at their recorded pace (by line count for clock-less traces)")
    top.add_argument("--speed", type=_positive, default=1.0, help="replay speed factor (default 1.0)")
    top.add_argument("--window", type=_positive, default=None,
                     help="window length: seconds (default 10), or rounds for clock-less traces (default 100)")
    top.add_argument("--theme", choices=("dark", "light"), default="dark")
    top.add_argument("--refresh", type=_positive, default=5.0, help="screen refreshes per second (default 5)")
    top.set_defaults(func=cmd_top)

    st = sub.add_parser(
        "stats",
        help="trace aggregates without a screen (for scripts and CI)",
        description="Draft acceptance rate, τ, per-position acceptance, paths, token counts, decode/prefill "
        "tok/s and malformed lines of whole traces. `--json` prints one object as the last line.",
    )
    st.add_argument("traces", nargs="+", metavar="TRACE", help="trace file(s); '-' for standard input")
    st.add_argument("--json", action="store_true", help="print one JSON object (the last line)")
    st.set_defaults(func=cmd_stats)


def cmd_stats(args: argparse.Namespace) -> int:
    from turbospec.tui.stats import cmd_stats as run

    return run(args)


def cmd_top(args: argparse.Namespace) -> int:
    from turbospec.tui.app import run_dashboard

    return run_dashboard(
        args.traces, follow=not args.replay, replay=args.replay, speed=args.speed, window=args.window,
        theme=args.theme, refresh_hz=args.refresh,
    )
