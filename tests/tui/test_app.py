"""Pilot tests: the dashboard follows a growing file and every binding does what the help says."""

from __future__ import annotations

import asyncio

import pytest

from turbospec.errors import UserError
from turbospec.tui.app import HelpScreen, TopApp, make_sources
from turbospec.tui.keys import KEYS, load_keymap
from turbospec.tui.synth import synth_lines, write_trace


async def wait_for(pilot, cond, timeout=20.0):
    for _ in range(int(timeout / 0.05)):
        if cond():
            return
        await pilot.pause(0.05)
    raise AssertionError("condition not reached")


def _app(paths, **kw):
    return TopApp(make_sources([str(p) for p in paths]), keymap=load_keymap(), **kw)


def _text(app, selector):
    return str(app.query_one(selector).render())


def test_follow_growing_file_and_keys(tmp_path, config_dir):
    a, b = tmp_path / "a.ndjson", tmp_path / "b.ndjson"
    write_trace(a, 100, block_size=4)
    b.write_text("")

    async def run():
        app = _app([a, b], refresh_hz=20)
        async with app.run_test(size=(80, 24)) as pilot:
            s0, s1 = app.sources
            await wait_for(pilot, lambda: s0.caught_up and s1.caught_up)
            await pilot.pause(0.2)
            assert "rounds 100" in _text(app, "#panel0 .misc")
            assert "%" in _text(app, "#acc .values")
            # the file grows: the screen follows
            with a.open("a") as f:
                f.write("\n".join(list(synth_lines(50, block_size=4, with_header=False, seed=3))) + "\n")
            await wait_for(pilot, lambda: "rounds 150" in _text(app, "#panel0 .misc"))
            # pause freezes the screen while the reader keeps reading
            await pilot.press("space")
            assert app.paused
            with a.open("a") as f:
                f.write("\n".join(list(synth_lines(10, block_size=4, with_header=False, seed=4))) + "\n")
            await wait_for(pilot, lambda: s0.agg.rounds == 160)
            await pilot.pause(0.3)
            assert "rounds 150" in _text(app, "#panel0 .misc") and "PAUSED" in _text(app, "#panel0 .status")
            await pilot.press("space")
            assert not app.paused
            await wait_for(pilot, lambda: "rounds 160" in _text(app, "#panel0 .misc"))
            # window length ladder and reset
            assert app.window_s == 10
            await pilot.press("plus")
            assert app.window_s == 30 and app.window_rounds == 500
            await pilot.press("minus", "minus")
            assert app.window_s == 5
            await pilot.press("r")
            assert app.since[0] is not None
            # switch trace, compare view, theme, help
            await pilot.press("right_square_bracket")
            await pilot.pause(0.1)
            assert app.current_index() == 1
            await pilot.press("left_square_bracket")
            await pilot.pause(0.1)
            assert app.current_index() == 0
            await pilot.press("c")
            assert app.compare and app.query_one("#compare").display and not app.query_one("#tabs").display
            await pilot.pause(0.2)
            assert app.query_one("#cmp").row_count == 2
            await pilot.press("c")
            assert not app.compare
            theme = app.theme
            await pilot.press("t")
            assert app.theme != theme and app.theme in ("textual-light", "textual-dark")
            await pilot.press("question_mark")
            assert isinstance(app.screen, HelpScreen)
            shown = str(app.screen.query_one("Static").render())
            for k in KEYS:
                assert k.id in shown
            await pilot.press("escape")
            assert not isinstance(app.screen, HelpScreen)
            await pilot.press("q")
        assert app.return_code in (0, None)

    asyncio.run(run())


def test_keymap_file_remaps(tmp_path, config_dir):
    (config_dir / "keymap.toml").write_text('[keymap]\n"top.pause" = "x"\n"top.compare" = "v"\n')
    p = tmp_path / "t.ndjson"
    write_trace(p, 20)

    async def run():
        app = _app([p])
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("x")
            assert app.paused
            await pilot.press("v")
            assert app.compare
            await pilot.press("space")  # no longer bound to pause
            assert app.paused

    asyncio.run(run())


def test_bad_keymap_is_one_line_user_error(config_dir):
    (config_dir / "keymap.toml").write_text('[keymap]\n"top.nope" = "x"\n')
    with pytest.raises(UserError, match="unknown binding id"):
        load_keymap()
    (config_dir / "keymap.toml").write_text("[keymap\n")
    with pytest.raises(UserError, match="not valid TOML"):
        load_keymap()


def test_missing_file_waits_then_appears(tmp_path, config_dir):
    p = tmp_path / "later.ndjson"

    async def run():
        app = _app([p], refresh_hz=20)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause(0.3)
            assert "waiting for file" in _text(app, "#panel0 .status")
            write_trace(p, 30, fmt="fork", malformed_every=7)
            await wait_for(pilot, lambda: "rounds 30" in _text(app, "#panel0 .misc"))
            assert "malformed lines" in _text(app, "#panel0 .misc")
            assert app.sources[0].agg.malformed_lines > 0
            assert "arrival time" in app.query_one("#dec").border_subtitle

    asyncio.run(run())


def test_replay_plays_at_recorded_pace(tmp_path, config_dir):
    p = tmp_path / "r.ndjson"
    write_trace(p, 40, step_us=40_000)  # ~1.25 s of trace clock, 2.5 s at speed 0.5

    async def run():
        srcs = make_sources([str(p)], replay=True, speed=0.5)
        app = TopApp(srcs, refresh_hz=20)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause(0.02)
            assert not srcs[0].done  # it takes (a little) time
            await wait_for(pilot, lambda: srcs[0].done)
            assert srcs[0].agg.rounds == 40 and srcs[0].status == "replay finished"

    asyncio.run(run())


def test_make_sources_errors(tmp_path):
    with pytest.raises(UserError, match="folder"):
        make_sources([str(tmp_path)])
    with pytest.raises(UserError, match="--replay"):
        make_sources([str(tmp_path / "none.ndjson")], replay=True)
    with pytest.raises(UserError, match="once"):
        make_sources(["-", "-"])


def test_fork_trace_live_rate_from_arrival_time(tmp_path, config_dir):
    """Clock-less fork lines that arrive live get a decode tok/s from their arrival times."""
    p = tmp_path / "fork.ndjson"
    lines = list(synth_lines(60, fmt="fork", seed=8))
    p.write_text("\n".join(lines[:20]) + "\n")

    async def run():
        app = _app([p], refresh_hz=20)
        async with app.run_test(size=(80, 24)) as pilot:
            src = app.sources[0]
            await wait_for(pilot, lambda: src.caught_up)
            assert app.view(src).decode.run is None  # the backlog has no arrival times
            for i in range(20, 60, 10):
                with p.open("a") as f:
                    f.write("\n".join(lines[i : i + 10]) + "\n")
                await pilot.pause(0.15)
            await wait_for(pilot, lambda: src.agg.lines == 60)
            v = app.view(src)
            assert v.decode.run is not None and v.decode.run > 0 and not v.clocked
            assert "from arrival time" in app.query_one("#dec").border_subtitle

    asyncio.run(run())
