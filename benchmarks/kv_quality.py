"""KV cache quality on the default model: PPL, KLD vs f16 and top-1 agreement per cache type pair.

    python benchmarks/kv_quality.py [--ctx 512:6,2048:1] [--configs SPEC;SPEC..] [-o benchmarks/results/kv_quality.md]

For each context (CTX:CHUNKS) the f16 run writes a KL base under a temporary directory
(0.5 MB per scored token for the 262144 vocabulary; deleted at the end, never in the repo),
then every configuration runs ``engine/perplexity.perplexity`` against it: llama-perplexity
style (each chunk from an empty cache starting with BOS, the second half scored). The model
is loaded once. Configurations are spec strings of engine/kv/recipes.py (``K/V+eq+out8+protect``)
or recipe names. Rows go to the markdown file as they finish (a partial table survives).
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEXT = ROOT / "tests" / "fixtures" / "ppl_text.txt"

DEFAULT_CONFIGS = [
    "q8_0/q8_0", "q4_0/q4_0", "turbo4/turbo4", "turbo4lm/turbo4lm", "turbo3/turbo3", "turbo2/turbo2",
    "q4_0/q4_0+eq", "turbo4/turbo4+eq", "turbo4lm/turbo4lm+eq", "turbo3/turbo3+eq", "turbo2/turbo2+eq",
    "q8_0/turbo4", "q8_0/turbo3", "q8_0/turbo2", "q8_0/turbo3+eq",
    "turbo3-k",
]


def kv_bytes(model, cfg) -> tuple[int, float]:
    """(KV bytes per token over all layers, mean bits per cached value) from a real cache."""
    cache = model.new_cache(cfg)
    bpt = cache.bytes_per_token()
    c = model.cfg
    n_values = 2 * c.n_layer * c.n_head_kv * c.head_dim
    return bpt, 8 * bpt / n_values


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ctx", default="512:6,2048:1", help="CTX:CHUNKS list (default 512:6,2048:1)")
    ap.add_argument("--configs", default=None, help="';'-separated spec strings (default: the issue's list)")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-o", "--out", default=str(ROOT / "benchmarks" / "results" / "kv_quality.md"))
    args = ap.parse_args(argv)

    from turbospec.engine.backend import set_threads

    set_threads(args.threads)
    from turbospec.engine.kv.cache import KVConfig
    from turbospec.engine.kv.recipes import parse_spec
    from turbospec.engine.loader import load_model, load_tokenizer
    from turbospec.engine.perplexity import perplexity

    configs = args.configs.split(";") if args.configs else DEFAULT_CONFIGS
    ctxs = [(int(a), int(b)) for a, b in (x.split(":") for x in args.ctx.split(","))]
    model = load_model(None, quiet=True)
    tok = load_tokenizer(model)
    ids = tok.encode(TEXT.read_text(encoding="utf-8"), add_bos=True)
    f16_bpt, _ = kv_bytes(model, KVConfig())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    lines = [
        "# KV cache quality on the default model (Gemma 3 270M Q4_K_M)",
        "",
        f"Command: `python benchmarks/kv_quality.py --ctx {args.ctx}"
        + (f" --configs '{args.configs}'" if args.configs else "")
        + "`",
        f"Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC · text: tests/fixtures/ppl_text.txt "
        f"({len(ids)} tokens, GPL-3) · threads {args.threads} · load average at start {load[0]:.1f}",
        "",
        "llama-perplexity style: each chunk starts from an empty cache with BOS and only its second half is "
        "scored; KLD and top-1 agreement against the f16 cache on the same chunks. `eq` = K channel "
        "equalization strength 0.5 (calibrated on the first 512 tokens of the first batch); `turbo3-k` = "
        "turbo3 K/V + eq + the 8 highest-rms K channels in f16 + layers 0 and 17 in q8_0. Bytes per token "
        "are over all 18 layers, K+V, measured from the cache (outlier and protected-layer bytes included).",
        "",
    ]
    tmp = Path(tempfile.mkdtemp(prefix="kvq-", dir="/tmp"))
    try:
        for ctx, chunks in ctxs:
            base = str(tmp / f"base-{ctx}.npy")
            t = time.perf_counter()
            r0 = perplexity(model, ids, tok.bos_id, ctx=ctx, chunks=chunks, kv=KVConfig(), kl_base=base)
            print(f"ctx {ctx}: f16 ppl {r0.ppl:.4f} ({time.perf_counter() - t:.0f} s)", file=sys.stderr, flush=True)
            lines += [
                f"## ctx {ctx}, {r0.n_chunks} chunk(s), {r0.n_tokens} scored tokens",
                "",
                "| K/V config | bits/value | KV bytes/token | vs f16 | PPL | mean KLD | top-1 agree |",
                "|---|---:|---:|---:|---:|---:|---:|",
                f"| f16/f16 | 16.00 | {f16_bpt} | 1.00x | {r0.ppl:.3f} | 0 | 100.0% |",
            ]
            out.write_text("\n".join(lines) + "\n")
            for spec in configs:
                cfg = parse_spec(spec)
                bpt, bits = kv_bytes(model, cfg)
                t = time.perf_counter()
                r = perplexity(model, ids, tok.bos_id, ctx=ctx, chunks=chunks, kv=cfg, kl_base=base, kl_compare=True)
                k = r.kld
                print(
                    f"ctx {ctx}: {spec:32s} ppl {r.ppl:8.3f} kld {k['kld_mean']:.4f} top1 {k['top1_agreement']:.3f} "
                    f"({time.perf_counter() - t:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )
                lines.append(
                    f"| {spec.replace('+', ' +')} | {bits:.2f} | {bpt} | {f16_bpt / bpt:.2f}x | {r.ppl:.3f} | "
                    f"{k['kld_mean']:.4f} | {100 * k['top1_agreement']:.1f}% |"
                )
                out.write_text("\n".join(lines) + "\n")
            lines.append("")
            os.remove(base)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
