"""turbospec compare: relative changes, matching on settings, noise marking."""

from __future__ import annotations

import json
import math

import pytest

from tests.analysis import crafted as C
from turbospec.analysis import compare
from turbospec.cli import main


@pytest.mark.parametrize(
    ("a", "sa", "b", "sb", "noise"),
    [
        (10.0, 1.0, 11.5, 1.0, True),  # [9, 11] and [10.5, 12.5] overlap
        (10.0, 1.0, 12.0, 1.0, True),  # touching ends count as overlap
        (10.0, 1.0, 13.0, 1.0, False),
        (13.0, 0.5, 10.0, 2.0, False),
        (10.0, math.nan, 10.0, math.nan, True),  # single repetitions: std 0
        (10.0, math.nan, 10.1, math.nan, False),
        (10.0, 0.2, 10.1, math.nan, True),
    ],
)
def test_within_noise(a, sa, b, sb, noise):
    assert compare.within_noise(a, sa, b, sb) is noise


def test_change_direction():
    assert compare.change_of("decode_tok_s", 100, 1, 120, 1).verdict == "better"
    assert compare.change_of("decode_tok_s", 100, 1, 80, 1).verdict == "worse"
    assert compare.change_of("kv_bytes", 100, 0, 120, 0).verdict == "worse"
    assert compare.change_of("ppl", 10, math.nan, 9, math.nan).verdict == "better"
    assert compare.change_of("tau", 2.0, 0.3, 2.2, 0.3).verdict == "noise"
    c = compare.change_of("decode_tok_s", 100, 1, 120, 1)
    assert c.change == pytest.approx(0.2)


def _sets(tmp_path):
    a_rows = C.rows()
    b_rows = []
    for r in C.rows():
        if r["spec"] == "mtp" and r["draft_block_size"] == 4:
            continue  # a cell only in A
        if r["spec"] == "mtp" and r["draft_block_size"] == 3:
            r["decode_tok_s"] *= 1.5  # 185 ± 7.07 -> 277.5 ± 10.61: better
        if r["type_k"] == "q8_0":
            r["decode_tok_s"] += 1.0  # 92 ± 2.83 -> 93 ± 2.83: within noise
        if r["type_k"] == "f16" and r["spec"] == "none":
            r["kv_bytes_per_token"] = 20000.0  # 18432 -> 20000, std 0: worse
        r["device"] = "gpu"
        b_rows.append(r)
    return C.write_rows(tmp_path / "a.jsonl", a_rows), C.write_rows(tmp_path / "b.jsonl", b_rows)


def test_compare_marks_noise_and_direction(tmp_path):
    a, b = _sets(tmp_path)
    doc = compare.build([a], [b])
    (sec,) = doc.sections
    texts = [x for x in sec.blocks if isinstance(x, str)]
    assert "device: A = cpu, B = gpu" in texts  # the compared setting is not a matching key
    assert any("2 cell(s) only in A" in t for t in texts)  # B=4 for the chat and the code prompt
    t = next(x for x in sec.blocks if not isinstance(x, str)).raw
    b3 = t[(t.metric == "decode_tok_s") & (t.draft_block_size == 3)]
    assert len(b3) == 2 and set(b3.verdict) == {"better"} and b3.change.iloc[0] == pytest.approx(0.5)
    q8 = t[(t.metric == "decode_tok_s") & (t.type_k == "q8_0")]
    assert set(q8.verdict) == {"noise"} and q8.change.iloc[0] == pytest.approx(1 / 92)
    kv = t[(t.metric == "kv_bytes_per_token") & (t.spec == "none") & (t.type_k == "f16")]
    assert set(kv.verdict) == {"worse"}
    assert "same" not in set(t.verdict)  # identical rows hidden by default
    full = compare.build([a], [b], show_all=True)
    assert "same" in set(full.tables()[0][1].raw.verdict)


def test_compare_cli_markdown_and_ppl(tmp_path, capsys):
    a, b = _sets(tmp_path)
    pa = C.write_ppl(tmp_path / "pa.jsonl")
    pb = tmp_path / "pb.jsonl"
    pb.write_text("\n".join(json.dumps({**p, "ppl": p["ppl"] * 1.1}) for p in C.PPL) + "\n")
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "| decode_tok_s | 92.00 ± 2.83 | 93.00 ± 2.83 | +1.1% | ≈ within noise |" in out
    assert "+50.0% | better |" in out
    doc = compare.build([pa], [pb])
    q = next(s for s in doc.sections if s.title.startswith("Quality"))
    raw = q.blocks[0].raw
    assert set(raw[raw.metric == "ppl"].verdict) == {"worse"}
    assert raw[raw.metric == "ppl"].change.iloc[0] == pytest.approx(0.1)


def test_compare_with_nothing_usable(tmp_path, capsys):
    a, _ = _sets(tmp_path)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["compare", str(a), str(empty)]) == 0
    out, err = capsys.readouterr()
    assert "Both A and B need ok result rows" in out
    assert "B: " in err and "empty file" in err
