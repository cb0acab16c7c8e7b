"""turbospec report: figures equal hand computations on crafted rows and traces."""

from __future__ import annotations

import base64
import io
import math
from html.parser import HTMLParser

import pandas as pd
import pytest

from tests.analysis import crafted as C
from turbospec import results as R
from turbospec.analysis import doc as D
from turbospec.analysis import fmt, kvmodel, load, metrics, report, tracestats
from turbospec.cli import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _doc(tmp_path, *names):
    paths = []
    for n in names:
        if n == "rows":
            paths.append(C.write_rows(tmp_path / "results.jsonl", C.rows()))
        elif n == "ppl":
            paths.append(C.write_ppl(tmp_path / "ppl.jsonl"))
        elif n == "trace":
            paths.append(C.turbospec_trace(tmp_path / "run.ndjson"))
        elif n == "fork":
            paths.append(C.fork_trace(tmp_path / "fork.ndjson", half_line=True))
    return report.build(load.load(paths))


def _table(doc: D.Document, section: str, title: str = "") -> pd.DataFrame:
    for s, t in doc.tables():
        if s.title.startswith(section) and t.title.startswith(title):
            return t.shown
    raise KeyError((section, title))


def _raw(doc: D.Document, section: str, title: str = "") -> pd.DataFrame:
    for s, t in doc.tables():
        if s.title.startswith(section) and t.title.startswith(title):
            return t.raw
    raise KeyError((section, title))


def test_formatting_conventions():
    assert fmt.pct(0.8321) == "83.2%" and fmt.tau(2.4666) == "2.47" and fmt.pct(None) == "n/a"
    assert fmt.signed_pct(0.05) == "+5.0%" and fmt.mean_std(105, 5.7735) == "105.00 ± 5.77"
    assert fmt.nbytes(20447232) == "19.50 MiB"


def test_bits_and_kv_bytes_by_hand():
    assert [kvmodel.bits_per_value(t) for t in ("f16", "q8_0", "q4_0", "turbo4", "turbo4lm", "turbo3", "turbo2")] == [
        16, 8.5, 4.5, 4.25, 4.25, 3.125, 2.125
    ]  # fmt: skip
    # f16 at 4096: 3 global layers x 4096 cells + 15 sliding x 512 cells, 256 values K + 256 V, 2 B each
    assert kvmodel.kv_bytes("f16", "f16", 4096) == (3 * 4096 + 15 * 512) * 2 * 256 * 2
    # below the window every layer holds every token
    assert kvmodel.kv_bytes("f16", "f16", 100) == 18 * 100 * 1024
    # q8_0 K (8 blocks x 34 B) with turbo3 V (2 blocks x 50 B)
    assert kvmodel.kv_bytes("q8_0", "turbo3", 4096) == (3 * 4096 + 15 * 512) * (8 * 34 + 2 * 50)
    assert kvmodel.kv_bytes("x5", "f16", 10, bits_k=5.0) == 18 * 10 * (256 * 5 / 8 + 512)


def test_cache_section_by_hand(tmp_path):
    doc = _doc(tmp_path, "rows", "ppl")
    sizes = _raw(doc, "Cache types", "Bits per value")
    f16 = sizes[(sizes.type_k == "f16") & (sizes.type_v == "f16")].iloc[0]
    assert f16["kv_bytes_4096"] == (3 * 4096 + 15 * 512) * 1024
    assert f16["kv_bytes_131072"] == (3 * 131072 + 15 * 512) * 1024
    q8 = sizes[sizes.type_k == "q8_0"].iloc[0]
    assert q8["bits_k"] == 8.5 and q8["kv_bytes_512"] == 18 * 512 * 2 * 272
    speed = _table(doc, "Cache types", "Speed and quality")
    f = speed[speed.type_k == "f16"].iloc[0]
    q = speed[speed.type_k == "q8_0"].iloc[0]
    # f16 none: 100, 110, 100, 110 -> mean 105, sample std sqrt(100/3) = 5.77
    assert f["decode tok/s"] == "105.00 ± 5.77" and f["PPL"] == "10.000" and f["ΔPPL vs f16"] == "+0.0%"
    assert q["decode tok/s"] == "92.00 ± 2.31"  # 90, 94, 90, 94
    assert q["ΔPPL vs f16"] == "+5.0%" and q["KLD"] == "0.0020" and q["top-1 agreement"] == "98.5%"


