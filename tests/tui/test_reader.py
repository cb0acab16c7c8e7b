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
