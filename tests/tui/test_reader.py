"""Reader threads: one-shot read and replay give the same aggregates as the file itself."""

from __future__ import annotations

import time

import pytest

from turbospec.trace import aggregate_file
from turbospec.tui.reader import TraceSource
from turbospec.tui.synth import write_trace

RATE_KEYS = {"decode_tok_s", "decode_s"}  # replayed clock-less lines get arrival times


def _run(src: TraceSource, timeout: float = 30.0) -> None:
    calls: list[int] = []
    src.start(lambda i, n: calls.append(n))
    end = time.monotonic() + timeout
    while not src.done and time.monotonic() < end:
        time.sleep(0.02)
    src.stop()
    assert src.done and calls, src.status


@pytest.mark.parametrize("fmt", ["turbospec", "fork"])
@pytest.mark.parametrize("replay", [False, True])
def test_source_equals_file_aggregates(tmp_path, fmt, replay):
    p = tmp_path / "t.ndjson"
    write_trace(p, 30, fmt=fmt, skip_every=4, malformed_every=9, step_us=2_000)
    src = TraceSource(str(p), follow=False, replay=replay, speed=50.0)
    _run(src)
    want = aggregate_file(p).snapshot()
    got, _, _ = src.snapshot()
    ignore = RATE_KEYS if (replay and fmt == "fork") else set()
    assert {k: v for k, v in got.items() if k not in ignore} == {k: v for k, v in want.items() if k not in ignore}
    assert src.status in ("replay finished", "read (not following)")


def test_source_parallel_catch_up_equals_file(tmp_path, monkeypatch):
    """A big file is read by the reader thread and a worker process; same aggregates, and the
    reader goes on following lines appended afterwards."""
    from turbospec.tui import reader as reader_mod
    from turbospec.tui.synth import synth_lines

    p = tmp_path / "t.ndjson"
    lines = list(synth_lines(3000, fmt="turbospec", skip_every=6, malformed_every=19, step_us=30_000))
    cut = len(lines) * 3 // 4
    p.write_text("\n".join(lines[:cut]) + "\n")
    used = []
    orig = reader_mod.TraceSource._parallel_catch_up

    def spy(self, notify, min_bytes):
        r = orig(self, notify, 0)
        used.append(r)
        return r

    monkeypatch.setattr(reader_mod.TraceSource, "_parallel_catch_up", spy)
    src = TraceSource(str(p), follow=True, poll_s=0.01)
    src.start(lambda i, n: None)
    end = time.monotonic() + 30
    while not src.caught_up and time.monotonic() < end:
        time.sleep(0.02)
    with p.open("a") as f:
        f.write("\n".join(lines[cut:]) + "\n")
    want = aggregate_file(p, parallel_min_bytes=1 << 40).snapshot()
    while time.monotonic() < end:
        got, _, _ = src.snapshot()
        if got["lines"] == want["lines"]:
            break
        time.sleep(0.02)
    src.stop()
    assert used == [True]
    assert got.keys() == want.keys()
    for k in want:  # h_l2 sums of two halves may differ in the last bits
        assert got[k] == want[k] or str(got[k]) == str(want[k]) or k == "h_l2", k
    assert got["h_l2"]["mean"] == pytest.approx(want["h_l2"]["mean"], rel=1e-12)
