"""TQ3_1S / TQ4_1S weights on the default model: size, quality, speed, and self-speculation.

    python benchmarks/tq_results.py [--workdir /tmp/turbospec-tq] [--chunks 4] [--ctx 512] [-n 64] [--reps 3]
                                    [--spec-n 48] [--spec-prompts 5] [--blocks 2 3 4 5 6] [-o results.md]

1. Quantizes the default model (Q4_K_M) into ``--workdir`` (never into the repository; ~250 MB
   each) with the convert API that ``turbospec quantize`` runs: TQ4_1S on all linear weights,
   TQ3_1S on all linear weights, TQ4_1S with the ``mixed`` recipe, and TQ4_1S with the token
   embedding (the tied LM head) converted too (``--quantize-embedding``). Existing files are
   reused unless ``--requantize``.
2. Size: file bytes; bits per weight of the converted tensors (TQ tensors; for the original, the
   same linear weights in their Q4_K_M types), of the token embedding, and overall (all tensor
   bytes x 8 / all weights); and the bytes the engine streams per token for its linear weights
   and LM head (non-TQ weights are held as row-scaled int16, 2 bytes per weight; TQ weights stay
   in their blocks: TQ4 0.625 B/weight, TQ3 0.5 as laid out for the decode).
3. Quality: ``engine.perplexity.perplexity`` on tests/fixtures/ppl_text.txt (``--chunks`` chunks of
   ``--ctx``): the original writes the KL base (0.5 MB per scored token, in the workdir, deleted
   at the end), every variant compares against it: PPL, mean KLD, top-1 agreement.
4. Decode speed: greedy, ``-n`` tokens after a short prompt, ``--reps`` repetitions after a warm-up,
   mean ± std; the repetitions are interleaved across the models (rep 1 of every model, then
   rep 2 ...) so that load from other processes spreads over all of them alike.
5. Self-speculation: the original model as the target, a TQ copy as the ``draft`` drafter
   (engine.spec.draft_model.DraftModelDrafter) and prompt lookup (``ngram``) beside it, B = 2..6,
   pipeline depth 2, greedy, one prompt per kind of engine/data/prompts.jsonl; acceptance, τ,
   per-position acceptance, decode tok/s and its ratio to plain decoding in the same run.

Napkin math for the self-speculation: the draft copy has the target's size (the TQ copy only
changes how its 100 M linear weights are stored; the 168 M-weight LM head is the same), so a
round of B-1 drafts costs about (B-1)·c_d(1) + c_t(B), against τ·c_t(1) for plain decoding. Even
at 100% acceptance (τ = B) with c_d = c_t and c_t(B) = c_t(1) the ratio is B / B = 1: on this
model and this engine self-speculation cannot be faster than plain decoding; it measures how
faithfully the TQ copy tracks the original (its acceptance is the greedy agreement rate).

Timings are wall-clock on a shared machine (see the machine line printed at the top).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PPL_TEXT = REPO / "tests" / "fixtures" / "ppl_text.txt"
SPEED_PROMPT = "The capital of France is"


@dataclass
class Variant:
    key: str
    label: str
    type_name: str | None  # None: the original file
    recipe: str = "all"
    embedding: bool = False
    path: Path | None = None
    row: dict = field(default_factory=dict)


VARIANTS = [
    Variant("orig", "Q4_K_M (original)", None),
    Variant("tq4_all", "TQ4_1S, all linear", "tq4_1s"),
    Variant("tq3_all", "TQ3_1S, all linear", "tq3_1s"),
    Variant("tq4_mixed", "TQ4_1S, recipe mixed", "tq4_1s", recipe="mixed"),
    Variant("tq4_all_emb", "TQ4_1S, all linear + token_embd", "tq4_1s", embedding=True),
]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def machine_line(threads: int) -> str:
    from turbospec.engine.backend import blas_info, cpu_name

    load = os.getloadavg()
    return (
        f"{cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}, {blas_info()}, "
        f"{threads} threads; load average at start {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min)"
    )


# -- quantize ---------------------------------------------------------------------------------


def quantize_all(variants: list[Variant], src: Path, workdir: Path, force: bool) -> None:
    from turbospec.engine.quant.convert import QuantizeConfig, quantize_gguf

    for v in variants:
        if v.type_name is None:
            v.path = src
            continue
        v.path = workdir / f"{v.key}.gguf"
        if v.path.exists() and not force:
            log(f"reusing {v.path}")
            continue
        log(f"quantizing {v.label} -> {v.path}")
        res = quantize_gguf(
            QuantizeConfig(src=src, dst=v.path, type_name=v.type_name, recipe=v.recipe, embedding=v.embedding,
                           force=True)
        )
        log(f"  {res.n_converted} tensors, {res.bytes_out / 1e6:.1f} MB in {res.seconds:.1f} s")


# -- size -------------------------------------------------------------------------------------


def streamed_bytes(lin) -> int:
    """Bytes one matvec reads from the weight as the engine holds it."""
    from turbospec.engine.quant.linear import TQLinear

    if isinstance(lin, TQLinear):
        return int(lin._codes.nbytes + lin._d16.nbytes)
    return int(lin.nbytes)


def size_row(v: Variant, model, linear_names: set[str]) -> dict:
    from turbospec.engine.gguf import EXTRA_TYPES, type_name

    g = model.gguf
    tq = [t for t in g.tensors.values() if t.type_id in EXTRA_TYPES]
    lin = [g.tensors[n] for n in linear_names]
    conv = tq if tq else lin  # the original: the same linear weights in their Q4_K_M types
    emb = g.tensors["token_embd.weight"]
    all_t = list(g.tensors.values())
    blocks = [model.output] + [x for b in model.blk for x in (b.attn_qkv, b.attn_output, b.ffn_gate_up, b.ffn_down)]
    bits = lambda ts: 8 * sum(t.n_bytes for t in ts) / max(1, sum(t.n_elements for t in ts))  # noqa: E731
    return {
        "file_mb": v.path.stat().st_size / 1e6,
        "n_converted": len(tq),
        "converted_weights": sum(t.n_elements for t in conv),
        "bpw_converted": bits(conv),
        "bpw_linear": bits(lin),
        "bpw_embedding": bits([emb]),
        "embedding_type": type_name(emb.type_id),
        "bpw_overall": bits(all_t),
        "stream_mb_linear": sum(streamed_bytes(x) for x in blocks[1:]) / 1e6,
        "stream_mb_head": streamed_bytes(blocks[0]) / 1e6,
    }


# -- quality ----------------------------------------------------------------------------------


def quality(variants: list[Variant], models: dict, tok, workdir: Path, ctx: int, chunks: int) -> None:
    from turbospec.engine.perplexity import perplexity

    ids = tok.encode(PPL_TEXT.read_text(encoding="utf-8"), add_bos=True, parse_special=False)
    base = workdir / "kl_base.npy"
    try:
        for v in variants:
            t0 = time.perf_counter()
            compare = v.type_name is not None
            res = perplexity(models[v.key], ids, bos_id=tok.bos_id, ctx=ctx, chunks=chunks,
                             kl_base=str(base), kl_compare=compare)
            v.row.update(ppl=res.ppl, ppl_std=res.ppl_std, n_scored=res.n_tokens)
            if compare:
                v.row.update(kld=res.kld["kld_mean"], kld_p99=res.kld["kld_p99"], top1=res.kld["top1_agreement"],
                             ppl_ratio=res.kld["ppl_ratio"])
            log(f"ppl {v.label}: {res.ppl:.3f} ({time.perf_counter() - t0:.0f} s)"
                + (f", KLD {res.kld['kld_mean']:.5f}, top-1 {100 * res.kld['top1_agreement']:.1f}%" if compare else ""))
    finally:
        for p in (base, Path(str(base) + ".json"), base.with_name(base.name + ".partial")):
            p.unlink(missing_ok=True)


MSE_TENSORS = ("blk.0.attn_q.weight", "blk.0.ffn_down.weight", "blk.8.ffn_gate.weight", "blk.8.attn_v.weight",
               "blk.17.attn_output.weight")


def tensor_mse(models: dict) -> list[dict]:
    """Relative squared error ||w~ - w||² / ||w||² of single tensors against the original file's
    dequantized weights: TQ4_1S / TQ3_1S as converted, and gguf-py's Q4_0 / Q8_0 of the same
    weights as a peer (llama.cpp's own 4.5 / 8.5-bit formats)."""
    import numpy as np
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import dequantize as gq_dequantize
    from gguf.quants import quantize as gq_quantize

    from turbospec.engine.gguf import type_name

    src = models["orig"].gguf
    out = []
    for name in MSE_TENSORS:
        x = src.dequantize(name)
        e = float(np.sum(x.astype(np.float64) ** 2))
        row = {"tensor": name, "shape": tuple(x.shape), "source": type_name(src.info(name).type_id)}
        for key in ("tq4_all", "tq3_all"):
            row[key] = float(np.sum((models[key].gguf.dequantize(name) - x).astype(np.float64) ** 2)) / e
        for qt in (Q.Q4_0, Q.Q8_0):
            y = gq_dequantize(gq_quantize(x, qt), qt).reshape(x.shape)
            row[qt.name] = float(np.sum((y - x).astype(np.float64) ** 2)) / e
        out.append(row)
    return out


# -- speed ------------------------------------------------------------------------------------


def speed(variants: list[Variant], models: dict, tok, n: int, reps: int) -> None:
    from turbospec.engine.generate import GenConfig, generate

    ids = tok.encode(SPEED_PROMPT, add_bos=True)
    cfg = GenConfig(n_predict=n, ignore_eos=True)
    for v in variants:  # warm-up: page in the weights, build the thread pools
        generate(models[v.key], tok, ids, GenConfig(n_predict=8, ignore_eos=True))
        v.row["tok_s"] = []
        v.row["cpu_ms"] = []
    for r in range(reps):
        for v in variants:
            mark: list[float] = []

            def first(_t: int, mark=mark) -> None:  # decoding starts after the first token (prefill's)
                if not mark:
                    mark.append(time.process_time())

            res = generate(models[v.key], tok, ids, cfg, on_token=first)
            # process CPU time (all threads) per decoded token: robust to waiting for a core under load
            v.row["cpu_ms"].append(1e3 * (time.process_time() - mark[0]) / max(1, len(res.tokens) - 1))
            v.row["tok_s"].append(res.decode_tok_s)
            v.row.setdefault("greedy_tokens", res.tokens)
        log(f"speed rep {r + 1}/{reps}: " + ", ".join(
            f"{v.key} {v.row['tok_s'][-1]:.2f} tok/s {v.row['cpu_ms'][-1]:.0f} cpu-ms/tok" for v in variants))
    ref = variants[0].row["greedy_tokens"]
    for v in variants:
        same = 0
        for a, b in zip(v.row["greedy_tokens"], ref, strict=True):
            if a != b:
                break
            same += 1
        v.row["greedy_prefix"] = same


def matvec_micro(reps: int = 5) -> list[dict]:
    """One linear at T = 1 and T = 4 rows, int16 vs TQ4_1S vs TQ3_1S, random weights (ms per call,
    median of ``reps``, interleaved). The 262144 x 640 case is the tied LM head."""
    import numpy as np

    from turbospec.engine.linear import RowInt16, quantize_rows_int16
    from turbospec.engine.quant import tq
    from turbospec.engine.quant.linear import TQLinear

    rng = np.random.default_rng(0)
    out = []
    for shape in ((4096, 640), (640, 2048), (262144, 640)):
        w = rng.standard_normal(shape, dtype=np.float32) * 0.02
        lins = {"int16": RowInt16(*quantize_rows_int16(w))}
        for name, tid in (("TQ4_1S", 46), ("TQ3_1S", 45)):
            lins[name] = TQLinear(tq.quantize(w, tid), tid, shape)
        del w
        for T in (1, 4):
            x = rng.standard_normal((T, shape[1]), dtype=np.float32)
            times: dict[str, list[float]] = {k: [] for k in lins}
            for lin in lins.values():
                lin.apply(x)  # warm-up
            for _ in range(reps):
                for k, lin in lins.items():
                    t0 = time.perf_counter()
                    lin.apply(x)
                    times[k].append(1e3 * (time.perf_counter() - t0))
            out.append({"shape": shape, "T": T, **{k: statistics.median(v) for k, v in times.items()}})
        del lins
    return out


# -- self-speculation -------------------------------------------------------------------------


def load_spec_prompts(n: int) -> list[tuple[str, str]]:
    """n prompts from engine/data/prompts.jsonl, round-robin over the kinds (one of each first)."""
    by_kind: dict[str, list[str]] = {}
    for line in (REPO / "engine" / "data" / "prompts.jsonl").read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            by_kind.setdefault(r["kind"], []).append(r["prompt"])
    picked: list[tuple[str, str]] = []
    for i in range(max(map(len, by_kind.values()), default=0)):
        picked += [(k, ps[i]) for k, ps in by_kind.items() if i < len(ps)]
    return picked[:n]


def self_spec(target, tok, drafts: dict, prompts: list[tuple[str, str]], n: int, blocks: list[int]) -> dict:
    from turbospec.engine.generate import GenConfig, chat_prompt, generate
    from turbospec.engine.spec.draft_model import DraftModelDrafter
    from turbospec.engine.spec.loop import SpecConfig
    from turbospec.engine.spec.ngram import NGramDrafter

    cfg = GenConfig(n_predict=n, ignore_eos=True)
    rows: dict[tuple[str, int], dict] = {("plain", 0): {"tokens": 0, "decode_s": 0.0}}
    for name in ["ngram", *drafts]:
        for b in blocks:
            rows[(name, b)] = {"tokens": 0, "decode_s": 0.0, "rounds": 0, "acc": 0, "dr": 0, "pairs": {},
                               "same": True, "draft_s": 0.0}
    t_all = time.perf_counter()
    for pi, (kind, text) in enumerate(prompts):
        ids = tok.encode(chat_prompt(text), add_bos=True, parse_special=True)
        base = generate(target, tok, ids, cfg)
        rows[("plain", 0)]["tokens"] += len(base.tokens) - 1
        rows[("plain", 0)]["decode_s"] += base.decode_s
        for (name, b), r in rows.items():
            if name == "plain":
                continue
            dr = NGramDrafter() if name == "ngram" else DraftModelDrafter(drafts[name], None, cfg.n_ctx)
            try:
                res = generate(target, tok, ids, cfg, drafter=dr, spec=SpecConfig(block_size=b, pipeline_depth=2))
            finally:
                dr.close()
            s = res.spec
            r["tokens"] += len(res.tokens) - 1
            r["decode_s"] += res.decode_s
            r["rounds"] += s["rounds"]
            r["acc"] += s["n_accepted"]
            r["dr"] += s["n_drafted"]
            r["same"] &= res.tokens == base.tokens
            for k, c in s.get("pair_counts", {}).items():
                r["pairs"][k] = r["pairs"].get(k, 0) + c
        log(f"spec prompt {pi + 1}/{len(prompts)} ({kind}) done, {time.perf_counter() - t_all:.0f} s")
    return rows


# -- report -----------------------------------------------------------------------------------


def fmt(x, spec: str, none: str = "—") -> str:
    return none if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def results_md(variants, micro, mse, spec_rows, args, machine: str, cmd: str, blocks: list[int]) -> str:
    from turbospec.trace import fmt_pct, fmt_tau, per_position

    L = [f"Command: `{cmd}`", "", f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "",
         f"Machine: {machine}. The machine is shared: other jobs ran during the measurement, so "
         "the timings are noisy; compare ratios within a table, not absolute numbers across runs.", ""]
    if variants and "file_mb" in variants[0].row:
        L += ["### Size, quality, speed", "",
              f"PPL on tests/fixtures/ppl_text.txt, {args.chunks} chunks of {args.ctx} "
              f"({variants[0].row.get('n_scored', '?')} scored tokens, llama-perplexity's second-half scoring); "
              "KLD and top-1 agreement against the original file's full distributions. Decode: greedy, "
              f"{args.n} tokens after \"{SPEED_PROMPT}\", mean ± std over {args.reps} interleaved reps after a "
              "warm-up. \"CPU ms / token\": process CPU time (both threads) per decoded token, the load-robust "
              "cost. \"streamed MB/token\": bytes the engine reads per decoded token for the linear weights "
              "+ the LM head, as it holds them (non-TQ: row-scaled int16, 2 B/weight; TQ: in blocks).", "",
              "| model | file MB | converted tensors | bpw converted (orig. bpw of the same) | bpw token_embd | "
              "bpw overall | streamed MB/token (linear + head) | PPL | Δ PPL | mean KLD | top-1 agreement | "
              "greedy prefix = original | decode tok/s | CPU ms / token |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        base_ppl = variants[0].row.get("ppl")
        for v in variants:
            r = v.row
            tps = r.get("tok_s") or []
            sp = (f"{statistics.mean(tps):.2f} ± {statistics.stdev(tps):.2f}" if len(tps) > 1
                  else fmt(tps[0] if tps else None, ".2f"))
            cms = r.get("cpu_ms") or []
            cpu = f"{statistics.mean(cms):.0f} ± {statistics.stdev(cms):.0f}" if len(cms) > 1 else "—"
            conv = (f"{r['bpw_converted']:.2f}" if v.type_name else f"({r['bpw_converted']:.2f})")
            dppl = (f"{100 * (r['ppl'] / base_ppl - 1):+.1f}%" if v.type_name and r.get("ppl") and base_ppl else "—")
            L.append(
                f"| {v.label} | {r['file_mb']:.1f} | {r['n_converted']} ({r['converted_weights'] / 1e6:.1f}M w) | "
                f"{conv} | {r['bpw_embedding']:.2f} ({r['embedding_type']}) | {r['bpw_overall']:.2f} | "
                f"{r['stream_mb_linear'] + r['stream_mb_head']:.0f} ({r['stream_mb_linear']:.0f} + "
                f"{r['stream_mb_head']:.0f}) | {fmt(r.get('ppl'), '.3f')} | {dppl} | {fmt(r.get('kld'), '.4f')} | "
                f"{fmt(100 * r['top1'] if 'top1' in r else None, '.1f')}{'%' if 'top1' in r else ''} | "
                f"{r.get('greedy_prefix', '—')}/{args.n} | {sp} | {cpu} |")
        L.append("")
    if mse:
        L += ["### Relative squared error per tensor (vs the original file's weights)", "",
              "| tensor | shape | source type | TQ4_1S (5.0 bpw) | TQ3_1S (4.0 bpw) | Q4_0 (4.5 bpw) "
              "| Q8_0 (8.5 bpw) |",
              "|---|---|---|---|---|---|---|"]
        for m in mse:
            L.append(f"| {m['tensor']} | {m['shape'][0]} x {m['shape'][1]} | {m['source']} | {m['tq4_all']:.4f} | "
                     f"{m['tq3_all']:.4f} | {m['Q4_0']:.4f} | {m['Q8_0']:.5f} |")
        L.append("")
    if micro:
        L += ["### One linear layer (ms per call, median of 5, random weights)", "",
              "| weight (out x in) | rows T | int16 | TQ4_1S | TQ3_1S | TQ4 / int16 | TQ3 / int16 |",
              "|---|---|---|---|---|---|---|"]
        for m in micro:
            L.append(f"| {m['shape'][0]} x {m['shape'][1]} | {m['T']} | {m['int16']:.2f} | {m['TQ4_1S']:.2f} | "
                     f"{m['TQ3_1S']:.2f} | {m['TQ4_1S'] / m['int16']:.2f}x | {m['TQ3_1S'] / m['int16']:.2f}x |")
        L.append("")
    if spec_rows:
        nb = max(blocks) - 1
        plain = spec_rows[("plain", 0)]
        plain_tps = plain["tokens"] / plain["decode_s"]
        L += ["### Self-speculation (target: the original Q4_K_M)", "",
              f"Greedy, {args.spec_n} tokens per prompt, {len(args.spec_prompt_list)} prompts (one per kind of "
              "engine/data/prompts.jsonl, chat format), pipeline depth 2; sums over prompts. draft acceptance rate = "
              "Σ accepted / Σ drafted; τ = 1 + Σ accepted / rounds; p_i = per-position acceptance; decode tok/s = "
              "emitted tokens after the first / decode seconds; \"same\" = identical tokens to plain greedy.", "",
              "| drafter | B | draft acceptance | τ | " + " | ".join(f"p{i}" for i in range(nb))
              + " | decode tok/s | vs plain | same |",
              "|---|---|---|---|" + "---|" * nb + "---|---|---|",
              "| plain | — | — | 1.00 | " + " | ".join("—" for _ in range(nb)) + f" | {plain_tps:.2f} | 1.00x | — |"]
        for (name, b), r in spec_rows.items():
            if name == "plain":
                continue
            ps, _ = per_position(r["pairs"])
            rate = r["acc"] / r["dr"] if r["dr"] else None
            tau = 1 + r["acc"] / r["rounds"] if r["rounds"] else None
            tps = r["tokens"] / r["decode_s"] if r["decode_s"] else 0.0
            label = "ngram (prompt lookup)" if name == "ngram" else f"draft = {name}"
            L.append(f"| {label} | {b} | {fmt_pct(rate)} | {fmt_tau(tau)} | "
                     + " | ".join(fmt_pct(ps[i]) if i < len(ps) else "—" for i in range(nb))
                     + f" | {tps:.2f} | {tps / plain_tps:.2f}x | {'yes' if r['same'] else 'NO'} |")
        L.append("")
    return "\n".join(L)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default="/tmp/turbospec-tq", help="where the quantized copies go (~250 MB each)")
    ap.add_argument("--requantize", action="store_true", help="quantize again even if the files exist")
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("-n", type=int, default=64, help="decode tokens per speed rep")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--spec-n", type=int, default=48)
    ap.add_argument("--spec-prompts", type=int, default=5)
    ap.add_argument("--blocks", type=int, nargs="+", default=[2, 3, 4, 5, 6])
    ap.add_argument("--drafters", nargs="*", default=["tq3_all", "tq4_all"], help="variants used as the draft model")
    ap.add_argument("--skip", nargs="*", default=[], choices=["quality", "speed", "micro", "spec"])
    ap.add_argument("--variants", nargs="*", default=None, choices=[v.key for v in VARIANTS],
                    help="only these copies (the original is always included), e.g. for a self-speculation rerun "
                    "with --skip quality speed micro")
    ap.add_argument("-o", "--output", default=None, help="also write the markdown here")
    ap.add_argument("--json", default=None, help="also write the raw numbers here")
    args = ap.parse_args(argv)

    from turbospec.engine.backend import set_threads

    threads = set_threads(args.threads)
    from turbospec.engine.loader import default_model_path, load_model, load_tokenizer

    machine = machine_line(threads)
    log(machine)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if workdir.resolve().is_relative_to(REPO):
        raise SystemExit("--workdir must be outside the repository")
    src = default_model_path()
    keep = None if args.variants is None else {"orig", *args.variants, *args.drafters}
    variants = [Variant(**{k: getattr(v, k) for k in ("key", "label", "type_name", "recipe", "embedding")})
                for v in VARIANTS if keep is None or v.key in keep]
    quantize_all(variants, src, workdir, args.requantize)

    # every model loaded once, without the on-disk weight cache (nothing lands in ~/.cache)
    models = {}
    for v in variants:
        t0 = time.perf_counter()
        models[v.key] = load_model(v.path, quiet=True, use_cache=False)
        log(f"loaded {v.label} in {time.perf_counter() - t0:.0f} s")
    tok = load_tokenizer(models["orig"])
    lin_names = {n for n in models["orig"].gguf.tensors if n.startswith("blk.") and "norm" not in n}
    for v in variants:
        v.row.update(size_row(v, models[v.key], lin_names))
    if "quality" not in args.skip:
        saved = workdir / f"quality-c{args.ctx}-x{args.chunks}.json"  # timing-free: reused across runs
        if saved.exists() and not args.requantize:
            got = json.loads(saved.read_text())
            for v in variants:
                v.row.update(got[v.key])
            log(f"quality numbers reused from {saved}")
        else:
            quality(variants, models, tok, workdir, args.ctx, args.chunks)
            keys = ("ppl", "ppl_std", "n_scored", "kld", "kld_p99", "top1", "ppl_ratio")
            saved.write_text(json.dumps({v.key: {k: v.row[k] for k in keys if k in v.row} for v in variants}))
    if "speed" not in args.skip:
        speed(variants, models, tok, args.n, args.reps)
    micro = [] if "micro" in args.skip else matvec_micro()
    mse = tensor_mse(models) if {"tq4_all", "tq3_all"} <= set(models) else []
    spec_rows = {}
    args.spec_prompt_list = load_spec_prompts(args.spec_prompts)
    if "spec" not in args.skip:
        drafts = {k: models[k] for k in args.drafters}
        spec_rows = self_spec(models["orig"], tok, drafts, args.spec_prompt_list, args.spec_n, args.blocks)
    cmd = "python benchmarks/tq_results.py " + " ".join(argv if argv is not None else sys.argv[1:])
    md = results_md(variants, micro, mse, spec_rows, args, machine, cmd.strip(), args.blocks)
    print(md)
    if args.output:
        Path(args.output).write_text(md + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "machine": machine,
            "variants": {v.key: {k: x for k, x in v.row.items() if k != "greedy_tokens"} for v in variants},
            "micro": micro,
            "tensor_mse": mse,
            "spec": {f"{k[0]}:{k[1]}": {a: b for a, b in r.items() if a != "pairs"} | {
                "pairs": {f"{p[0]},{p[1]}": c for p, c in r.get("pairs", {}).items()}} for k, r in spec_rows.items()},
        }, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
