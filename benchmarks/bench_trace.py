"""Trace pipeline performance: open a 1,000,000-line trace, follow a 20,000 lines/s writer, writer cost.

    python benchmarks/bench_trace.py [--lines 1000000] [--rate 20000] [--seconds 10]

1. Open: time from nothing to the full aggregates of a 1M-line trace (turbospec's format and the
   fork's), three ways: `aggregate_file` (what `turbospec stats` does), the dashboard's reader
   thread, and the headless dashboard until its screen shows the last round. Peer in the same
   run: a plain `json.loads` loop over the same lines (the issue's "over 2 s" baseline). Memory:
   peak RSS of a fresh process aggregating 100k vs 1M lines (bounded = about equal).
   Napkin: 1M lines x ~150 B = 150 MB read in 4 MB chunks; orjson ~0.7 us/line; the aggregator
   adds ~1.5 us/line of Python (no per-line allocation kept: counters and <= 4096 buckets).
2. Follow: a separate process appends `rate` lines/s (in 10 ms bursts) for `seconds`; the headless
   dashboard (refresh 4 Hz) follows it. Reported: refreshes per second achieved, lag in lines
   (written - aggregated) sampled at each refresh, catch-up time after the writer stops.
3. Writer: microseconds per mtp_draft + mtp_accept pair of TraceWriter to a file, as a share
   of a 40 ms decode step.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from turbospec.trace import TraceWriter, aggregate_file, iter_file_lines
from turbospec.tui.app import TopApp, make_sources
from turbospec.tui.reader import TraceSource
from turbospec.tui.synth import synth_lines


def write_synth(path: Path, n_lines: int, fmt: str) -> None:
    n_rounds = n_lines // (2 if fmt == "fork" else 2) + 1
    with path.open("w") as f:
        k = 0
        for line in synth_lines(n_rounds, fmt=fmt, block_size=4, skip_every=50, seed=1, step_us=40_000):
            f.write(line + "\n")
            k += 1
            if k >= n_lines:
                break


def t_json_loads(path: Path) -> float:
    t = time.perf_counter()
    for raw in iter_file_lines(path):
        if raw:
            json.loads(raw)
    return time.perf_counter() - t


def t_aggregate(path: Path) -> tuple[float, float, int]:
    """(wall s, CPU s of this process, rounds): CPU time is less distorted by other load."""
    t, c = time.perf_counter(), time.process_time()
    m = aggregate_file(path).snapshot()
    return time.perf_counter() - t, time.process_time() - c, m["rounds"]


def t_reader(path: Path) -> float:
    src = TraceSource(str(path), follow=False)
    t = time.perf_counter()
    src.start(lambda i, n: None)
    while not src.done:
        time.sleep(0.005)
    return time.perf_counter() - t


def t_dashboard(path: Path, rounds: int) -> float:
    async def run() -> float:
        t = time.perf_counter()  # from nothing: the app's construction and Textual's start-up count
        app = TopApp(make_sources([str(path)]), refresh_hz=5)
        app.start_readers()  # as run_dashboard does
        async with app.run_test(size=(100, 30)) as pilot:
            while not app.sources[0].caught_up:  # a light poll: a busy one would steal the reader's GIL
                await pilot.pause(0.1)
            while True:
                txt = str(app.query_one("#panel0 .misc").render())
                if f"rounds {rounds}" in txt:
                    return time.perf_counter() - t
                await pilot.pause(0.02)

    return asyncio.run(run())


def peak_rss_mb(path: Path) -> float:
    code = ("import resource,sys; from turbospec.trace import aggregate_file; aggregate_file(sys.argv[1]).snapshot(); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True).stdout
    return int(out.strip()) / 1024


WRITER = r"""
import sys, time
from turbospec.tui.synth import synth_lines
path, rate, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
lines = [l + "\n" for l in synth_lines(int(rate * seconds) // 2 + 10, fmt="turbospec", with_header=False, seed=2)]
n = int(rate * seconds)
t0 = time.monotonic()
i = 0
with open(path, "a") as f:
    while i < n:
        due = int((time.monotonic() - t0) * rate)
        if due > i:
            k = min(due, n)
            f.write("".join(lines[i:k]))
            f.flush()
            i = k
        time.sleep(0.01)
print(i, time.monotonic() - t0)
"""


def follow(tmp: Path, rate: float, seconds: float) -> dict[str, float]:
    path = tmp / "live.ndjson"
    path.write_text("")
    sample = list(synth_lines(2000, fmt="turbospec", with_header=False, seed=2))
    bytes_per_line = sum(len(x) + 1 for x in sample) / len(sample)

    async def run() -> dict[str, float]:
        app = TopApp(make_sources([str(path)]), refresh_hz=5)
        lags: list[int] = []
        async with app.run_test(size=(100, 30)) as pilot:
            src = app.sources[0]
            w = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(rate), str(seconds)],
                                 stdout=subprocess.PIPE, text=True)
            r0 = app.refreshes
            t0 = time.perf_counter()
            last_r = app.refreshes
            while w.poll() is None:
                await pilot.pause(0.05)
                if app.refreshes != last_r:
                    last_r = app.refreshes
                    written = path.stat().st_size
                    with src.lock:
                        seen = src.agg.lines
                    # written lines estimated from bytes
                    lags.append(max(0, int(written / bytes_per_line) - seen))
            t_loop = time.perf_counter() - t0
            refreshes = app.refreshes - r0
            out = w.stdout.read().split() if w.stdout else ["0", "1"]
            n_written, t_write = int(out[0]), float(out[1])
            t1 = time.perf_counter()
            while True:
                with src.lock:
                    if src.agg.lines >= n_written:
                        break
                await pilot.pause(0.01)
            catch_up = time.perf_counter() - t1
        return {"lines_written": n_written, "seconds": t_write, "refresh_hz": refreshes / t_loop,
                "lag_lines_median": sorted(lags)[len(lags) // 2] if lags else 0,
                "lag_lines_max": max(lags) if lags else 0, "catch_up_s": catch_up}

    return asyncio.run(run())


def writer_cost(tmp: Path, n: int = 20000) -> float:
    p = tmp / "w.ndjson"
    w = TraceWriter.open(str(p))
    t = time.perf_counter()
    for i in range(n):
        w.mtp_draft(i, "lazy", 0, 128006, -1, 100 + i, 3, 142.3, [882, 441, 7], drafter="mtp", draft_us=1200)
        w.mtp_accept(i, 2, 3, verify_us=30000, n_emitted=3, pos=104 + i)
    w.close()
    return (time.perf_counter() - t) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--rate", type=float, default=20_000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--parts", default="open,follow,writer", help="comma-separated: open, follow, writer")
    ap.add_argument("--formats", default="turbospec,fork")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cpus (numbers measured under that load)")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for fmt in args.formats.split(",") if "open" in parts else []:
            big = tmp / f"{fmt}.ndjson"
            write_synth(big, args.lines, fmt)
            small = tmp / f"{fmt}-small.ndjson"
            write_synth(small, args.lines // 10, fmt)
            tj = t_json_loads(big)
            ta, ca, rounds = t_aggregate(big)
            tr = t_reader(big)
            td = t_dashboard(big, rounds)
            rss_small, rss_big = peak_rss_mb(small), peak_rss_mb(big)
            print(f"[open {fmt}] {args.lines} lines, {big.stat().st_size / 1e6:.0f} MB: "
                  f"aggregate_file {ta:.2f} s (CPU {ca:.2f} s), reader thread {tr:.2f} s, "
                  f"dashboard shows all {td:.2f} s; "
                  f"peer json.loads loop {tj:.2f} s (aggregate/json.loads = {ta / tj:.2f}); "
                  f"peak RSS {rss_small:.0f} MB at {args.lines // 10} lines, {rss_big:.0f} MB at {args.lines}")
        f = follow(tmp, args.rate, args.seconds) if "follow" in parts else None
        if f:
            print(f"[follow] writer {f['lines_written']} lines in {f['seconds']:.1f} s "
                  f"({f['lines_written'] / f['seconds']:.0f} lines/s): refresh {f['refresh_hz']:.1f} Hz, "
                  f"lag median {f['lag_lines_median']} lines, max {f['lag_lines_max']} lines, "
                  f"catch-up after stop {f['catch_up_s'] * 1000:.0f} ms")
        us = writer_cost(tmp) if "writer" in parts else None
        if us is not None:
            print(f"[writer] {us:.1f} us per draft+accept pair = {us / 40_000 * 100:.3f}% of a 40 ms decode step")


if __name__ == "__main__":
    main()
