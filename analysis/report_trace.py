"""Report section: one standalone trace (acceptance, per-position, paths, acceptance and h_l2 over time)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from turbospec.analysis import doc as D
from turbospec.analysis import fmt, plots, tracestats


def trace_section(path: Path, st: tracestats.TraceStats) -> D.Section:
    s = D.Section(f"Trace {path.name}")
    if st.run_start:
        rs = st.run_start
        s.text(
            "Run: "
            + ", ".join(
                f"{k}={rs[k]}"
                for k in ("model", "backend", "device", "type_k", "type_v", "spec", "draft_block_size", "draft_max")
                if k in rs
            )
        )
    if not st.has_clock:
        s.text("This trace has no clock (the fork's bare lines): throughput and timings are n/a; time axes use rounds.")
    rec = {
        "rounds": st.rounds,
        "skipped rounds": st.skipped,
        "drafted": st.drafted,
        "accepted": st.accepted,
        "draft acceptance rate": fmt.pct(st.acceptance_rate),
        "τ": fmt.tau(st.tau),
        "decode tok/s": fmt.num(st.decode_tok_s, 2),
        "prefill tok/s": fmt.num(st.prefill_tok_s, 2),
        "h_l2 mean": fmt.num(st.h_l2_mean, 2),
        "malformed lines": st.malformed,
    }
    raw = dict(rec)
    raw.update(
        draft_acceptance_rate=st.acceptance_rate, tau=st.tau, decode_tok_s=st.decode_tok_s,
        prefill_tok_s=st.prefill_tok_s, h_l2_mean=st.h_l2_mean,
    )  # fmt: skip
    for k in ("draft acceptance rate", "τ", "decode tok/s", "prefill tok/s", "h_l2 mean"):
        raw.pop(k)
    s.table(D.Table("Acceptance", pd.DataFrame([rec]), pd.DataFrame([raw])))
    if st.per_position:
        s.table(
            D.Table(
                "Per-position acceptance",
                pd.DataFrame(
                    {
                        "position i": list(range(len(st.per_position))),
                        "p_i": [fmt.pct(p) for p in st.per_position],
                        "α_i = p_i / p_(i-1)": [fmt.pct(a) for a in st.alpha],
                        "drafted at i": st.drafted_at,
                    }
                ),
                pd.DataFrame({"position": range(len(st.per_position)), "p": st.per_position, "alpha": st.alpha,
                              "drafted": st.drafted_at}),
            )
        )  # fmt: skip
    if st.paths:
        total = sum(st.paths.values())
        s.table(
            D.Table(
                "Draft paths",
                pd.DataFrame(
                    {"path": list(st.paths), "rounds": list(st.paths.values()),
                     "share": [fmt.pct(v / total) for v in st.paths.values()],
                     "accept": [fmt.pct(st.path_acceptance.get(k)) for k in st.paths]}
                ),
                pd.DataFrame({"path": list(st.paths), "rounds": list(st.paths.values()),
                              "draft_acceptance_rate": [st.path_acceptance.get(k) for k in st.paths]}),
            )
        )  # fmt: skip
    stem = "trace_" + "".join(ch if ch.isalnum() else "_" for ch in path.stem)
    if st.per_position:
        s.figure(
            D.Figure(
                "Per-position acceptance",
                plots.bars([str(i) for i in range(len(st.per_position))], st.per_position,
                           "Per-position acceptance p_i", "p_i", percent=True),
                f"{stem}_per_position",
            )
        )  # fmt: skip
    if st.round_x:
        xlabel = "seconds since start" if st.has_clock else "round"
        series = {f"rolling ({st.window} rounds)": (st.round_x, st.rolling_acceptance)}
        s.figure(
            D.Figure(
                "Draft acceptance rate over time",
                plots.lines(series, "Draft acceptance rate over time (dashed: whole trace)", xlabel, "acceptance",
                            percent=True, markers=False,
                            hline=None if math.isnan(st.acceptance_rate) else 100.0 * st.acceptance_rate),
                f"{stem}_acceptance_over_time",
            )
        )  # fmt: skip
    if st.h_l2_x:
        xlabel = "seconds since start" if st.has_clock else "draft round"
        s.figure(
            D.Figure(
                "h_l2 over time",
                plots.lines({"h_l2": (st.h_l2_x, st.h_l2)}, "h_prev L2 norm (h_l2) per draft", xlabel, "h_l2",
                            markers=False),
                f"{stem}_h_l2",
            )
        )  # fmt: skip
    if st.rounds == 0 and st.skipped == 0:
        s.text("No draft rounds in this trace (plain decoding or an empty trace).")
    return s
