"""Report sections: configurations, draft block sizes (measured and predicted speedup), per-prompt breakdown."""

from __future__ import annotations

import math

import pandas as pd

from turbospec.analysis import doc as D
from turbospec.analysis import fmt, metrics, plots
from turbospec.analysis.labels import PRETTY, config_label, key_str


def config_section(agg: pd.DataFrame, shown: list[str]) -> D.Section:
    s = D.Section("Configurations")
    recs, raws = [], []
    for _, r in agg.iterrows():
        rec = {PRETTY.get(k, k): key_str(k, r[k]) for k in shown}
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


def draft_section(agg: pd.DataFrame, shown: list[str]) -> D.Section:
    s = D.Section("Draft block sizes")
    spec = agg[agg["spec"] != "none"].sort_values(["spec", "draft_block_size"], na_position="first")
    group_keys = [k for k in shown if k not in ("draft_block_size",)]
    recs, raws = [], []
    max_pos = max((len(p) for p in spec["per_position"]), default=0)
    for _, r in spec.iterrows():
        rec = {PRETTY.get(k, k): key_str(k, r[k]) for k in shown}
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


def prompt_section(ok: pd.DataFrame, keys: list[str]) -> D.Section | None:
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
        rec = {PRETTY.get(k, k): key_str(k, r[k]) for k in prompt_keys + shown}
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
