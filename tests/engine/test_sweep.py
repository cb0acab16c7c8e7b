"""`turbospec sweep` end to end on the tiny model: rows, resume after an interrupt, failed cells."""

import json

import pytest

from turbospec import results
from turbospec.cli import main
from turbospec.engine import cmd_sweep
from turbospec.engine.cmd_sweep import parse_list
from turbospec.errors import UserError


def test_parse_list_ranges():
    assert parse_list("1,2,4-8+2") == [1, 2, 4, 6, 8]
    assert parse_list("2-6") == [2, 3, 4, 5, 6]
    assert parse_list("f16,q8_0", str) == ["f16", "q8_0"]
    with pytest.raises(UserError):
        parse_list("5-2")
    with pytest.raises(UserError):
        parse_list("x")


def _sweep(tiny, res, *extra):
    return main(["sweep", "-m", str(tiny), "-ctk", "f16,q8_0", "-ctv", "f16", "--spec", "none,ngram",
                 "--draft-block-size", "2-3", "-p", "12", "-n", "6", "-r", "2", "--results", str(res), *extra])


def test_sweep_rows_traces_and_summary(tiny_gguf, tmp_path, capsys):
    res = tmp_path / "r" / "results.jsonl"
    assert _sweep(tiny_gguf, res, "-o", "json") == 0
    rows, problems = results.read_rows(res)
    assert not problems
    assert len(rows) == 2 * 3 * 2  # (f16, q8_0) x (none, ngram B=2, ngram B=3) x 2 repetitions
    assert all(r["status"] == "ok" for r in rows)
    spec_rows = [r for r in rows if r["spec"] == "ngram"]
    assert all(r["tau"] is not None and r["draft_acceptance_rate"] is not None for r in spec_rows)
    assert all((res.parent / r["trace_path"]).exists() for r in rows)
    from turbospec.trace import aggregate_file, compute_metrics

    r = spec_rows[0]
    m = compute_metrics(aggregate_file(res.parent / r["trace_path"]))
    assert abs(m["tau"] - r["tau"]) < 1e-9
    summary = json.loads(capsys.readouterr().out)
    assert len(summary) == 6 and all(c["n"] == 2 for c in summary)


def test_interrupt_then_resume(tiny_gguf, tmp_path, monkeypatch):
    res = tmp_path / "results.jsonl"
    real = cmd_sweep.run_cell
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(cmd_sweep, "run_cell", flaky)
    assert _sweep(tiny_gguf, res) == 130
    rows, _ = results.read_rows(res)
    assert sum(r["status"] == "ok" for r in rows) == 3  # finished rows kept
    assert rows[-1]["status"] == "interrupted"
    monkeypatch.setattr(cmd_sweep, "run_cell", real)
    assert _sweep(tiny_gguf, res, "--resume") == 0
    rows, _ = results.read_rows(res)
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 12  # the 3 earlier ones were not run again
    keys = {(r["type_k"], r["spec"], r["draft_block_size"], r["repetition"]) for r in ok}
    assert len(keys) == 12


def test_failed_cell_recorded_and_sweep_goes_on(tiny_gguf, tmp_path):
    res = tmp_path / "results.jsonl"
    rc = main(["sweep", "-m", str(tiny_gguf), "--spec", "draft,none", "-p", "8", "-n", "4", "-r", "1",
               "--results", str(res)])
    assert rc == 1
    rows, _ = results.read_rows(res)
    by = {r["spec"]: r for r in rows}
    assert by["draft"]["status"] == "failed" and "--model-draft" in by["draft"]["error"]
    assert by["none"]["status"] == "ok"


def test_bad_grid_is_one_line(capsys, tmp_path):
    assert main(["sweep", "-ctk", "turbo9", "--results", str(tmp_path / "x.jsonl")]) == 2
    assert "unknown cache type 'turbo9'" in capsys.readouterr().err
