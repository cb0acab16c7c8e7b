"""turbospec.results: the row schema, the atomic appender and the tolerant reader."""

from __future__ import annotations

import json
import os

import pytest

from turbospec import results as R
from turbospec.errors import UserError


def test_example_row_is_valid_and_has_every_column():
    row = R.example_row()
    assert R.validate_row(row) == []
    assert set(R.REQUIRED) <= set(row)
    assert row["schema"] == R.SCHEMA == "turbospec.results/1"


def test_llama_bench_names_present():
    for name in (
        "model_filename",
        "model_type",
        "model_size",
        "model_n_params",
        "n_threads",
        "type_k",
        "type_v",
        "n_prompt",
        "n_gen",
        "avg_ns",
        "stddev_ns",
        "avg_ts",
        "stddev_ts",
        "build_commit",
        "cpu_info",
        "gpu_info",
        "backends",
        "test_time",
    ):
        assert name in R.COLUMN_NAMES


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"schema": "turbospec.results/2"}, "another turbospec version"),
        ({"schema": None}, "not a turbospec results row"),
        ({"status": "done"}, "status 'done'"),
        ({"status": "failed"}, "needs its error"),
        ({"spec": "eagle"}, "spec 'eagle'"),
        ({"decode_tok_s": float("nan")}, "decode_tok_s must be a number"),
        ({"decode_tok_s": -1.0}, "negative"),
        ({"n_gen": True}, "n_gen must be an integer"),
        ({"n_gen": 1.5}, "n_gen must be an integer"),
        ({"draft_acceptance_rate": 1.2}, "[0, 1]"),
        ({"tau": 0.9}, "tau must be >= 1"),
        ({"per_position": [0.5, 2.0]}, "per_position"),
        ({"bogus": 1}, "unknown column(s): bogus"),
        ({"model_filename": None}, "model_filename is null"),
    ],
)
def test_validate_row_names_the_problem(change, needle):
    problems = R.validate_row(R.example_row(**change))
    assert any(needle in p for p in problems), problems


def test_validate_missing_columns_and_non_object():
    row = R.example_row()
    del row["type_k"], row["status"]
    assert any("missing column(s): type_k, status" in p for p in R.validate_row(row))
    assert R.validate_row([1, 2]) == ["row is list, not a JSON object"]


def test_append_and_read_roundtrip(tmp_path):
    path = tmp_path / "sub" / "results.jsonl"
    rows = [R.example_row(repetition=i, decode_tok_s=10.0 + i) for i in range(3)]
    for row in rows:
        R.append_row(path, row)
    got, problems = R.read_rows(path)
    assert problems == []
    assert got == rows
    text = path.read_text()
    assert text.count("\n") == 3 and text.endswith("\n")
    assert list(json.loads(text.splitlines()[0]))[:3] == ["schema", "run_id", "test_time"]


def test_append_stores_nan_as_null_and_rejects_invalid(tmp_path):
    path = tmp_path / "r.jsonl"
    R.append_row(path, R.example_row(tau=float("nan")))
    (row,), _ = R.read_rows(path)
    assert row["tau"] is None
    with pytest.raises(ValueError, match="status"):
        R.append_row(path, R.example_row(status="weird"))
    assert len(path.read_text().splitlines()) == 1


def test_append_is_one_write_with_o_append(tmp_path, monkeypatch):
    calls = []
    real_open, real_write = os.open, os.write
    monkeypatch.setattr(os, "open", lambda p, flags, *a: calls.append(("open", flags)) or real_open(p, flags, *a))
    monkeypatch.setattr(os, "write", lambda fd, b: calls.append(("write", bytes(b))) or real_write(fd, b))
    fsyncs = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: fsyncs.append(fd) or real_fsync(fd))
    R.append_row(tmp_path / "r.jsonl", R.example_row())
    opens = [c for c in calls if c[0] == "open"]
    writes = [c for c in calls if c[0] == "write"]
    assert opens and opens[0][1] & os.O_APPEND
    assert len(writes) == 1 and writes[0][1].endswith(b"\n") and writes[0][1].count(b"\n") == 1
    assert len(fsyncs) == 1


