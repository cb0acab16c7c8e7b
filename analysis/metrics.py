"""Figures from result rows with pandas: per-configuration aggregates, speedups (measured and
predicted), cache-type tables and the best configuration per objective.

A *configuration* is a cell without its prompt: rows equal on CONFIG are averaged over prompts
and repetitions (mean ± sample std). Metric names as in DESIGN.md.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from turbospec import results as R
from turbospec.analysis import kvmodel

CONFIG: tuple[str, ...] = (
    "model_filename", "backend", "device", "n_threads", "type_k", "type_v", "spec", "draft_block_size",
    "draft_max", "pipeline_depth", "n_prompt", "n_gen",
)  # fmt: skip
SPEC_SETTINGS = ("spec", "draft_block_size", "draft_max", "pipeline_depth")
PROMPT = ("prompt_kind", "prompt_index")
COSTS = ("draft_us", "verify_us", "plain_step_us")
AGG_METRICS = R.METRICS + COSTS


def rows_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows -> DataFrame with every schema column (missing ones as None) plus ``_source``."""
    cols = list(R.COLUMN_NAMES) + ["_source"]
    df = pd.DataFrame([{c: r.get(c) for c in cols} for r in rows], columns=cols)
    for c in AGG_METRICS + ("n_rounds", "n_drafted", "n_accepted", "bits_k", "bits_v"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
    if "status" in df:
        df["status"] = df["status"].fillna("ok")
    df["spec"] = df["spec"].fillna("none")
    return df


def ok_rows(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "ok"]


def varying(df: pd.DataFrame, cols: tuple[str, ...] | list[str]) -> list[str]:
    """Columns among ``cols`` that take more than one value (None counts as a value)."""
    out = []
    for c in cols:
        if c in df and df[c].astype(str).nunique(dropna=False) > 1:
            out.append(c)
    return out


def _mean_lists(lists: pd.Series) -> list[float]:
    vals = [v for v in lists if isinstance(v, list) and v]
    if not vals:
        return []
    n = max(len(v) for v in vals)
    arr = np.full((len(vals), n), np.nan)
    for i, v in enumerate(vals):
        arr[i, : len(v)] = [float(x) if x is not None else np.nan for x in v]
    with np.errstate(all="ignore"):
        return [float(x) for x in np.nanmean(arr, axis=0)]


def aggregate(df: pd.DataFrame, keys: tuple[str, ...] | list[str]) -> pd.DataFrame:
    """Group ok rows on ``keys``: n (rows), <metric>_mean/_std for AGG_METRICS, per_position (mean
    of the rows' lists), p_sum. Keys stay as columns; None keys are kept (dropna=False)."""
    keys = [k for k in keys if k in df]
    if df.empty:
        return pd.DataFrame(columns=keys + ["n"])
    work = df.copy()
    for k in keys:  # stable, hashable group keys; originals restored below
        work[k] = work[k].map(lambda v: "\0none" if v is None or (isinstance(v, float) and math.isnan(v)) else v)
    out = []
    for key, g in work.groupby(keys, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        rec: dict[str, Any] = {k: (None if v == "\0none" else v) for k, v in zip(keys, key, strict=True)}
        rec["n"] = len(g)
        for m in AGG_METRICS:
            s = g[m].dropna()
            rec[f"{m}_mean"] = float(s.mean()) if len(s) else math.nan
            rec[f"{m}_std"] = float(s.std(ddof=1)) if len(s) > 1 else math.nan
        pp = _mean_lists(g["per_position"])
        rec["per_position"] = pp
        rec["p_sum"] = float(np.nansum(pp)) if pp else math.nan
        out.append(rec)
    return pd.DataFrame(out)


def _match_key(rec: pd.Series | dict[str, Any], cols: list[str]) -> tuple:
    return tuple(None if _isnan(rec[c]) else rec[c] for c in cols)


def _isnan(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def predicted_speedup(p: list[float], t_plain_us: float, t_verify_us: float, t_draft_us: float) -> float:
    """(1 + Σ p_i) · t_plain_step / (t_verify(B) + t_draft(B)): tokens a round is expected to emit
    times the cost of emitting one plainly, over the cost of a round."""
    if not p or any(_isnan(x) for x in (t_plain_us, t_verify_us, t_draft_us)):
        return math.nan
    denom = t_verify_us + t_draft_us
    if denom <= 0:
        return math.nan
    return (1.0 + float(np.nansum(p))) * t_plain_us / denom


def with_speedups(agg: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Add ``baseline_tok_s``, ``speedup`` (measured decode tok/s over the spec=none configuration
    equal on every other key) and ``speedup_pred`` (predicted_speedup with t_plain from the baseline:
    its plain_step_us, else 1e6 / its decode tok/s; t_verify and t_draft from the configuration)."""
    agg = agg.copy()
    for c in ("baseline_tok_s", "speedup", "speedup_pred", "t_plain_us"):
        agg[c] = math.nan
    if agg.empty or "spec" not in agg:
        return agg
    other = [k for k in keys if k in agg and k not in SPEC_SETTINGS]
    base = {}
    for _, r in agg[agg["spec"] == "none"].iterrows():
        base[_match_key(r, other)] = r
    for i, r in agg.iterrows():
        b = base.get(_match_key(r, other))
        if b is None:
            continue
        bt = b["decode_tok_s_mean"]
        agg.at[i, "baseline_tok_s"] = bt
        if bt and not _isnan(bt) and not _isnan(r["decode_tok_s_mean"]):
            agg.at[i, "speedup"] = r["decode_tok_s_mean"] / bt
        t_plain = b["plain_step_us_mean"]
        if _isnan(t_plain) and bt and not _isnan(bt):
            t_plain = 1e6 / bt
        agg.at[i, "t_plain_us"] = t_plain
        if r["spec"] != "none":
            agg.at[i, "speedup_pred"] = predicted_speedup(
                r["per_position"], t_plain, r["verify_us_mean"], r["draft_us_mean"]
            )
    return agg


def cache_pairs(df: pd.DataFrame, ppl: pd.DataFrame) -> list[tuple[str, str]]:
    pairs: set[tuple[str, str]] = set()
    for frame in (df, ppl):
        if not frame.empty:
            pairs.update(zip(frame["type_k"].astype(str), frame["type_v"].astype(str), strict=True))
    return sorted(pairs, key=lambda kv: (-_bits(kv[0], None), -_bits(kv[1], None), kv))


def _bits(type_name: str, from_rows: float | None) -> float:
    if from_rows is not None and not _isnan(from_rows):
        return float(from_rows)
    b = kvmodel.bits_per_value(type_name)
    return math.nan if b is None else b


def row_bits(df: pd.DataFrame, type_k: str, type_v: str) -> tuple[float, float]:
    """Bits/value of the pair: the rows' bits_k/bits_v when present, else the type table."""
    bk = bv = None
    if not df.empty:
        sel = df[(df["type_k"] == type_k) & (df["type_v"] == type_v)]
        if len(sel):
            sk, sv = sel["bits_k"].dropna(), sel["bits_v"].dropna()
            bk = float(sk.iloc[0]) if len(sk) else None
            bv = float(sv.iloc[0]) if len(sv) else None
    return _bits(type_k, bk), _bits(type_v, bv)


def ppl_frame(ppl: list[dict[str, Any]]) -> pd.DataFrame:
    cols = ["ppl", "n_tokens", "ctx", "type_k", "type_v", "kld_mean", "top1_agreement", "model", "_source"]
    df = pd.DataFrame([{c: p.get(c) for c in cols} for p in ppl], columns=cols)
    for c in ("ppl", "kld_mean", "top1_agreement", "n_tokens", "ctx"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
    return df


def ppl_by_pair(ppl: pd.DataFrame) -> pd.DataFrame:
    """Mean PPL, KLD, top-1 agreement per (type_k, type_v) and ΔPPL vs the f16/f16 pair."""
    if ppl.empty:
        return pd.DataFrame(columns=["type_k", "type_v", "ppl", "kld_mean", "top1_agreement", "dppl"])
    g = ppl.groupby(["type_k", "type_v"], sort=False)[["ppl", "kld_mean", "top1_agreement"]].mean().reset_index()
    ref = g[(g["type_k"] == "f16") & (g["type_v"] == "f16")]["ppl"]
    g["dppl"] = (g["ppl"] / float(ref.iloc[0]) - 1.0) if len(ref) else math.nan
    return g


def best_configs(agg: pd.DataFrame, ppl_pairs: pd.DataFrame) -> dict[str, tuple[pd.Series | None, str]]:
    """objective -> (winning record, why). speed: highest decode tok/s; memory: fewest KV bytes per
    token (measured, else bits/value of the pair); quality: lowest KLD (else PPL) of the ppl results."""
    out: dict[str, tuple[pd.Series | None, str]] = {}
    if not agg.empty and agg["decode_tok_s_mean"].notna().any():
        r = agg.loc[agg["decode_tok_s_mean"].idxmax()]
        out["speed"] = (r, "highest decode tok/s")
    else:
        out["speed"] = (None, "no ok result rows with decode_tok_s")
    if not agg.empty and agg["kv_bytes_per_token_mean"].notna().any():
        m = agg["kv_bytes_per_token_mean"].min()
        cand = agg[agg["kv_bytes_per_token_mean"] == m]
        r = cand.loc[cand["decode_tok_s_mean"].fillna(-1).idxmax()]
        out["memory"] = (r, "fewest KV bytes per token (ties: faster)")
    elif not agg.empty:
        bits = agg.apply(lambda r: _bits(r["type_k"], None) + _bits(r["type_v"], None), axis=1)
        if bits.notna().any():
            cand = agg[bits == bits.min()]
            r = cand.loc[cand["decode_tok_s_mean"].fillna(-1).idxmax()]
            out["memory"] = (r, "fewest bits per K+V value (no measured kv_bytes_per_token)")
        else:
            out["memory"] = (None, "unknown cache types and no kv_bytes_per_token")
    else:
        out["memory"] = (None, "no ok result rows")
    if not ppl_pairs.empty:
        col = "kld_mean" if ppl_pairs["kld_mean"].notna().any() else "ppl"
        ref = (ppl_pairs["type_k"] == "f16") & (ppl_pairs["type_v"] == "f16")
        pool = ppl_pairs[~ref & ppl_pairs[col].notna()]
        why = "lowest mean KLD" if col == "kld_mean" else "lowest perplexity"
        if len(pool) and ref.any():
            why += " among compressed caches (f16/f16 is the reference)"
        else:
            pool = ppl_pairs[ppl_pairs[col].notna()]
        r = pool.loc[pool[col].idxmin()]
        out["quality"] = (r, why)
    else:
        out["quality"] = (None, "needs `turbospec ppl --json` results")
    return out
