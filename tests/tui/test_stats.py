"""`turbospec stats`: text and --json output, stdin, errors; and that it does not import textual."""

from __future__ import annotations

import json
import subprocess
import sys

from turbospec.cli import main
from turbospec.trace import aggregate_file
from turbospec.tui.synth import synth_lines, write_trace

KEYS = ["draft_acceptance_rate", "tau", "per_position", "rounds", "n_accepted", "n_drafted", "paths", "malformed_lines"]


def test_stats_json_last_line(tmp_path, capsys):
    p = tmp_path / "t.ndjson"
    write_trace(p, 200, block_size=4, skip_every=6, malformed_every=40)
    assert main(["stats", str(p), "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    obj = json.loads(out[-1])
    assert list(obj)[: len(KEYS)] == KEYS
    want = aggregate_file(p).snapshot()
    for k in KEYS:
        assert obj[k] == want[k]
    assert obj["malformed_lines"] > 0 and len(obj["per_position"]) == 3


def test_stats_text_labels(tmp_path, capsys):
    p = tmp_path / "f.ndjson"
    write_trace(p, 100, fmt="fork", skip_every=5)
    assert main(["stats", str(p)]) == 0
    out = capsys.readouterr().out
    for label in ("draft acceptance rate", "acceptance length τ", "per-position p_i", "paths", "decode tok/s",
                  "prefill tok/s", "malformed lines", "arrival time"):
        assert label in out
    m = aggregate_file(p).snapshot()
    assert f"{100 * m['draft_acceptance_rate']:.1f}%" in out and f"{m['tau']:.2f}" in out


def test_stats_several_traces_combined(tmp_path, capsys):
    a, b = tmp_path / "a.ndjson", tmp_path / "b.ndjson"
    write_trace(a, 50, seed=1)
    write_trace(b, 70, fmt="fork", seed=2)
    assert main(["stats", str(a), str(b), "--json"]) == 0
    obj = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert obj["rounds"] == 120 and set(obj["traces"]) == {str(a), str(b)}
    assert obj["n_accepted"] == obj["traces"][str(a)]["n_accepted"] + obj["traces"][str(b)]["n_accepted"]


def test_stats_stdin_ignores_chatter():
    lines = list(synth_lines(40, fmt="fork", noise_every=3))
    r = subprocess.run([sys.executable, "-m", "turbospec.cli", "stats", "-", "--json"], input="\n".join(lines),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    obj = json.loads(r.stdout.strip().splitlines()[-1])
    assert obj["rounds"] == 40 and obj["malformed_lines"] == 0 and obj["ignored_lines"] > 0


def test_stats_missing_file_one_line_error(tmp_path, capsys):
    assert main(["stats", str(tmp_path / "nope.ndjson")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("turbospec: error: trace file") and "\n" not in err


def test_stats_does_not_import_textual(tmp_path):
    p = tmp_path / "t.ndjson"
    write_trace(p, 10)
    code = ("import sys; from turbospec.cli import main; rc = main(['stats', sys.argv[1]]); "
            "assert 'textual' not in sys.modules, 'textual imported'; sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