def test_half_written_line_is_reported_and_next_append_starts_fresh(tmp_path):
    path = tmp_path / "r.jsonl"
    R.append_row(path, R.example_row(repetition=0))
    full = R.encode_row(R.example_row(repetition=1))
    with open(path, "ab") as f:
        f.write(full[: len(full) // 2])  # killed mid-write
    rows, problems = R.read_rows(path)
    assert [r["repetition"] for r in rows] == [0]
    assert len(problems) == 1 and "r.jsonl:2: half-written last line" in problems[0]
    R.append_row(path, R.example_row(repetition=2))
    rows, problems = R.read_rows(path)
    assert [r["repetition"] for r in rows] == [0, 2]
    assert len(problems) == 1 and "r.jsonl:2: malformed JSON" in problems[0]


def test_read_rows_tolerates_garbage(tmp_path):
    path = tmp_path / "r.jsonl"
    good = R.encode_row(R.example_row()).decode()
    path.write_text(good + "\n[1,2]\n{not json\n" + json.dumps(R.example_row(schema="turbospec.results/9")) + "\n")
    rows, problems = R.read_rows(path)
    assert len(rows) == 2
    joined = "\n".join(problems)
    assert ":3: not a JSON object" in joined and ":4: malformed JSON" in joined
    assert ":5: schema 'turbospec.results/9'" in joined


def test_read_rows_missing_path_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        R.read_rows(tmp_path / "nope.jsonl")
    with pytest.raises(UserError, match="is a folder"):
        R.read_rows(tmp_path)


def test_cell_key_ignores_repetition_and_metrics():
    a = R.example_row(repetition=0, decode_tok_s=1.0, run_id="a")
    b = R.example_row(repetition=3, decode_tok_s=2.0, run_id="b")
    assert R.cell_key(a) == R.cell_key(b)
    assert R.cell_key(a) != R.cell_key(R.example_row(type_k="q8_0"))


def test_machine_info_shape():
    m = R.machine_info(n_threads=3, blas="openblas")
    assert set(m) == {"cpu_model", "n_cores", "n_threads", "blas"}
    assert m["n_threads"] == 3 and m["blas"] == "openblas" and isinstance(m["cpu_model"], str)
    assert R.validate_row(R.example_row(machine=m, run_id=R.new_run_id(), test_time=R.utc_now())) == []


def test_summarize_groups_repetitions_by_cell():
    rows = [
        R.example_row(repetition=0, avg_ts=10.0, decode_tok_s=10.0),
        R.example_row(repetition=1, avg_ts=14.0, decode_tok_s=14.0),
        R.example_row(repetition=2, status="failed", error="x", avg_ts=None, decode_tok_s=None),
        R.example_row(type_k="q8_0", spec="mtp", draft_block_size=3, draft_max=4, avg_ts=20.0, decode_tok_s=20.0,
                      draft_acceptance_rate=0.832, tau=2.4666),
    ]  # fmt: skip
    s = R.summarize(rows)
    assert len(s) == 2
    assert s[0]["n"] == 2 and s[0]["avg_ts"] == 12.0 and s[0]["stddev_ts"] == pytest.approx(2 * 2**0.5)
    assert s[0]["tau"] is None and s[1]["stddev_ts"] == 0.0
    md = R.format_summary(s, "md")
    head = md.splitlines()[0]
    assert head.startswith("| type_k | spec | draft_block_size | draft_max | n | t/s |")  # only varying settings
    assert "| 12.00 ± 2.83 |" in md and "83.2% ± 0.0" in md and "2.47 ± 0.00" in md
    assert json.loads(R.format_summary(s, "json"))[1]["tau"] == pytest.approx(2.4666)
    assert len(R.format_summary(s, "jsonl").splitlines()) == 2
    assert R.format_summary(s, "csv").splitlines()[0].startswith("model_filename,")
    with pytest.raises(UserError, match="unknown output format"):
        R.format_summary(s, "xml")


def test_done_repetitions_for_resume(tmp_path):
    path = tmp_path / "r.jsonl"
    for row in (
        R.example_row(repetition=0),
        R.example_row(repetition=1, status="failed", error="boom"),
        R.example_row(repetition=2, status="interrupted"),
        R.example_row(repetition=1),
        R.example_row(repetition=0, type_k="q8_0"),
    ):
        R.append_row(path, row)
    rows, _ = R.read_rows(path)
    done = R.done_repetitions(rows)
    assert done == {R.cell_key(R.example_row()): {0, 1}, R.cell_key(R.example_row(type_k="q8_0")): {0}}
