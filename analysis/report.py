"""``turbospec report``: build the document from loaded inputs (see load.py) and write it.

Sections: overview, cache types, draft block sizes, per-prompt breakdown, best configuration
per objective, failed cells, and one section per standalone trace. Each section says what it
needs when its inputs are missing, so any subset of inputs gives a (partial) report.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from turbospec import results as R
from turbospec.analysis import doc as D
from turbospec.analysis import fmt, kvmodel, metrics, plots, tracestats
from turbospec.analysis.load import Inputs, trace_of_row
from turbospec.errors import UserError

CTX_LENGTHS = (512, 4096, 32768, 131072)
PRETTY = {
    "model_filename": "model", "backend": "backend", "device": "device", "n_threads": "threads",
    "type_k": "type_k", "type_v": "type_v", "spec": "spec", "draft_block_size": "B", "draft_max": "draft_max",
    "pipeline_depth": "depth", "n_prompt": "n_prompt", "n_gen": "n_gen", "prompt_kind": "prompt",
    "prompt_index": "#",
}  # fmt: skip
FORMATS = {".md": "md", ".markdown": "md", ".html": "html", ".htm": "html", ".csv": "csv"}


def _key_str(col: str, v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if col == "model_filename":
        return Path(str(v)).name
    return str(v)


def config_label(rec: pd.Series | dict[str, Any], keys: list[str]) -> str:
    """Short name of a configuration from its ``keys``: "q8_0/turbo3 mtp B=4 depth=2"."""
    parts: list[str] = []
    for k in keys:
        v = rec.get(k)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        s = _key_str(k, v)
        if k == "type_v" and parts and "type_k" in keys:
            parts[-1] += "/" + s
        elif k in ("type_k", "type_v", "spec", "model_filename", "backend", "device", "prompt_kind"):
            parts.append(s)
        else:
            parts.append(f"{PRETTY.get(k, k)}={s}")
    return " ".join(parts) or "all"


def _fill_costs_from_traces(df: pd.DataFrame, messages: list[str]) -> pd.DataFrame:
    """Rows without draft_us/verify_us/plain_step_us get them from their trace file, if it exists."""
    if df.empty:
        return df
    need = df[[c for c in metrics.COSTS]].isna().all(axis=1) & df["trace_path"].notna()
    missing_traces = 0
    for i in df.index[need]:
        path = trace_of_row(df.loc[i].to_dict())
        if path is None:
            missing_traces += 1
            continue
        st = tracestats.read(path)
        for c in metrics.COSTS:
            df.at[i, c] = getattr(st, c)
        if df.at[i, "per_position"] is None and st.per_position:
            df.at[i, "per_position"] = list(st.per_position)
    if missing_traces:
        messages.append(f"{missing_traces} row(s) name a trace_path that does not exist; their costs are n/a")
    return df


def build(inputs: Inputs, title: str = "turbospec report") -> D.Document:
    doc = D.Document(title=title, messages=list(inputs.messages))
    df = metrics.rows_frame(inputs.rows)
    df = _fill_costs_from_traces(df, doc.messages)
    ppl = metrics.ppl_frame(inputs.ppl)
    ok = metrics.ok_rows(df)
    keys = [k for k in metrics.CONFIG if k in df]
    shown_keys = metrics.varying(ok, keys) or [k for k in ("type_k", "type_v", "spec") if k in keys]
    agg = metrics.with_speedups(metrics.aggregate(ok, keys), keys)
    doc.sections.append(_overview(inputs, df, ok, keys, shown_keys))
    doc.sections.append(_cache_section(ok, ppl, shown_keys))
    if not agg.empty:
        doc.sections.append(_config_section(agg, shown_keys))
    if (ok["spec"] != "none").any():
        doc.sections.append(_draft_section(agg, shown_keys))
    prompt_sec = _prompt_section(ok, keys)
    if prompt_sec is not None:
        doc.sections.append(prompt_sec)
    if not df.empty or not ppl.empty:
        doc.sections.append(_best_section(agg, metrics.ppl_by_pair(ppl), shown_keys))
    bad = df[df["status"] != "ok"]
    if not bad.empty:
        doc.sections.append(_failed_section(bad, shown_keys))
    for t in inputs.traces:
        doc.sections.append(_trace_section(t.path, t.summary))
    return doc


def _overview(inputs: Inputs, df: pd.DataFrame, ok: pd.DataFrame, keys: list[str], shown: list[str]) -> D.Section:
    s = D.Section("Overview")
    n_files = len({r["_source"] for r in inputs.rows})
    s.text(
        f"{len(inputs.rows)} result row(s) from {n_files} file(s) ({len(ok)} ok, {len(df) - len(ok)} failed or "
        f"interrupted), {len(inputs.ppl)} ppl result(s), {len(inputs.traces)} standalone trace(s)."
    )
    if not ok.empty:
        common = [k for k in keys if k not in shown and k in ok]
        if common:
            first = ok.iloc[0]
            s.text("Common settings: " + ", ".join(f"{PRETTY.get(k, k)}={_key_str(k, first[k])}" for k in common))
        schemas = sorted({str(v) for v in df["schema"].dropna()})
        if len(schemas) > 1:
            s.text("Schema versions mixed in the inputs: " + ", ".join(schemas) + " (read as " + R.SCHEMA + ").")
    if not inputs.rows and not inputs.ppl and not inputs.traces:
        s.text("Nothing readable in the inputs; see the input problems above.")
    return s


def _cache_section(ok: pd.DataFrame, ppl: pd.DataFrame, shown: list[str]) -> D.Section:
    s = D.Section("Cache types")
    pairs = metrics.cache_pairs(ok, ppl)
    explicit = bool(pairs)
    if not pairs:
        pairs = [(t, t) for t in kvmodel.CACHE_TYPES]
        s.text("No result rows or ppl results: sizes of every known cache type (K = V).")
    shape = kvmodel.DEFAULT_SHAPE
    recs, raws, series = [], [], {}
    for tk, tv in pairs:
        bk, bv = metrics.row_bits(ok, tk, tv)
        sizes = []
        for n in CTX_LENGTHS:
            try:
                sizes.append(kvmodel.kv_bytes(tk, tv, n, shape, bk, bv))
            except KeyError:
                sizes.append(math.nan)
        f16 = [kvmodel.kv_bytes("f16", "f16", n, shape) for n in CTX_LENGTHS]
        rec = {"type_k": tk, "type_v": tv, "bits K": fmt.num(bk, 3), "bits V": fmt.num(bv, 3)}
        rec.update({f"KV @ {n}": fmt.nbytes(b) for n, b in zip(CTX_LENGTHS, sizes, strict=True)})
        rec["vs f16"] = fmt.pct(sizes[-1] / f16[-1]) if not math.isnan(sizes[-1]) else "n/a"
        recs.append(rec)
        raw = {"type_k": tk, "type_v": tv, "bits_k": bk, "bits_v": bv}
        raw.update({f"kv_bytes_{n}": b for n, b in zip(CTX_LENGTHS, sizes, strict=True)})
        raws.append(raw)
        series[f"{tk}/{tv}"] = (list(CTX_LENGTHS), [b / 2**20 for b in sizes])
    s.table(
        D.Table(
            f"Bits per value and KV cache size ({shape.name}: {shape.n_layer} layers, {shape.n_head_kv} KV head, "
            f"head_dim {shape.head_dim}, layers {', '.join(map(str, shape.global_layers))} global, the others "
            f"sliding with window {shape.sliding_window})",
            pd.DataFrame(recs),
            pd.DataFrame(raws),
        )
    )
    if explicit or len(pairs) > 1:
        s.figure(
            D.Figure(
                "KV cache size vs context length",
                plots.lines(series, "KV cache size", "context length (tokens)", "MiB", logx=True),
                "kv_bytes_vs_ctx",
            )
        )
    # measured speed, memory and quality per pair
    base = ok[ok["spec"] == "none"] if (ok["spec"] == "none").any() else ok
    per_pair = metrics.aggregate(base, ["type_k", "type_v"])
    pp = metrics.ppl_by_pair(ppl)
    if per_pair.empty and pp.empty:
        s.text("Decode speed needs sweep results; PPL/KLD need `turbospec ppl --json` results.")
        return s
    recs, raws = [], []
    for tk, tv in pairs:
        r = per_pair[(per_pair["type_k"] == tk) & (per_pair["type_v"] == tv)] if not per_pair.empty else per_pair
        q = pp[(pp["type_k"] == tk) & (pp["type_v"] == tv)] if not pp.empty else pp
        r0 = r.iloc[0] if len(r) else None
        q0 = q.iloc[0] if len(q) else None
        g = lambda rec, c: rec[c] if rec is not None and c in rec else math.nan
        recs.append(
            {
                "type_k": tk,
                "type_v": tv,
                "runs": int(g(r0, "n")) if r0 is not None else 0,
                "decode tok/s": fmt.mean_std(g(r0, "decode_tok_s_mean"), g(r0, "decode_tok_s_std")),
                "prefill tok/s": fmt.mean_std(g(r0, "prefill_tok_s_mean"), g(r0, "prefill_tok_s_std")),
                "KV bytes/token": fmt.num(g(r0, "kv_bytes_per_token_mean"), 0),
                "PPL": fmt.num(g(q0, "ppl"), 3),
                "ΔPPL vs f16": fmt.signed_pct(g(q0, "dppl")),
                "KLD": fmt.num(g(q0, "kld_mean"), 4),
                "top-1 agreement": fmt.pct(g(q0, "top1_agreement")),
            }
        )
        raws.append(
            {
                "type_k": tk, "type_v": tv, "decode_tok_s_mean": g(r0, "decode_tok_s_mean"),
                "decode_tok_s_std": g(r0, "decode_tok_s_std"), "prefill_tok_s_mean": g(r0, "prefill_tok_s_mean"),
                "kv_bytes_per_token": g(r0, "kv_bytes_per_token_mean"), "ppl": g(q0, "ppl"),
                "dppl": g(q0, "dppl"), "kld_mean": g(q0, "kld_mean"), "top1_agreement": g(q0, "top1_agreement"),
            }
        )  # fmt: skip
    note = (
        "decode tok/s: mean ± std over the spec=none rows"
        if (ok["spec"] == "none").any()
        else ("decode tok/s: mean ± std over all rows (no spec=none rows)")
    )
    s.table(D.Table("Speed and quality per cache type", pd.DataFrame(recs), pd.DataFrame(raws), note))
    if not per_pair.empty and per_pair["decode_tok_s_mean"].notna().any():
        s.figure(
            D.Figure(
                "Decode throughput per cache type",
                plots.bars(
                    [f"{a}/{b}" for a, b in zip(per_pair["type_k"], per_pair["type_v"], strict=True)],
                    list(per_pair["decode_tok_s_mean"]),
                    "Decode throughput (mean ± std)",
                    "tok/s",
                    errors=list(per_pair["decode_tok_s_std"]),
                ),
                "decode_tok_s_per_cache_type",
            )
        )
    if not pp.empty and pp["kld_mean"].notna().any():
        s.figure(
            D.Figure(
                "KLD vs f16 per cache type",
                plots.bars([f"{a}/{b}" for a, b in zip(pp["type_k"], pp["type_v"], strict=True)],
                           list(pp["kld_mean"]), "Mean KLD vs f16", "KLD"),
                "kld_per_cache_type",
            )
        )  # fmt: skip
    return s


def _config_section(agg: pd.DataFrame, shown: list[str]) -> D.Section:
    s = D.Section("Configurations")
    recs, raws = [], []
    for _, r in agg.iterrows():
        rec = {PRETTY.get(k, k): _key_str(k, r[k]) for k in shown}
        rec.update(
            {
                "runs": int(r["n"]),
                "decode tok/s": fmt.mean_std(r["decode_tok_s_mean"], r["decode_tok_s_std"]),
                "prefill tok/s": fmt.mean_std(r["prefill_tok_s_mean"], r["prefill_tok_s_std"]),
                "accept": fmt.pct_std(r["draft_acceptance_rate_mean"], r["draft_acceptance_rate_std"]),
                "τ": fmt.tau(r["tau_mean"]),
                "speedup": fmt.ratio(r["speedup"]),
                "KV bytes/token": fmt.num(r["kv_bytes_per_token_mean"], 0),
                "peak mem": fmt.nbytes(r["peak_mem_bytes_mean"]),
            }
        )
        recs.append(rec)
        raw = {k: r[k] for k in shown}
        raw.update({c: r[c] for c in agg.columns if c.endswith(("_mean", "_std")) or c in ("n", "speedup")})
        raws.append(raw)
    s.table(D.Table("", pd.DataFrame(recs), pd.DataFrame(raws), "mean ± std over prompts and repetitions"))
    return s


def _draft_section(agg: pd.DataFrame, shown: list[str]) -> D.Section:
    s = D.Section("Draft block sizes")
    spec = agg[agg["spec"] != "none"].sort_values(["spec", "draft_block_size"], na_position="first")
    group_keys = [k for k in shown if k not in ("draft_block_size",)]
    recs, raws = [], []
    max_pos = max((len(p) for p in spec["per_position"]), default=0)
    for _, r in spec.iterrows():
        rec = {PRETTY.get(k, k): _key_str(k, r[k]) for k in shown}
        rec.update(
            {
                "accept": fmt.pct_std(r["draft_acceptance_rate_mean"], r["draft_acceptance_rate_std"]),
                "τ": fmt.tau(r["tau_mean"]) + ("" if math.isnan(r["tau_std"]) else f" ± {r['tau_std']:.2f}"),
                "decode tok/s": fmt.mean_std(r["decode_tok_s_mean"], r["decode_tok_s_std"]),
                "speedup": fmt.ratio(r["speedup"]),
                "predicted": fmt.ratio(r["speedup_pred"]),
                "draft µs": fmt.num(r["draft_us_mean"], 0),
                "verify µs": fmt.num(r["verify_us_mean"], 0),
                "plain step µs": fmt.num(r["t_plain_us"], 0),
            }
        )
        pp = r["per_position"]
        for i in range(max_pos):
            rec[f"p{i}"] = fmt.pct(pp[i]) if i < len(pp) else ""
        recs.append(rec)
        raw = {k: r[k] for k in shown}
        raw.update(
            {
                "draft_acceptance_rate": r["draft_acceptance_rate_mean"], "tau": r["tau_mean"],
                "decode_tok_s": r["decode_tok_s_mean"], "speedup": r["speedup"], "speedup_pred": r["speedup_pred"],
                "draft_us": r["draft_us_mean"], "verify_us": r["verify_us_mean"], "t_plain_us": r["t_plain_us"],
            }
        )  # fmt: skip
        raw.update({f"p{i}": (pp[i] if i < len(pp) else math.nan) for i in range(max_pos)})
        raws.append(raw)
    s.table(
        D.Table(
            "Acceptance and speed per draft block size B",
            pd.DataFrame(recs),
            pd.DataFrame(raws),
            "accept = Σ n_accepted / Σ n_drafted; τ = 1 + Σ n_accepted / rounds; p_i = P(n_accepted > i | "
            "n_drafted > i); speedup = decode tok/s over the spec=none configuration with the same other "
            "settings; predicted = (1 + Σ p_i) · t_plain_step / (t_verify(B) + t_draft(B)).",
        )
    )
    curves: dict[str, tuple[list[float], list[float]]] = {}
    speed: dict[str, tuple[list[float], list[float]]] = {}
    rate: dict[str, tuple[list[float], list[float]]] = {}
    pred: dict[str, tuple[list[float], list[float]]] = {}
    for _, r in spec.iterrows():
        if r["per_position"]:
            curves[config_label(r, shown)] = (list(range(len(r["per_position"]))), r["per_position"])
        g = config_label(r, group_keys)
        b = float(r["draft_block_size"]) if not metrics._isnan(r["draft_block_size"]) else math.nan
        for target, col in ((speed, "speedup"), (pred, "speedup_pred"), (rate, "decode_tok_s_mean")):
            xs, ys = target.setdefault(g, ([], []))
            xs.append(b)
            ys.append(r[col])
    if curves:
        s.figure(
            D.Figure(
                "Per-position acceptance p_i",
                plots.lines(curves, "Per-position acceptance", "draft position i", "p_i", percent=True),
                "per_position",
            )
        )
    if any(not all(map(metrics._isnan, ys)) for _, ys in rate.values()):
        s.figure(
            D.Figure(
                "Decode throughput vs draft block size",
                plots.lines(rate, "Decode throughput (mean over prompts and repetitions)", "draft block size B",
                            "tok/s"),
                "decode_tok_s_vs_b",
            )
        )  # fmt: skip
    if any(not all(map(metrics._isnan, ys)) for _, ys in speed.values()):
        series = {f"{g} measured": v for g, v in speed.items()}
        series.update({f"{g} predicted": v for g, v in pred.items() if not all(map(metrics._isnan, v[1]))})
        s.figure(
            D.Figure(
                "Speedup over spec=none vs draft block size",
                plots.lines(series, "Speedup: measured and predicted", "draft block size B", "×", hline=1.0),
                "speedup_vs_b",
            )
        )
    return s


def _prompt_section(ok: pd.DataFrame, keys: list[str]) -> D.Section | None:
    if ok.empty or ok["prompt_kind"].isna().all():
        return None
    shown = metrics.varying(ok, keys)
    prompt_keys = ["prompt_kind", "prompt_index"]
    if not metrics.varying(ok, prompt_keys):
        return None
    agg = metrics.aggregate(ok, prompt_keys + shown)
    s = D.Section("Per-prompt breakdown")
    recs = []
    for _, r in agg.iterrows():
        rec = {PRETTY.get(k, k): _key_str(k, r[k]) for k in prompt_keys + shown}
        rec.update(
            {
                "runs": int(r["n"]),
                "accept": fmt.pct(r["draft_acceptance_rate_mean"]),
                "τ": fmt.tau(r["tau_mean"]),
                "decode tok/s": fmt.mean_std(r["decode_tok_s_mean"], r["decode_tok_s_std"]),
            }
        )
        recs.append(rec)
    raw = agg.drop(columns=["per_position"])
    s.table(D.Table("", pd.DataFrame(recs), raw))
    by_kind = metrics.aggregate(ok[ok["spec"] != "none"], ["prompt_kind"])
    if not by_kind.empty and by_kind["tau_mean"].notna().any():
        s.figure(
            D.Figure(
                "τ per prompt kind",
                plots.bars([str(k) for k in by_kind["prompt_kind"]], list(by_kind["tau_mean"]),
                           "Acceptance length τ per prompt kind (all drafting configurations)", "τ",
                           errors=list(by_kind["tau_std"])),
                "tau_per_prompt_kind",
            )
        )  # fmt: skip
    return s


def _best_section(agg: pd.DataFrame, pp: pd.DataFrame, shown: list[str]) -> D.Section:
    s = D.Section("Best configuration per objective")
    best = metrics.best_configs(agg, pp)
    recs = []
    for objective, (r, why) in best.items():
        if r is None:
            recs.append({"objective": objective, "configuration": "n/a", "value": "", "why": why})
            continue
        if objective == "quality":
            label = f"{r['type_k']}/{r['type_v']}"
            value = f"KLD {fmt.num(r['kld_mean'], 4)}, PPL {fmt.num(r['ppl'], 3)}"
        elif objective == "speed":
            label = config_label(r, shown)
            value = f"{fmt.mean_std(r['decode_tok_s_mean'], r['decode_tok_s_std'])} tok/s"
        else:
            label = config_label(r, shown)
            value = f"{fmt.num(r['kv_bytes_per_token_mean'], 0)} KV bytes/token"
        recs.append({"objective": objective, "configuration": label, "value": value, "why": why})
    s.table(D.Table("", pd.DataFrame(recs)))
    return s


def _failed_section(bad: pd.DataFrame, shown: list[str]) -> D.Section:
    s = D.Section("Failed and interrupted cells")
    keys = [k for k in R.SETTINGS if k in bad and bad[k].notna().any()]
    recs = []
    for _, r in bad.iterrows():
        rec = {"cell": config_label(r, keys), "repetition": _key_str("repetition", r["repetition"])}
        rec.update({"status": r["status"], "error": r["error"] or ""})
        recs.append(rec)
    s.table(D.Table("", pd.DataFrame(recs)))
    return s


def _trace_section(path: Path, st: tracestats.TraceStats) -> D.Section:
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


def output_format(path: str | None) -> str:
    if path is None:
        return "md"
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise UserError(f"{path}: unknown report format {suffix or '(no suffix)'!r}; use a .md, .html or .csv file")
    return FORMATS[suffix]


def write(document: D.Document, out: str | None) -> str:
    """Write to ``out`` (format from its suffix) or return markdown for stdout (no figures)."""
    form = output_format(out)
    if out is None:
        return D.to_markdown(document)
    p = Path(out)
    if form == "html":
        text = D.to_html(document)
    elif form == "csv":
        text = D.to_csv(document)
    else:
        img_dir = p.parent / f"{p.stem}_files"
        text = D.to_markdown(document, img_dir, f"{img_dir.name}/")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
    except OSError as e:
        raise UserError(f"{p}: cannot write the report ({e.strerror}); choose another -o path") from None
    return text