def test_bits_taken_from_rows_when_present(tmp_path):
    rows = [R.example_row(type_k="turbo5x", type_v="f16", bits_k=5.0, bits_v=16.0)]
    doc = report.build(load.load([C.write_rows(tmp_path / "r.jsonl", rows)]))
    sizes = _raw(doc, "Cache types", "Bits per value")
    r = sizes.iloc[0]
    assert r["bits_k"] == 5.0 and r["kv_bytes_512"] == 18 * 512 * (256 * 5 / 8 + 512)


def test_draft_section_by_hand(tmp_path):
    doc = _doc(tmp_path, "rows")
    t = _table(doc, "Draft block sizes")
    raw = _raw(doc, "Draft block sizes")
    by_b = {int(b): (t.iloc[i], raw.iloc[i]) for i, b in enumerate(raw["draft_block_size"])}
    assert set(by_b) == {2, 3, 4}
    shown, r = by_b[3]
    # measured: mean(180, 190) / mean(100, 110) = 185 / 105
    assert r["speedup"] == pytest.approx(185 / 105) and shown["speedup"] == "1.76x"
    # predicted: (1 + 0.8 + 0.6) * 10000 / (12000 + 2000)
    assert r["speedup_pred"] == pytest.approx(2.4 * 10000 / 14000) and shown["predicted"] == "1.71x"
    assert shown["accept"] == "70.0% ± 0.0" and shown["τ"] == "2.40 ± 0.00"
    assert shown["p0"] == "80.0%" and shown["p1"] == "60.0%" and shown["p2"] == ""
    assert by_b[4][1]["speedup_pred"] == pytest.approx(2.7 * 10000 / 17000)
    assert by_b[2][1]["speedup_pred"] == pytest.approx(1.8 * 10000 / 12000)
    assert by_b[4][0]["accept"] == "56.7% ± 0.0"


def test_predicted_speedup_falls_back_to_baseline_rate():
    assert metrics.predicted_speedup([0.5, 0.25], 10.0, 15.0, 5.0) == pytest.approx(1.75 * 10 / 20)
    assert math.isnan(metrics.predicted_speedup([0.5], 10.0, math.nan, 5.0))
    df = metrics.rows_frame(
        [R.example_row(decode_tok_s=50.0), R.example_row(spec="mtp", draft_block_size=2, draft_max=4,
                                                          decode_tok_s=75.0, per_position=[0.5], draft_us=5000.0,
                                                          verify_us=25000.0)]
    )  # fmt: skip
    keys = list(metrics.CONFIG)
    agg = metrics.with_speedups(metrics.aggregate(df, keys), keys)
    r = agg[agg.spec == "mtp"].iloc[0]
    # no plain_step_us: t_plain = 1e6 / 50 tok/s = 20000 us
    assert r["t_plain_us"] == pytest.approx(20000) and r["speedup_pred"] == pytest.approx(1.5 * 20000 / 30000)
    assert r["speedup"] == pytest.approx(1.5)


def test_per_prompt_and_best(tmp_path):
    doc = _doc(tmp_path, "rows", "ppl")
    pp = _table(doc, "Per-prompt breakdown")
    assert set(pp["prompt"]) == {"chat", "code"}
    row = pp[(pp["prompt"] == "chat") & (pp["B"] == "3")].iloc[0]
    assert row["τ"] == "2.40" and row["decode tok/s"] == "185.00 ± 7.07" and row["runs"] == 2
    best = _table(doc, "Best configuration").set_index("objective")
    assert best.loc["speed", "configuration"].startswith("f16/f16 mtp B=3")
    assert best.loc["memory", "configuration"].startswith("q8_0/q8_0 none")
    assert best.loc["quality", "configuration"] == "q8_0/q8_0"


