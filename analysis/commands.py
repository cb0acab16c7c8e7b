"""``turbospec report`` and ``turbospec compare`` (pandas and matplotlib are imported lazily)."""

from __future__ import annotations

import argparse
import sys


def register(sub) -> None:
    p = sub.add_parser(
        "report",
        help="markdown/HTML/CSV report from sweep results, ppl --json outputs and traces",
        description=(
            "Read sweep results (JSONL), `turbospec ppl --json` outputs and NDJSON traces (turbospec's or the "
            "fork's LLAMA_MTP_ACC_TRACE lines) and write a report: cache types (bits/value, KV bytes, PPL/KLD, "
            "decode tok/s), draft block sizes (acceptance, τ, per-position curves, measured and predicted "
            "speedup), per-prompt breakdown, best configuration per objective, and per-trace figures."
        ),
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="result/ppl/trace files, or folders holding them")
    p.add_argument(
        "-o", "--output", metavar="FILE", help="report.md | report.html | report.csv (default: markdown on stdout)"
    )
    p.add_argument("--title", default="turbospec report", help="report title")
    p.set_defaults(func=cmd_report)

    c = sub.add_parser(
        "compare",
        help="relative change of every metric between two result sets",
        description=(
            "Match the cells of two result sets on their settings and show, per metric, mean ± std of A and B, "
            "the relative change (B - A) / A, and whether it lies within noise (overlapping mean ± std)."
        ),
    )
    c.add_argument("a", metavar="A", help="baseline results file or folder")
    c.add_argument("b", metavar="B", help="results file or folder to compare against A")
    c.add_argument("-o", "--output", metavar="FILE", help="compare.md | .html | .csv (default: markdown on stdout)")
    c.add_argument("--all", action="store_true", help="also list metrics that are identical in A and B")
    c.set_defaults(func=cmd_compare)


def _emit(document, out: str | None) -> int:
    from turbospec.analysis import report

    report.output_format(out)  # a bad suffix fails before any work is written
    text = report.write(document, out)
    if out is None:
        sys.stdout.write(text)
    else:
        print(f"wrote {out}", file=sys.stderr)
    for m in document.messages:
        print(f"turbospec: warning: {m}", file=sys.stderr)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from turbospec.analysis import load, report

    report.output_format(args.output)
    inputs = load.load(args.paths)
    return _emit(report.build(inputs, args.title), args.output)


def cmd_compare(args: argparse.Namespace) -> int:
    from turbospec.analysis import compare, report

    report.output_format(args.output)
    return _emit(compare.build([args.a], [args.b], show_all=args.all), args.output)
