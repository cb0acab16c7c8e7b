"""Bad input gives clear messages and a partial report, never a traceback."""

from __future__ import annotations

import json

import pytest

from tests.analysis import crafted as C
from turbospec import results as R
from turbospec.analysis import load, report
from turbospec.cli import main


def _report(tmp_path, *paths, capsys=None):
    out = tmp_path / "rep.md"
    rc = main(["report", *map(str, paths), "-o", str(out)])
    return rc, out.read_text() if out.exists() else ""


def test_missing_path_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("turbospec: error:") and "nope.jsonl: no such file" in err[0]
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_bad_output_suffix_is_one_line(tmp_path, capsys):
    rows = C.write_rows(tmp_path / "r.jsonl", C.rows())
    assert main(["report", str(rows), "-o", str(tmp_path / "r.pdf")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "use a .md, .html or .csv file" in err[0]


def test_empty_file_gives_partial_report(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    rc, text = _report(tmp_path, empty, C.fork_trace(tmp_path / "fork.ndjson"))
    assert rc == 0
    assert "empty.jsonl: empty file; nothing to report from it" in text
    assert "## Trace fork.ndjson" in text and "## Cache types" in text


def test_malformed_unknown_missing_and_other_version(tmp_path):
    path = tmp_path / "r.jsonl"
    good = [R.example_row(repetition=i, decode_tok_s=100.0 + i) for i in range(2)]
    C.write_rows(path, good)
    odd = R.example_row(repetition=2, decode_tok_s=50.0, colour="blue")  # unknown column
    old = R.example_row(schema="turbospec.results/0", repetition=3, decode_tok_s=60.0)
    thin = {k: v for k, v in R.example_row(repetition=4).items() if k not in ("decode_tok_s", "tau", "wall_s")}
    strange = R.example_row(repetition=5, decode_tok_s="fast", per_position="abc")
    with open(path, "a") as f:
        f.write("{broken json\n")
        for r in (odd, old, thin, strange):
            f.write(json.dumps(r) + "\n")
        f.write('{"schema":"turbospec.results/1","run_id"')  # half-written last line
    inputs = load.load([path])
    msgs = "\n".join(inputs.messages)
    assert "r.jsonl: malformed JSON, skipped (line 3)" in msgs
    assert "unknown column(s): colour (line 4)" in msgs
    assert "(written by another turbospec version) (line 5)" in msgs
    assert "missing column(s): decode_tok_s, tau, wall_s (line 6)" in msgs
    assert "decode_tok_s must be a number, got 'fast' (line 7)" in msgs
    assert "half-written last line" in msgs
    doc = report.build(inputs)
    assert len(inputs.rows) == 6
    speed = next(t for s, t in doc.tables() if t.title.startswith("Speed and quality")).raw.iloc[0]
    # numeric decode_tok_s values: 100, 101, 50, 60 (the thin and the strange row have none)
    assert speed["decode_tok_s_mean"] == pytest.approx((100 + 101 + 50 + 60) / 4)
    ov = next(s for s in doc.sections if s.title == "Overview")
    assert any("Schema versions mixed" in b for b in ov.blocks if isinstance(b, str))
    text = report.write(doc, str(tmp_path / "r.html"))
    assert "malformed JSON" in text


def test_unknown_files_and_garbage_trace(tmp_path):
    other = tmp_path / "other.json"
    other.write_text('{"hello": 1}\n')
    junk = tmp_path / "junk.jsonl"
    junk.write_text("not json at all\nstill not\n")
    trace = tmp_path / "bad.ndjson"
    trace.write_text(
        '{"evt":"mtp_draft","iter":0,"path":"sync","seq_id":0,"id_last":1,"h_idx":-1,"attn_pos":1,"n_steps":2,'
        '"h_l2":1.0,"drafts":[1,2]}\n'
        '{"evt":"mtp_accept","iter":0,"n_accepted":"two","n_drafted_prev":2}\n'
        '{"evt":"mtp_dr\n'
        "stderr noise\n"
        '{"evt":"mystery","x":1}\n'
    )
    rc, text = _report(tmp_path, other, junk, trace)
    assert rc == 0
    assert "other.json: not a results file, ppl --json output or trace" in text
    assert "junk.jsonl: not a results file" in text
    assert "bad.ndjson: 2 malformed or half-written line(s) skipped" in text
    assert "bad.ndjson: 1 line(s) of unknown events ignored" in text
    assert "bad.ndjson: 1 non-JSON line(s) ignored" in text
    assert "## Trace bad.ndjson" in text


def test_pretty_ppl_json_folder_input_and_missing_types(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    (d / "ppl_q8.json").write_text(json.dumps(C.PPL[1], indent=2))
    (d / "ppl_f16.json").write_text(json.dumps({k: v for k, v in C.PPL[0].items() if k not in ("type_k",)}))
    (d / "notes.txt").write_text("ignored: not a .json/.jsonl/.ndjson file")
    inputs = load.load([d])
    assert len(inputs.ppl) == 2
    assert any("ppl result without type_k; read as f16" in m for m in inputs.messages)
    doc = report.build(inputs)
    q = next(t for s, t in doc.tables() if t.title.startswith("Speed and quality")).shown.set_index("type_k")
    assert q.loc["q8_0", "ΔPPL vs f16"] == "+5.0%"
    assert "Decode speed" not in q.columns or q.loc["q8_0", "decode tok/s"] == "n/a"


def test_failed_rows_and_missing_trace(tmp_path):
    rows = [
        R.example_row(status="failed", error="out of memory at n_ctx 131072", decode_tok_s=None),
        R.example_row(status="interrupted", repetition=1, decode_tok_s=None),
        R.example_row(spec="mtp", draft_block_size=3, draft_max=4, trace_path="gone.ndjson", per_position=[0.5, 0.2]),
    ]
    rc, text = _report(tmp_path, C.write_rows(tmp_path / "r.jsonl", rows))
    assert rc == 0
    assert "## Failed and interrupted cells" in text and "out of memory at n_ctx 131072" in text
    assert "1 row(s) name a trace_path that does not exist" in text
    assert "## Draft block sizes" in text  # the ok row still reports, its costs n/a


def test_results_only_with_failures_has_no_crash(tmp_path):
    rows = [R.example_row(status="failed", error="boom", decode_tok_s=None)]
    rc, text = _report(tmp_path, C.write_rows(tmp_path / "r.jsonl", rows))
    assert rc == 0 and "boom" in text and "no ok result rows" in text