def test_turbospec_trace_by_hand(tmp_path):
    st = tracestats.read(C.turbospec_trace(tmp_path / "t.ndjson"))
    assert st.has_clock and st.rounds == 4 and st.drafted == 8 and st.accepted == 5
    assert st.acceptance_rate == pytest.approx(5 / 8) and st.tau == pytest.approx(1 + 5 / 4)
    assert st.per_position == pytest.approx([3 / 4, 2 / 4]) and st.alpha == pytest.approx([3 / 4, 2 / 3])
    # 9 tokens emitted (3 + 1 + 2 + 3) in 4 rounds x 50 ms after the prefill line
    assert st.decode_tok_s == pytest.approx(9 / 0.2) and st.prefill_tok_s == pytest.approx(100.0)
    assert st.draft_us == 2000 and st.verify_us == 38000 and st.h_l2_mean == pytest.approx(115.0)
    assert st.round_x == pytest.approx([0.15, 0.2, 0.25, 0.3])  # seconds since run_start
    doc = _doc(tmp_path, "trace")
    t = _table(doc, "Trace run.ndjson", "Acceptance").iloc[0]
    assert t["draft acceptance rate"] == "62.5%" and t["τ"] == "2.25" and t["decode tok/s"] == "45.00"
    pos = _table(doc, "Trace run.ndjson", "Per-position")
    assert list(pos["p_i"]) == ["75.0%", "50.0%"] and list(pos["α_i = p_i / p_(i-1)"]) == ["75.0%", "66.7%"]


def test_rolling_acceptance():
    assert tracestats.rolling_rate([2, 0, 1, 2], [2, 2, 2, 2], 2) == [1.0, 0.5, 0.25, 0.75]
    assert math.isnan(tracestats.rolling_rate([0], [0], 1)[0])


def test_fork_trace_report(tmp_path):
    doc = _doc(tmp_path, "fork")
    sec = next(s for s in doc.sections if s.title == "Trace fork.ndjson")
    assert any(isinstance(b, str) and "no clock" in b for b in sec.blocks)
    t = _table(doc, "Trace fork.ndjson", "Acceptance").iloc[0]
    assert t["rounds"] == 3 and t["skipped rounds"] == 1 and t["drafted"] == 6 and t["accepted"] == 3
    assert t["draft acceptance rate"] == "50.0%" and t["τ"] == "2.00" and t["decode tok/s"] == "n/a"
    assert t["malformed lines"] == 1 and t["h_l2 mean"] == "150.00"
    assert list(_table(doc, "Trace fork.ndjson", "Per-position")["p_i"]) == ["66.7%", "33.3%"]
    paths = _table(doc, "Trace fork.ndjson", "Draft paths").set_index("path")
    assert paths.loc["lazy", "rounds"] == 2 and paths.loc["skip-nsteps", "share"] == "25.0%"
    # lazy rounds accepted 0 of 2 and 1 of 2; the sync round 2 of 2
    assert paths.loc["lazy", "accept"] == "25.0%" and paths.loc["sync", "accept"] == "100.0%"
    assert paths.loc["skip-nsteps", "accept"] == "n/a"
    assert any("1 malformed" in m for m in doc.messages)
    assert any(isinstance(b, D.Figure) for b in sec.blocks)  # acceptance over rounds, h_l2


def test_costs_come_from_a_rows_trace(tmp_path):
    (tmp_path / "traces").mkdir()
    trace = C.turbospec_trace(tmp_path / "traces" / "t.ndjson")
    rows = [
        R.example_row(decode_tok_s=20.0, plain_step_us=50_000.0),
        R.example_row(spec="mtp", draft_block_size=3, draft_max=16, decode_tok_s=45.0, per_position=None,
                      trace_path="traces/t.ndjson"),
    ]  # fmt: skip
    res = C.write_rows(tmp_path / "results.jsonl", rows)
    inputs = load.load([res, trace])  # the row's own trace is not a standalone section
    assert inputs.traces == []
    doc = report.build(inputs)
    r = _raw(doc, "Draft block sizes").iloc[0]
    assert r["draft_us"] == 2000 and r["verify_us"] == 38000 and r["p0"] == pytest.approx(0.75)
    # (1 + 0.75 + 0.5) * 50000 / (38000 + 2000)
    assert r["speedup_pred"] == pytest.approx(2.25 * 50000 / 40000)


class _Imgs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs, self.tables = [], 0

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])
        self.tables += tag == "table"


