"""Snapshot tests of the main screens at fixed sizes (pytest-textual-snapshot; textual pinned exactly).

Update after an intended change: `pytest tests/tui/test_snapshots.py --snapshot-update`.
"""

from __future__ import annotations

import pytest

from turbospec.tui.app import TopApp, make_sources
from turbospec.tui.synth import write_trace

pytest.importorskip("pytest_textual_snapshot", reason="pytest-textual-snapshot is not installed")


@pytest.fixture
def traces(tmp_path, monkeypatch, config_dir):
    monkeypatch.chdir(tmp_path)  # relative names: the screen shows them
    monkeypatch.setenv("TURBOSPEC_CONFIG_DIR", "config")  # the help screen shows the keymap path
    write_trace(tmp_path / "turbospec.ndjson", 400, block_size=4, skip_every=9, malformed_every=300, seed=1)
    write_trace(tmp_path / "fork.ndjson", 300, fmt="fork", block_size=3, skip_every=7, seed=2)
    return ["turbospec.ndjson", "fork.ndjson"]


def _app(paths, theme="dark"):
    return TopApp(make_sources(paths), theme=theme, refresh_hz=10)


async def _loaded(pilot):
    app = pilot.app
    for _ in range(400):
        if all(s.caught_up for s in app.sources):
            break
        await pilot.pause(0.05)
    for _ in range(2):  # the second draw sees the final layout (box widths)
        app.refresh_view(force=True)
        await pilot.pause(0.2)
    app.paused = True  # freeze: no more timer refreshes while the snapshot is taken


def test_main_80x24(snap_compare, traces):
    assert snap_compare(_app(traces), terminal_size=(80, 24), run_before=_loaded)


def test_main_200x60(snap_compare, traces):
    assert snap_compare(_app(traces), terminal_size=(200, 60), run_before=_loaded)


def test_fork_tab_light_80x24(snap_compare, traces):
    async def before(pilot):
        await _loaded(pilot)
        pilot.app.paused = False
        await pilot.press("right_square_bracket")
        await _loaded(pilot)

    assert snap_compare(_app(traces, theme="light"), terminal_size=(80, 24), run_before=before)


def test_compare_view_100x30(snap_compare, traces):
    async def before(pilot):
        await _loaded(pilot)
        pilot.app.paused = False
        await pilot.press("c")
        await _loaded(pilot)

    assert snap_compare(_app(traces), terminal_size=(100, 30), run_before=before)


def test_help_80x24(snap_compare, traces):
    async def before(pilot):
        await _loaded(pilot)
        await pilot.press("question_mark")
        await pilot.pause(0.2)

    assert snap_compare(_app(traces), terminal_size=(80, 24), run_before=before)
