"""``turbospec report``: build the document from loaded inputs (see load.py) and write it.

Sections: overview, cache types, draft block sizes, per-prompt breakdown, best configuration
per objective, failed cells, and one section per standalone trace. Each section says what it
needs when its inputs are missing, so any subset of inputs gives a (partial) report.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from turbospec import results as R
from turbospec.analysis import doc as D
from turbospec.analysis import fmt, metrics, tracestats
from turbospec.analysis.labels import PRETTY, config_label, key_str
from turbospec.analysis.load import Inputs, trace_of_row
from turbospec.analysis.report_cache import cache_section
from turbospec.analysis.report_draft import config_section, draft_section, prompt_section
from turbospec.analysis.report_trace import trace_section
from turbospec.errors import UserError

FORMATS = {".md": "md", ".markdown": "md", ".html": "html", ".htm": "html", ".csv": "csv"}
__all__ = ["PRETTY", "build", "config_label", "key_str", "output_format", "write"]


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
    doc.sections.append(cache_section(ok, ppl, shown_keys))
    if not agg.empty:
        doc.sections.append(config_section(agg, shown_keys))
    if (ok["spec"] != "none").any():
        doc.sections.append(draft_section(agg, shown_keys))
    prompt_sec = prompt_section(ok, keys)
    if prompt_sec is not None:
        doc.sections.append(prompt_sec)
    if not df.empty or not ppl.empty:
        doc.sections.append(_best_section(agg, metrics.ppl_by_pair(ppl), shown_keys))
    bad = df[df["status"] != "ok"]
    if not bad.empty:
        doc.sections.append(_failed_section(bad, shown_keys))
    for t in inputs.traces:
        doc.sections.append(trace_section(t.path, t.summary))
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
            s.text("Common settings: " + ", ".join(f"{PRETTY.get(k, k)}={key_str(k, first[k])}" for k in common))
        schemas = sorted({str(v) for v in df["schema"].dropna()})
        if len(schemas) > 1:
            s.text("Schema versions mixed in the inputs: " + ", ".join(schemas) + " (read as " + R.SCHEMA + ").")
    if not inputs.rows and not inputs.ppl and not inputs.traces:
        s.text("Nothing readable in the inputs; see the input problems above.")
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
        rec = {"cell": config_label(r, keys), "repetition": key_str("repetition", r["repetition"])}
        rec.update({"status": r["status"], "error": r["error"] or ""})
        recs.append(rec)
    s.table(D.Table("", pd.DataFrame(recs)))
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
