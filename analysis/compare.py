"""``turbospec compare A B``: relative change of every metric between two result sets.

Cells are matched on the settings columns (turbospec.results.SETTINGS), except the settings
that are constant within A and within B but differ between them (the thing being compared,
e.g. device or model): those are shown as "A: … / B: …" above the table. For each matched cell
and metric: mean ± std of A and of B over repetitions, change = (B - A) / A, and "noise" when
the intervals mean ± std overlap (a single repetition has std 0). ppl results are matched on
type_k, type_v and ctx.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from turbospec import results as R
from turbospec.analysis import doc as D
from turbospec.analysis import fmt, metrics
from turbospec.analysis.load import Inputs, load

HIGHER_IS_BETTER = {
    "avg_ts": True, "prefill_tok_s": True, "decode_tok_s": True, "draft_acceptance_rate": True, "tau": True,
    "kv_bytes": False, "kv_bytes_per_token": False, "peak_mem_bytes": False, "wall_s": False,
    "draft_us": False, "verify_us": False, "plain_step_us": False, "ppl": False, "kld_mean": False,
    "top1_agreement": True,
}  # fmt: skip
FRACTIONS = ("draft_acceptance_rate", "top1_agreement")


@dataclass
class Change:
    metric: str
    a_mean: float
    a_std: float
    b_mean: float
    b_std: float
    change: float  # (b - a) / a
    noise: bool
    verdict: str  # better | worse | noise | same


def within_noise(a_mean: float, a_std: float, b_mean: float, b_std: float) -> bool:
    """True when [a - sa, a + sa] and [b - sb, b + sb] overlap (a missing std counts as 0)."""
    sa = 0.0 if math.isnan(a_std) else a_std
    sb = 0.0 if math.isnan(b_std) else b_std
    return a_mean - sa <= b_mean + sb and b_mean - sb <= a_mean + sa


def change_of(metric: str, a_mean: float, a_std: float, b_mean: float, b_std: float) -> Change:
    rel = (b_mean - a_mean) / abs(a_mean) if a_mean else (0.0 if b_mean == a_mean else math.nan)
    noise = within_noise(a_mean, a_std, b_mean, b_std)
    if b_mean == a_mean:
        verdict = "same"
    elif noise:
        verdict = "noise"
    else:
        up = b_mean > a_mean
        verdict = "better" if up == HIGHER_IS_BETTER.get(metric, True) else "worse"
    return Change(metric, a_mean, a_std, b_mean, b_std, rel, noise, verdict)


def _show(metric: str, mean: float, std: float) -> str:
    if metric in FRACTIONS:
        return fmt.pct_std(mean, std)
    if metric == "tau":
        return fmt.tau(mean) + ("" if math.isnan(std) else f" ± {std:.2f}")
    digits = 0 if metric in ("kv_bytes", "kv_bytes_per_token", "peak_mem_bytes") else 2
    return fmt.mean_std(mean, std, digits)


def compare_frames(a: pd.DataFrame, b: pd.DataFrame) -> tuple[pd.DataFrame, list[str], list[str]]:
    """(long table of changes, matching keys, notes). ``a``/``b`` are rows_frame()s of ok rows."""
    notes: list[str] = []
    settings = [k for k in R.SETTINGS if k in a and k in b]
    fixed = []
    for k in settings:
        va = set(a[k].astype(str)) if len(a) else set()
        vb = set(b[k].astype(str)) if len(b) else set()
        if len(va) == 1 and len(vb) == 1 and va != vb:
            fixed.append(k)
            notes.append(f"{k}: A = {next(iter(va))}, B = {next(iter(vb))}")
    keys = [k for k in settings if k not in fixed]
    ga, gb = metrics.aggregate(a, keys), metrics.aggregate(b, keys)
    shown = metrics.varying(pd.concat([ga, gb], ignore_index=True), keys) if len(ga) or len(gb) else []

    def index(g: pd.DataFrame) -> dict[tuple, pd.Series]:
        return {tuple(str(r[k]) for k in keys): r for _, r in g.iterrows()}

    ia, ib = index(ga), index(gb)
    only_a = [k for k in ia if k not in ib]
    only_b = [k for k in ib if k not in ia]
    if only_a:
        notes.append(f"{len(only_a)} cell(s) only in A (not compared)")
    if only_b:
        notes.append(f"{len(only_b)} cell(s) only in B (not compared)")
    recs = []
    for key, ra in ia.items():
        rb = ib.get(key)
        if rb is None:
            continue
        for m in metrics.AGG_METRICS:
            am, bm = ra[f"{m}_mean"], rb[f"{m}_mean"]
            if math.isnan(am) or math.isnan(bm):
                continue
            c = change_of(m, am, ra[f"{m}_std"], bm, rb[f"{m}_std"])
            rec = {k: ra[k] for k in shown}
            rec.update(vars(c))
            rec["n_a"], rec["n_b"] = int(ra["n"]), int(rb["n"])
            recs.append(rec)
    return pd.DataFrame(recs), shown, notes


def compare_ppl(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    keys = ["type_k", "type_v", "ctx"]
    recs = []
    if a.empty or b.empty:
        return pd.DataFrame(recs)
    ga = a.groupby(keys, dropna=False)[["ppl", "kld_mean", "top1_agreement"]].mean()
    gb = b.groupby(keys, dropna=False)[["ppl", "kld_mean", "top1_agreement"]].mean()
    for key in ga.index.intersection(gb.index):
        for m in ("ppl", "kld_mean", "top1_agreement"):
            am, bm = float(ga.loc[key, m]), float(gb.loc[key, m])
            if math.isnan(am) or math.isnan(bm):
                continue
            c = change_of(m, am, math.nan, bm, math.nan)
            rec = dict(zip(keys, key, strict=True))
            rec.update(vars(c))
            recs.append(rec)
    return pd.DataFrame(recs)


def build(a_paths: list[str | Path], b_paths: list[str | Path], show_all: bool = False) -> D.Document:
    """The compare document. Rows whose metric is identical in A and B are hidden unless ``show_all``."""
    ia, ib = load(a_paths), load(b_paths)
    doc = D.Document(
        title=f"turbospec compare: A = {', '.join(map(str, a_paths))}  vs  B = {', '.join(map(str, b_paths))}"
    )
    doc.messages = [f"A: {m}" for m in ia.messages] + [f"B: {m}" for m in ib.messages]
    for name, inp in (("A", ia), ("B", ib)):
        if inp.traces:
            doc.messages.append(f"{name}: {len(inp.traces)} standalone trace(s) ignored (compare reads result rows)")
    s = D.Section("Changes (B vs A)")
    doc.sections.append(s)
    fa, fb = _ok(ia), _ok(ib)
    table, shown, notes = compare_frames(fa, fb)
    for n in notes:
        s.text(n)
    if fa.empty or fb.empty:
        s.text("Both A and B need ok result rows to compare speed and acceptance.")
    if not table.empty:
        same = table["verdict"] == "same"
        if same.any() and not show_all:
            s.text(f"{int(same.sum())} metric row(s) identical in A and B hidden (--all shows them).")
            table = table[~same]
        if not table.empty:
            s.table(_table(table, shown))
    elif not fa.empty and not fb.empty:
        s.text("No cell of A matches a cell of B on the settings columns.")
    pt = compare_ppl(metrics.ppl_frame(ia.ppl), metrics.ppl_frame(ib.ppl))
    if not pt.empty:
        q = D.Section("Quality (ppl results)")
        q.table(_table(pt, ["type_k", "type_v", "ctx"]))
        doc.sections.append(q)
    return doc


def _ok(inp: Inputs) -> pd.DataFrame:
    return metrics.ok_rows(metrics.rows_frame(inp.rows))


def _table(t: pd.DataFrame, shown: list[str]) -> D.Table:
    from turbospec.analysis.labels import PRETTY, key_str

    recs = []
    for _, r in t.iterrows():
        rec = {PRETTY.get(k, k): key_str(k, r[k]) for k in shown}
        rec.update(
            {
                "metric": r["metric"],
                "value A": _show(r["metric"], r["a_mean"], r["a_std"]),
                "value B": _show(r["metric"], r["b_mean"], r["b_std"]),
                "change": fmt.signed_pct(r["change"]),
                "verdict": {"noise": "≈ within noise", "better": "better", "worse": "worse", "same": "="}[r["verdict"]],
            }
        )
        recs.append(rec)
    return D.Table("", pd.DataFrame(recs), t, "change = (B - A) / A; ≈ within noise: the ranges mean ± std overlap")
