"""`turbospec top` in a real terminal (tmux) against a file being appended; the screen read with capture-pane."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import time
import uuid

import pytest

from turbospec.tui.synth import synth_lines

pytestmark = pytest.mark.skipif(
    shutil.which("tmux") is None, reason="tmux is not installed (apt-get install -y tmux); .ci/run installs it"
)


def _capture(session: str) -> str:
    return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout


def _wait_screen(session: str, needle: str, timeout: float = 30.0) -> str:
    end = time.monotonic() + timeout
    screen = ""
    while time.monotonic() < end:
        screen = _capture(session)
        if needle in screen:
            return screen
        time.sleep(0.2)
    raise AssertionError(f"{needle!r} not on screen:\n{screen}")


def test_top_in_tmux_follows_appended_file(tmp_path):
    trace = tmp_path / "live.ndjson"
    lines = list(synth_lines(400, block_size=3, skip_every=8, seed=11))
    trace.write_text("\n".join(lines[:100]) + "\n")
    session = f"ts-top-{uuid.uuid4().hex[:8]}"
    # env inside the command: a running tmux server would not pass ours on
    cmd = (f"env TURBOSPEC_CONFIG_DIR={shlex.quote(str(tmp_path / 'config'))} TERM=xterm-256color "
           f"{shlex.quote(sys.executable)} -m turbospec.cli top {shlex.quote(str(trace))}")
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "100", "-y", "30", cmd], check=True)
    try:
        screen = _wait_screen(session, "trace clock")
        for label in ("draft acceptance rate", "acceptance length τ", "decode tok/s", "per-position",
                      "draft paths", "malformed lines 0"):
            assert label in screen
        # append the rest while it runs, in pieces, with a half-written line in between
        rest = "\n".join(lines[100:]) + "\n"
        cut = len(rest) // 2
        with trace.open("a") as f:
            f.write(rest[:cut])
            f.flush()
            time.sleep(0.5)
            f.write(rest[cut:])
        n_rounds = sum(1 for x in lines if '"mtp_accept"' in x)
        screen = _wait_screen(session, f"rounds {n_rounds}")
        assert "malformed lines 0" in screen  # the half line was completed, not counted
        assert "%" in screen and "now" in screen and "peak" in screen
        subprocess.run(["tmux", "send-keys", "-t", session, "c"], check=True)
        _wait_screen(session, "side-by-side")
        subprocess.run(["tmux", "send-keys", "-t", session, "q"], check=True)
        end = time.monotonic() + 10
        while time.monotonic() < end:
            if subprocess.run(["tmux", "has-session", "-t", session], capture_output=True).returncode != 0:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("turbospec top did not quit on 'q'")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


def test_top_reads_a_pipe_in_tmux(tmp_path):
    """`... 2>&1 | turbospec top -`: stderr chatter is ignored, keys still work (the terminal is reopened)."""
    part1 = tmp_path / "p1.txt"
    part2 = tmp_path / "p2.txt"
    lines = list(synth_lines(60, fmt="fork", noise_every=4, seed=5))
    part1.write_text("\n".join(lines[:40]) + "\n")
    part2.write_text("\n".join(lines[40:]) + "\n")
    session = f"ts-pipe-{uuid.uuid4().hex[:8]}"
    producer = f"(cat {shlex.quote(str(part1))}; sleep 1; cat {shlex.quote(str(part2))}; sleep 30)"
    cmd = (f"{producer} | env TURBOSPEC_CONFIG_DIR={shlex.quote(str(tmp_path / 'config'))} TERM=xterm-256color "
           f"{shlex.quote(sys.executable)} -m turbospec.cli top -")
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "100", "-y", "30", cmd], check=True)
    try:
        screen = _wait_screen(session, "rounds 60")
        assert "non-JSON ignored" in screen and "malformed lines 0" in screen
        assert "decode tok/s" in screen and "from arrival time" in screen
        subprocess.run(["tmux", "send-keys", "-t", session, "space"], check=True)
        _wait_screen(session, "PAUSED")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
