"""``turbospec quant-stats``: codec quality of every KV cache type on synthetic vectors."""

from __future__ import annotations

import argparse
import json
import sys

from turbospec.errors import UserError


def register(sub) -> None:
    p = sub.add_parser(
        "quant-stats",
        help="MSE and inner-product error of each KV cache type on random vectors",
        description=(
            "Measure each KV cache codec (encode -> f16 norm/scale -> decode -> un-rotate) on random "
            "unit vectors and on unit vectors with a few outlier channels: MSE, inner-product error "
            "and bias, next to the TurboQuant paper's D_mse and the 4^-b floor."
        ),
    )
    p.add_argument("--type", dest="types", metavar="T[,T...]",
                   help="cache types, comma separated (default: all)")
    p.add_argument("--dim", type=int, default=128, help="vector dimension (zero-padded to the block; default 128)")
    p.add_argument("--n", type=int, default=20000, help="vectors per measurement (default 20000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--kv-equalize", nargs="?", const=0.5, type=float, default=None, metavar="STRENGTH",
                   help="also measure K channel equalization on the outlier vectors (strength, default 0.5)")
    p.add_argument("--outlier-channels", type=int, default=None, metavar="K",
                   help="outlier channels per vector (default dim // 32, at least 1)")
    p.add_argument("--outlier-scale", type=float, default=10.0, help="outlier channel scale (default 10)")
    p.add_argument("--speed", action="store_true",
                   help="also time encode (1 row, 512 rows), decode (8192 rows) and scores per type")
    p.add_argument("--json", action="store_true", help="print the results as JSON on the last line")
    p.set_defaults(func=run)


def parse_types(text: str | None) -> tuple[str, ...]:
    from turbospec.engine.kv.codecs import CODECS, get_codec

    if not text:
        return CODECS
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise UserError(f"--type is empty; give one or more of: {', '.join(CODECS)}")
    return tuple(get_codec(n).name for n in names)  # UserError for unknown names


def _fmt(v: float | None, digits: int = 4) -> str:
    if v is None:
        return "—"
    if v == 0:
        return "0"
    if abs(v) < 1e-3 or abs(v) >= 1000:
        return f"{v:.2e}"
    return f"{v:.{digits}f}"


def render(rows: list[dict], args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    eq = args.kv_equalize is not None
    r0 = rows[0]
    t = Table(
        title=(f"KV codec quality: {args.n} vectors, dim {args.dim}, seed {args.seed}; outliers: "
               f"{len(r0['outlier_channels'])} channels x{r0['outlier_scale']:g}"),
        caption=("MSE = mean ||x - x~||^2 of unit vectors (norm-corrected, f16 norm, decoded, un-rotated); "
                 "IP err^2 / bias = mean (<q,x~> - <q,x>)^2 / mean, q random unit; aligned bias: "
                 "q = unit(x + noise); 4^-b with b = bits/value"),
    )
    padded = any(r["padded_dim"] != r["dim"] for r in rows)
    cols = ["type", "bits/value"] + (["b/v padded"] if padded else [])
    cols += ["MSE", "paper D_mse", "4^-b", "IP err^2", "IP bias", "aligned bias",
            "MSE outl.", "IP err^2 outl."]
    if eq:
        cols += [f"MSE outl. eq {args.kv_equalize:g}", f"IP err^2 outl. eq {args.kv_equalize:g}"]
    for c in cols:
        t.add_column(c, justify="left" if c == "type" else "right")
    for r in rows:
        cells = [r["type"], f"{r['bits_per_value']:g}"]
        if padded:
            cells.append(f"{r['bits_per_value_effective']:.3g}")
        cells += [_fmt(r["mse"]), _fmt(r["paper_dmse"], 3), _fmt(r["floor"]),
                 _fmt(r["ip_mse"]), _fmt(r["ip_bias"]), _fmt(r["ip_bias_aligned"]), _fmt(r["mse_outlier"]),
                 _fmt(r["ip_mse_outlier"])]
        if eq:
            cells += [_fmt(r["mse_outlier_eq"]), _fmt(r["ip_mse_outlier_eq"])]
        t.add_row(*cells)
    con = Console(width=max(160, Console().width))
    con.print(t)


def render_speed(rows: list[dict], args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"KV codec speed (dim {args.dim}, best of 3, NumPy on this machine; other load skews it)")
    keys = [k for k in rows[0] if k != "type"]
    t.add_column("type")
    for k in keys:
        t.add_column(k.replace("_", " "), justify="right")
    for r in rows:
        t.add_row(r["type"], *[f"{r[k]:.3g}" for k in keys])
    Console(width=max(160, Console().width)).print(t)


def run(args: argparse.Namespace) -> int:
    if args.n < 2:
        raise UserError(f"--n {args.n} is too small; use at least 2 vectors (default 20000)")
    if args.dim < 1 or args.dim > 65536:
        raise UserError(f"--dim {args.dim} is out of range; use 1..65536 (default 128)")
    if args.outlier_channels is not None and not 1 <= args.outlier_channels <= args.dim:
        raise UserError(f"--outlier-channels {args.outlier_channels} must be in 1..--dim ({args.dim})")
    if not args.outlier_scale > 0:
        raise UserError(f"--outlier-scale {args.outlier_scale} must be positive (default 10)")
    types = parse_types(args.types)

    from turbospec.engine.kv.codecs import get_codec
    from turbospec.engine.kv.stats import QuantStatsConfig, run_quant_stats

    for name in types:
        pd = get_codec(name).padded_dim(args.dim)
        if pd != args.dim:
            print(f"note: --dim {args.dim} is not a multiple of {name}'s block; zero-padded to {pd}",
                  file=sys.stderr)
    cfg = QuantStatsConfig(types=types, dim=args.dim, n=args.n, seed=args.seed, equalize=args.kv_equalize,
                           outlier_scale=args.outlier_scale, outlier_channels=args.outlier_channels)
    rows = run_quant_stats(cfg)
    render(rows, args)
    if args.speed:
        from turbospec.engine.kv.stats import codec_speed

        speed = [codec_speed(t, args.dim) for t in types]
        render_speed(speed, args)
        for r, sp in zip(rows, speed, strict=True):
            r.update({k: v for k, v in sp.items() if k != "type"})
    if args.json:
        print(json.dumps(rows), flush=True)
    return 0
