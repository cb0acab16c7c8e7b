"""Report section: cache types (bits/value, KV bytes by context length, speed, PPL/KLD)."""

from __future__ import annotations

import math

import pandas as pd

from turbospec.analysis import doc as D
from turbospec.analysis import fmt, kvmodel, metrics, plots

CTX_LENGTHS = (512, 4096, 32768, 131072)


def cache_section(ok: pd.DataFrame, ppl: pd.DataFrame, shown: list[str]) -> D.Section:
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