def test_html_is_self_contained_with_pngs(tmp_path):
    out = tmp_path / "report.html"
    paths = [
        C.write_rows(tmp_path / "results.jsonl", C.rows()),
        C.write_ppl(tmp_path / "ppl.jsonl"),
        C.fork_trace(tmp_path / "fork.ndjson"),
    ]
    assert main(["report", *map(str, paths), "-o", str(out)]) == 0
    p = _Imgs()
    p.feed(out.read_text(encoding="utf-8"))
    assert p.tables >= 5 and len(p.srcs) >= 6
    for src in p.srcs:
        head, _, data = src.partition(",")
        assert head == "data:image/png;base64"
        png = base64.b64decode(data, validate=True)
        assert png[:8] == PNG_SIGNATURE
    assert "http://" not in out.read_text() and "https://" not in out.read_text()


def test_markdown_writes_figures_beside_and_csv_has_numbers(tmp_path, capsys):
    rows = C.write_rows(tmp_path / "results.jsonl", C.rows())
    md = tmp_path / "out" / "report.md"
    assert main(["report", str(rows), "-o", str(md)]) == 0
    text = md.read_text()
    assert "](report_files/per_position.png)" in text
    assert (md.parent / "report_files" / "per_position.png").read_bytes()[:8] == PNG_SIGNATURE
    csv = tmp_path / "report.csv"
    assert main(["report", str(rows), "-o", str(csv)]) == 0
    df = pd.read_csv(io.StringIO(csv.read_text()))
    sp = df[(df.section == "Draft block sizes") & (df.draft_block_size == 3)]
    assert sp["speedup"].iloc[0] == pytest.approx(185 / 105)
    assert main(["report", str(rows)]) == 0  # stdout markdown, no figures
    assert "## Draft block sizes" in capsys.readouterr().out


def test_analysis_never_imports_the_engine(tmp_path):
    import subprocess
    import sys

    rows = C.write_rows(tmp_path / "results.jsonl", C.rows())
    trace = C.fork_trace(tmp_path / "fork.ndjson")
    code = (
        "import argparse, sys\n"
        "from turbospec.analysis import commands\n"
        "ap = argparse.ArgumentParser(); commands.register(ap.add_subparsers())\n"
        "def run(argv):\n"
        "    a = ap.parse_args(argv); return a.func(a)\n"
        f"assert run(['report', {str(rows)!r}, {str(trace)!r}, '-o', {str(tmp_path / 'r.html')!r}]) == 0\n"
        f"assert run(['compare', {str(rows)!r}, {str(rows)!r}]) == 0\n"
        "bad = sorted(m for m in sys.modules if m.startswith('turbospec.engine'))\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_long_trace_series_are_thinned(tmp_path):
    lines = []
    for it in range(9000):
        na = it % 3
        lines.append(
            f'{{"evt":"mtp_draft","iter":{it},"path":"lazy","seq_id":0,"id_last":1,"h_idx":-1,"attn_pos":{it},'
            f'"n_steps":2,"h_l2":{100 + it % 7}.0000,"drafts":[1,2]}}'
        )
        lines.append(f'{{"evt":"mtp_accept","iter":{it},"n_accepted":{na},"n_drafted_prev":2}}')
    path = tmp_path / "long.ndjson"
    path.write_text("\n".join(lines) + "\n")
    st = tracestats.read(path)
    assert st.rounds == 9000 and st.accepted == 9000 and st.acceptance_rate == pytest.approx(0.5)
    assert st.window == 180  # 9000 rounds / 50
    assert len(st.round_x) <= tracestats.MAX_POINTS and st.round_x[-1] == 8999.0
    assert len(st.h_l2) <= tracestats.MAX_POINTS
    # every full window of the repeating 0, 1, 2 pattern accepts 1 of 2 drafts on average
    assert st.rolling_acceptance[-1] == pytest.approx(0.5)


def test_thin_keeps_ends():
    xs = [float(i) for i in range(10)]
    tx, ty = tracestats.thin(xs, xs, 4)
    assert tx[0] == 0.0 and tx[-1] == 9.0 and len(tx) <= 5 and tx == ty


def test_fork_trace_inside_stderr_noise(tmp_path):
    path = tmp_path / "stderr.log"
    noise = "llama_model_loader: loaded meta data\nmain: n_ctx = 4096\n"
    path.write_text(noise + C.FORK_LINES + "llama_perf_context_print: total time = 1.0 ms\n")
    inputs = load.load([path])
    (t,) = inputs.traces
    assert t.summary.rounds == 3 and t.summary.malformed == 0
    assert any("3 non-JSON line(s) ignored" in m for m in inputs.messages)
