"""Trace sources for the dashboard: a reader thread per trace (follow, one-shot read or replay).

The thread tails the file (turbospec.trace.Tailer), parses and aggregates off the UI thread
under a lock, and calls ``notify(index, n_lines)`` once per batch; the app refreshes the screen
on its own timer from :meth:`TraceSource.snapshot` (the toolong/dolphie pattern).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from turbospec.trace import (
    PARALLEL_MIN_BYTES,
    Aggregator,
    RangeWorker,
    Split,
    Tailer,
    iter_file_lines,
    parallel_split,
    parse_line,
)

REPLAY_LINES_PER_S = 50.0  # clock-less replay pace at --speed 1 (about one round per 40 ms)
BATCH_LINES = 8192


class TraceSource:
    def __init__(
        self,
        path: str,
        index: int = 0,
        *,
        follow: bool = True,
        replay: bool = False,
        speed: float = 1.0,
        stdin_fd: int | None = None,
        poll_s: float = 0.05,
    ):
        self.path = path
        self.index = index
        self.follow = follow and not replay
        self.replay = replay
        self.speed = speed
        self.poll_s = poll_s
        self.agg = Aggregator(pipe=path == "-")
        self.lock = threading.Lock()
        self.tailer = Tailer(path, stdin_fd=stdin_fd) if not replay else None
        self.status = "starting"
        self.caught_up = False
        self.done = False
        self.version = 0
        self.paused = threading.Event()  # replay only: stops the replay clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def name(self) -> str:
        return "stdin" if self.path == "-" else self.path

    def start(self, notify: Callable[[int, int], None]) -> None:
        target = self._run_replay if self.replay else self._run_tail
        self._thread = threading.Thread(target=target, args=(notify,), name=f"trace-{self.index}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        if self.tailer is not None:
            self.tailer.close()

    def snapshot(self) -> tuple[dict[str, Any], list[list[Any]], bool]:
        """(metrics, copy of the buckets, clocked) taken under the lock."""
        with self.lock:
            return self.agg.snapshot(), [list(b) for b in self.agg.buckets], self.agg.clocked

    def _feed(self, lines: list[bytes], arrival: float | None, notify: Callable[[int, int], None]) -> None:
        for i in range(0, len(lines), BATCH_LINES):
            with self.lock:
                self.agg.feed_lines(lines[i : i + BATCH_LINES], arrival)
        self.version += 1
        notify(self.index, len(lines))

    def _parallel_catch_up(self, notify: Callable[[int, int], None], min_bytes: int) -> bool:
        """Read the complete lines already in a big file with two processes (trace.parallel_split):
        this thread feeds the first half batch by batch (the screen fills as it goes) while a
        worker aggregates the second; then the tailer continues after them. False = not done."""
        t = self.tailer
        assert t is not None
        sp = parallel_split(self.path, min_bytes)
        if sp is None:
            return False
        try:
            with open(self.path, "rb") as fh:  # the worker's range ends at the last complete line
                fh.seek(max(sp.end - 65536, sp.offset))
                tail = fh.read(sp.end - fh.tell())
        except OSError:
            return False
        nl = tail.rfind(b"\n")
        if nl < 0:
            return False
        end = sp.end - len(tail) + nl + 1
        worker = RangeWorker(self.path, Split(sp.offset, end, sp.t_us))
        try:
            if not t._open():
                return False
            batch: list[bytes] = []
            for raw in iter_file_lines(self.path, start=0, end=sp.offset):
                batch.append(raw)
                if len(batch) >= BATCH_LINES:
                    self._feed(batch, None, notify)
                    batch = []
                    if self._stop.is_set():
                        return True
            if batch:
                self._feed(batch, None, notify)
            rest = worker.result()
            if rest is None:  # the worker failed: read its range here
                batch = list(iter_file_lines(self.path, start=sp.offset, end=end))
                self._feed(batch, None, notify)
            else:
                with self.lock:
                    self.agg.concat(rest)
                self.version += 1
                notify(self.index, 0)
            assert t._fh is not None
            t._fh.seek(end)
            t._pos = end
            return True
        finally:
            worker.kill()

    def _run_tail(self, notify: Callable[[int, int], None]) -> None:
        t = self.tailer
        assert t is not None
        live = t.pipe  # the initial catch-up of a file has no meaningful arrival times
        try:
            if not t.pipe:
                self._parallel_catch_up(notify, PARALLEL_MIN_BYTES)
            while not self._stop.is_set():
                lines = t.poll(timeout=self.poll_s if t.pipe else 0.0)
                self.status = t.status
                if lines:
                    self._feed(lines, time.time() if live else None, notify)
                if t.caught_up:
                    if not self.caught_up:
                        self.caught_up = True
                        notify(self.index, 0)
                    live = True
                    if not self.follow or t.eof:
                        rest = t.flush_partial()
                        if rest:
                            self._feed(rest, None, notify)
                        self.done = True
                        self.status = "pipe closed" if t.pipe else "read (not following)"
                        notify(self.index, 0)
                        return
                    if not t.pipe:
                        self._stop.wait(self.poll_s)
        except Exception as e:  # never let a bad file kill the app; show it
            self.status = f"reader stopped: {type(e).__name__}: {e}"
            self.done = True
            notify(self.index, 0)

    def _run_replay(self, notify: Callable[[int, int], None]) -> None:
        """Feed the finished file at its recorded pace (t_us), or REPLAY_LINES_PER_S for clock-less lines."""
        self.status = "replay"
        try:
            lines = iter_file_lines(self.path)
            start = time.monotonic()
            paused_total = 0.0
            t0: int | None = None
            n = 0
            pending: list[bytes] = []
            for raw in lines:
                if self._stop.is_set():
                    return
                o = parse_line(raw) if raw[:1] == b"{" else None
                tu = o.get("t_us") if o is not None else None
                if type(tu) is int:
                    if t0 is None:
                        t0 = tu
                    due = (tu - t0) / 1e6 / self.speed
                else:
                    due = n / REPLAY_LINES_PER_S / self.speed if t0 is None else None
                n += 1
                if due is not None:
                    while True:
                        if self.paused.is_set():
                            p0 = time.monotonic()
                            while self.paused.is_set() and not self._stop.is_set():
                                self._stop.wait(0.05)
                            paused_total += time.monotonic() - p0
                        wait = due - (time.monotonic() - start - paused_total)
                        if wait <= 0 or self._stop.is_set():
                            break
                        if pending:
                            self._feed(pending, time.time(), notify)
                            pending = []
                        self._stop.wait(min(wait, self.poll_s))
                pending.append(raw)
                if len(pending) >= BATCH_LINES:
                    self._feed(pending, time.time(), notify)
                    pending = []
            if pending:
                self._feed(pending, time.time(), notify)
            self.status = "replay finished"
        except Exception as e:
            self.status = f"replay stopped: {type(e).__name__}: {e}"
        self.caught_up = self.done = True
        notify(self.index, 0)
