"""`turbospec run`, `ppl` and `cache`: the engine's everyday commands."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from turbospec.errors import UserError

# -- shared options ------------------------------------------------------------------------------


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and engine")
    g.add_argument("-m", "--model", default=None, help="GGUF model path (default: the embedded Gemma 3 270M)")
    g.add_argument("--backend", default="auto", choices=["auto", "numpy", "cupy"], help="array backend (default auto)")
    g.add_argument("-t", "--threads", type=int, default=0, help="BLAS / worker threads (default: all cores)")
    g.add_argument(
        "--weights",
        default="auto",
        choices=["auto", "f32", "i16"],
        help="how linear weights are held in memory: auto (default: the file's Q8_0/Q5_0/Q4_0/Q4_K/Q6_K "
        "blocks as int8, exact; other large matrices row-scaled int16), i16 (row-scaled int16 everywhere), "
        "f32 (exact, 4 bytes a weight)",
    )
    add_cache_args(p)


def add_cache_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("KV cache")
    g.add_argument(
        "-ctk", "--cache-type-k", default="f16", help="K cache type: f16 q8_0 q4_0 turbo4 turbo4lm turbo3 turbo2"
    )
    g.add_argument("-ctv", "--cache-type-v", default="f16", help="V cache type (may differ from K)")
    g.add_argument(
        "--kv-equalize",
        nargs="?",
        type=float,
        const=0.5,
        default=0.0,
        metavar="STRENGTH",
        help="K channel equalization (the fork's InnerQ) before quantizing K; default strength 0.5",
    )
    from turbospec.engine.kv.recipes import add_kv_recipe_args

    add_kv_recipe_args(p)


def kv_config(args):
    from turbospec.engine.kv.cache import KVConfig, cache_type_names, get_codec

    names = cache_type_names()
    for t in (args.cache_type_k, args.cache_type_v):
        if t not in names:
            raise UserError(f"unknown cache type {t!r}; choose one of {', '.join(names)}")
        get_codec(t)
    from turbospec.engine.kv.recipes import apply_recipe_args

    kv = KVConfig(type_k=args.cache_type_k, type_v=args.cache_type_v, equalize=args.kv_equalize or 0.0)
    return apply_recipe_args(args, kv)


def setup_engine(args, quiet: bool = False):
    """Threads, backend, model; returns (model, tokenizer, backend choice)."""
    from turbospec.engine.backend import choose_backend, set_threads

    args.threads = set_threads(args.threads)
    choice = choose_backend(args.backend, quiet=quiet or args.backend == "numpy")
    from turbospec.engine.loader import load_model, load_tokenizer

    if choice.name == "cupy":
        from turbospec.engine.cuda_model import load_device_model

        model = load_device_model(args.model, "cupy")  # TURBOSPEC_CUDA_GRAPH=0 turns CUDA graphs off
    else:
        model = load_model(args.model, storage=args.weights)
    tok = load_tokenizer(model)
    return model, tok, choice


def read_prompt(args) -> str:
    if getattr(args, "file", None):
        p = Path(args.file)
        if not p.exists():
            raise UserError(f"prompt file not found: {p}; pass an existing file with -f")
        return p.read_text(encoding="utf-8", errors="replace")
    if args.prompt is None:
        raise UserError("no prompt: pass text with -p PROMPT or a file with -f FILE")
    return args.prompt


# -- run -----------------------------------------------------------------------------------------


def add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-p", "--prompt", default=None, help="prompt text")
    p.add_argument("-f", "--file", default=None, help="read the prompt from a file")
    p.add_argument("-n", "--n-predict", type=int, default=128, help="tokens to generate (default 128)")
    p.add_argument("-c", "--ctx-size", type=int, default=4096, help="context size in tokens (default 4096)")
    p.add_argument("--chat", action="store_true",
                   help="wrap the prompt in Gemma's chat turn format (for instruction-tuned models; the default "
                   "Gemma 3 270M is the pretrained base model, which continues text)")
    p.add_argument("--temp", type=float, default=0.0, help="temperature; 0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--min-p", type=float, default=0.05)
    p.add_argument("--repeat-penalty", type=float, default=1.0)
    p.add_argument("--repeat-last-n", type=int, default=64)
    p.add_argument("--seed", type=int, default=-1, help="RNG seed (default: random)")
    p.add_argument("--ignore-eos", action="store_true", help="do not stop at end-of-sequence tokens")
    p.add_argument("--json", action="store_true", help="human output to stderr; last stdout line is one JSON object")
    p.add_argument(
        "--trace",
        default=None,
        metavar="PATH",
        help="write an NDJSON trace (like LLAMA_MTP_ACC_TRACE: '1' = stderr, else a path appended to)",
    )
    p.add_argument("--tui", action="store_true",
                   help="show the live dashboard for this run (the engine runs in a child process writing the trace)")
    add_spec_args(p)


def add_spec_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("speculative decoding")
    g.add_argument(
        "--spec",
        default="none",
        choices=["none", "mtp", "ngram", "draft"],
        help="drafter: none (plain decoding), mtp (the assistant head), ngram (prompt lookup), "
        "draft (a small model, --model-draft)",
    )
    g.add_argument("--draft-block-size", type=int, default=3, metavar="B",
                   help="tokens per verify batch: a round drafts min(B-1, --draft-max) tokens (2..32, default 3)")
    g.add_argument("--draft-max", type=int, default=16, help="at most this many drafts per round (default 16)")
    g.add_argument("--draft-p-min", type=float, default=0.0, metavar="P",
                   help="mtp / draft: end a round's drafts at the first one whose probability is below P "
                   "(as llama.cpp's --draft-p-min; 0 = always draft min(B-1, --draft-max), the fork's rule; default 0)")
    g.add_argument("--pipeline-depth", type=int, default=None, choices=[1, 2],
                   help="2 = draft the next round on a worker thread right after accept (default; "
                   "LLAMA_PIPELINE_DEPTH2=0 selects 1)")
    g.add_argument("--mtp-head", default=None, metavar="PATH", help="MTP assistant GGUF for --spec mtp")
    g.add_argument("--model-draft", default=None, metavar="PATH", help="draft model GGUF for --spec draft")
    g.add_argument("--ngram-max", type=int, default=3, metavar="N",
                   help="prompt lookup: longest suffix n-gram to match (default 3; tried down to 1)")
    g.add_argument("--draft-lookup", type=int, default=0, metavar="N",
                   help="mtp: try prompt lookup first: when the last N or more tokens occurred earlier, draft "
                   "what followed them (no assistant step), else the assistant drafts (0 = off, default)")
    g.add_argument("--lookup-adapt", action="store_true",
                   help="prompt lookup (--spec ngram, or --draft-lookup): a round that lost a draft caps the next "
                   "lookup rounds at what it got right + 1; each fully accepted one doubles the cap, back to "
                   "min(B-1, --draft-max): large B for the text's loops without paying for misses on fresh text")
    g.add_argument("--mtp-draft-max", type=int, default=0, metavar="M",
                   help="with --draft-lookup: the assistant's rounds draft at most M tokens, lookup's up to "
                   "min(B-1, --draft-max) (0 = no separate cap, default; 1 suits the shipped assistant)")


def make_drafter(args, model, tok, kv, n_ctx: int):
    """The drafter chosen by --spec (None for plain decoding) and its SpecConfig."""
    from turbospec.engine.spec.loop import SpecConfig, pipeline_depth_default, skip_streak_from_env

    name = getattr(args, "spec", "none") or "none"
    if name == "none":
        return None, None
    spec = SpecConfig(
        block_size=args.draft_block_size,
        draft_max=args.draft_max,
        pipeline_depth=pipeline_depth_default(args.pipeline_depth),
        skip_streak=skip_streak_from_env(),
    )
    spec.validate()
    p_min = getattr(args, "draft_p_min", 0.0) or 0.0
    if not 0.0 <= p_min < 1.0:
        raise UserError(f"--draft-p-min {p_min} is out of range; choose 0 <= P < 1 (0 = off)")
    if p_min and name == "ngram":
        raise UserError("--draft-p-min needs drafts with probabilities (--spec mtp or draft); prompt lookup has none")
    lookup = getattr(args, "draft_lookup", 0) or 0
    if lookup and name != "mtp":
        raise UserError(f"--draft-lookup {lookup} combines prompt lookup with the assistant: use it with --spec mtp "
                        "(--spec ngram is prompt lookup alone)")
    if lookup < 0:
        raise UserError(f"--draft-lookup {lookup} is negative; pass N >= 1 (the match length), or 0 = off")
    mtp_max = getattr(args, "mtp_draft_max", 0) or 0
    if mtp_max and not lookup:
        raise UserError(f"--mtp-draft-max {mtp_max} caps the assistant's rounds beside prompt lookup's: add "
                        "--draft-lookup N (alone, --draft-max caps every round)")
    if mtp_max < 0:
        raise UserError(f"--mtp-draft-max {mtp_max} is negative; pass M >= 1, or 0 = no separate cap")
    adapt = bool(getattr(args, "lookup_adapt", False))
    if adapt and name != "ngram" and not lookup:
        raise UserError("--lookup-adapt caps prompt lookup's rounds: use it with --spec ngram or with --draft-lookup N")
    drafter = _make_drafter(name, args, model, tok, kv, n_ctx)
    if lookup:
        from turbospec.engine.spec.ngram import LookupFirst

        drafter = LookupFirst(drafter, n_min=lookup, n_max=max(args.ngram_max, lookup), inner_max=mtp_max,
                              adapt=adapt)
    drafter.p_min = p_min
    return drafter, spec


def _make_drafter(name: str, args, model, tok, kv, n_ctx: int):
    if name == "ngram":
        from turbospec.engine.spec.ngram import NGramDrafter

        if args.ngram_max < 1:
            raise UserError(f"--ngram-max {args.ngram_max} must be 1 or more")
        return NGramDrafter(n_max=args.ngram_max, adapt=bool(getattr(args, "lookup_adapt", False)))
    if name == "draft":
        if not args.model_draft:
            raise UserError("--spec draft needs --model-draft PATH (a small GGUF with the target's vocabulary)")
        from turbospec.engine.spec.draft_model import DraftModelDrafter

        return DraftModelDrafter.load(args.model_draft, tok.tokens, storage=args.weights, kv=kv, n_ctx=n_ctx)
    try:
        # the NumPy MTPDrafter, or on the device model (--backend cupy) the kernels on their own stream;
        # importing the assistant's module first names it when a build lacks it
        from turbospec.engine.spec.mtp import MTPDrafter  # noqa: F401
        from turbospec.engine.spec.mtp_device import load_mtp_drafter
    except ModuleNotFoundError as e:
        if e.name not in ("turbospec.engine.spec.mtp", "engine.spec.mtp", "turbospec.engine.spec.mtp_device"):
            raise
        raise UserError(
            "--spec mtp is not available in this build (turbospec.engine.spec.mtp is missing); "
            "use --spec ngram or --spec draft"
        ) from None
    return load_mtp_drafter(args.mtp_head, model, tok)


def _argv_without(argv: list[str], flags: set[str], with_value: set[str]) -> list[str]:
    """The run's own arguments (after `run`), minus the given flags (and the values of ``with_value``)."""
    rest = argv[argv.index("run") + 1 :] if "run" in argv else list(argv)
    out, skip = [], False
    for a in rest:
        if skip:
            skip = False
            continue
        if a in flags or a.split("=", 1)[0] in with_value:
            skip = a in with_value
            continue
        out.append(a)
    return out


def cmd_run(args) -> int:
    from turbospec.engine.generate import GenConfig, chat_prompt, generate
    from turbospec.engine.sampling import SamplingConfig

    if args.n_predict < 0:
        raise UserError(f"-n {args.n_predict} is negative; pass the number of tokens to generate")
    if getattr(args, "tui", False):
        from turbospec.engine.cmd_live import run_tui

        return run_tui(_argv_without(getattr(args, "_argv", None) or sys.argv[1:], {"--tui", "--json"}, {"--trace"}),
                       args.trace)
    text = read_prompt(args)
    human = sys.stderr if args.json else sys.stdout
    model, tok, choice = setup_engine(args)
    kv = kv_config(args)
    if args.chat:
        text = chat_prompt(text)
    ids = tok.encode(text, add_bos=True, parse_special=True)
    cfg = GenConfig(
        n_predict=args.n_predict,
        sampling=SamplingConfig(
            temp=args.temp,
            top_k=args.top_k,
            top_p=args.top_p,
            min_p=args.min_p,
            repeat_penalty=args.repeat_penalty,
            repeat_last_n=args.repeat_last_n,
            seed=args.seed,
        ),
        kv=kv,
        n_ctx=args.ctx_size,
        ignore_eos=args.ignore_eos,
    )
    drafter, spec = make_drafter(args, model, tok, kv, args.ctx_size)
    if spec is not None:
        args.pipeline_depth = spec.pipeline_depth
    trace = open_trace(args, model, choice, cfg)
    detok = tok.detokenizer()
    is_tty = human.isatty()
    if is_tty and not args.json:
        from rich.console import Console

        Console(file=human).print(
            f"[dim]{model.gguf.path.name} · {choice.name} · {args.threads} threads · "
            f"K {kv.type_k} / V {kv.type_v} · {len(ids)} prompt tokens[/dim]"
        )
    pieces: list[str] = []

    def on_token(t: int) -> None:
        s = detok.push(t)
        pieces.append(s)
        if s and (is_tty or not args.json):
            human.write(s)
            human.flush()

    status = "ok"
    try:
        res = generate(model, tok, ids, cfg, on_token=on_token, trace=trace, drafter=drafter, spec=spec)
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except BaseException:
        status = "error"
        raise
    finally:
        if drafter is not None:
            drafter.close()
        if trace is not None and status != "ok":
            trace.run_end(status=status)
            trace.close()
    tail = detok.flush()
    pieces.append(tail)
    human.write(tail + "\n")
    human.flush()
    out_text = "".join(pieces)
    summary = {
        "tokens": res.tokens,
        "text": out_text,
        "n_prompt": res.n_prompt,
        "n_gen": len(res.tokens),
        "prefill_tok_s": round(res.prefill_tok_s, 3),
        "decode_tok_s": round(res.decode_tok_s, 3),
        "prefill_s": round(res.prefill_s, 4),
        "decode_s": round(res.decode_s, 4),
        "stop_reason": res.stop_reason,
        "kv_bytes": res.kv_bytes,
        "type_k": kv.type_k,
        "type_v": kv.type_v,
        "backend": choice.name,
        "cpu_kernels": _cpu_kernels() if choice.name == "numpy" else None,
        "n_threads": args.threads,
        "model": str(model.gguf.path),
        "spec": getattr(args, "spec", "none") or "none",
        "draft_acceptance_rate": None,
        "tau": None,
        "per_position": None,
    }
    if res.spec:
        summary.update(
            draft_acceptance_rate=res.spec["draft_acceptance_rate"],
            tau=res.spec["tau"],
            per_position=res.spec["per_position"],
            draft_block_size=res.spec["block_size"],
            draft_max=res.spec["draft_max"],
            draft_p_min=getattr(args, "draft_p_min", 0.0) or 0.0,
            pipeline_depth=res.spec["pipeline_depth"],
            rounds=res.spec["rounds"],
            n_drafted=res.spec["n_drafted"],
            n_accepted=res.spec["n_accepted"],
            skip_rounds=res.spec["skip_rounds"],
            lazy_rounds=res.spec["lazy_rounds"],
        )
    if trace is not None:
        trace.run_end(
            status="ok" if res.stop_reason != "interrupted" else "interrupted",
            n_prompt=res.n_prompt,
            n_gen=len(res.tokens),
            prefill_tok_s=summary["prefill_tok_s"],
            decode_tok_s=summary["decode_tok_s"],
            kv_bytes=res.kv_bytes,
            draft_acceptance_rate=summary["draft_acceptance_rate"],
            tau=summary["tau"],
        )
        trace.close()
    print_summary(summary, human, is_tty)
    if args.json:
        sys.stdout.write(json.dumps(summary) + "\n")
        sys.stdout.flush()
    return 130 if res.stop_reason == "interrupted" else 0


def open_trace(args, model, choice, cfg):
    from turbospec import __version__
    from turbospec.trace import TraceWriter, trace_target_from_env

    target = trace_target_from_env(getattr(args, "trace", None))
    if not target:
        return None
    w = TraceWriter.open(target)
    from turbospec.engine.weights import file_sha256

    spec_name = getattr(args, "spec", "none") or "none"
    w.run_start(
        schema="turbospec.trace/1",
        model=str(model.gguf.path.name),
        model_sha256=file_sha256(model.gguf.path),
        backend=choice.name,
        device=choice.device,
        type_k=cfg.kv.type_k,
        type_v=cfg.kv.type_v,
        spec=spec_name,
        draft_block_size=getattr(args, "draft_block_size", None) if spec_name != "none" else None,
        draft_max=getattr(args, "draft_max", None) if spec_name != "none" else None,
        pipeline_depth=getattr(args, "pipeline_depth", None) if spec_name != "none" else None,
        n_ctx=cfg.n_ctx,
        n_threads=args.threads,
        temp=cfg.sampling.temp,
        seed=cfg.sampling.seed,
        version=__version__,
    )
    return w


def print_summary(s: dict, out, is_tty: bool) -> None:
    line = (
        f"prompt {s['n_prompt']} tok · prefill {s['prefill_tok_s']:.1f} tok/s · "
        f"generated {s['n_gen']} tok · decode {s['decode_tok_s']:.1f} tok/s · "
        f"KV {s['kv_bytes'] / 1024:.1f} KiB ({s['type_k']}/{s['type_v']}) · stop: {s['stop_reason']}"
    )
    lines = [line]
    if s.get("spec", "none") != "none":
        lines.append(spec_summary_line(s))
    if is_tty:
        from rich.console import Console

        for ln in lines:
            Console(file=out).print(ln, style="bold cyan", markup=False, highlight=False)
    else:
        out.write("\n".join(lines) + "\n")
        out.flush()


def spec_summary_line(s: dict) -> str:
    """'spec ngram B=3 · draft acceptance rate 83.2% · τ 2.47 · p_i 90.0% 76.3% · decode 41.2 tok/s'."""
    from turbospec.trace import fmt_pct, fmt_tau

    pp = " ".join(fmt_pct(p) for p in (s.get("per_position") or [])) or "—"
    return (
        f"spec {s['spec']} B={s.get('draft_block_size')}"
        + (f" p-min {s['draft_p_min']:g}" if s.get("draft_p_min") else "")
        + f" depth {s.get('pipeline_depth')} · "
        f"draft acceptance rate {fmt_pct(s.get('draft_acceptance_rate'))} · τ {fmt_tau(s.get('tau'))} · "
        f"per-position acceptance {pp} · decode {s['decode_tok_s']:.1f} tok/s · "
        f"{s.get('rounds', 0)} rounds, {s.get('skip_rounds', 0)} skipped"
    )


# -- ppl -----------------------------------------------------------------------------------------


def cmd_ppl(args) -> int:
    from turbospec.engine.perplexity import perplexity

    p = Path(args.file)
    if not p.exists():
        raise UserError(f"text file not found: {p}; pass an existing file with -f")
    text = p.read_text(encoding="utf-8", errors="replace")
    human = sys.stderr if args.json else sys.stdout
    model, tok, choice = setup_engine(args, quiet=args.json)
    kv = kv_config(args)
    ids = tok.encode(text, add_bos=True, parse_special=False)
    if args.kl_divergence and not args.kl_divergence_base:
        raise UserError("--kl-divergence needs --kl-divergence-base FILE (made by an earlier run)")
    print(
        f"perplexity: {len(ids)} tokens, ctx {args.ctx}, K {kv.type_k} / V {kv.type_v}, "
        f"scoring the second half of each chunk (as llama-perplexity)",
        file=human,
        flush=True,
    )

    def progress(c: int, n: int, ppl: float) -> None:
        print(f"[{c}/{n}] ppl so far {ppl:.4f}", file=human, flush=True)

    res = perplexity(
        model,
        ids,
        bos_id=tok.bos_id,
        ctx=args.ctx,
        chunks=args.chunks,
        kv=kv,
        kl_base=args.kl_divergence_base,
        kl_compare=args.kl_divergence,
        progress=progress,
    )
    line = f"Final estimate: PPL = {res.ppl:.4f} +/- {res.ppl_std:.5f} ({res.n_tokens} tokens, {res.n_chunks} chunks)"
    print(line, file=human)
    if res.kld:
        k = res.kld
        print(
            f"KLD mean {k['kld_mean']:.6f} · same top p {100 * k['top1_agreement']:.1f}% · "
            f"PPL ratio {k['ppl_ratio']:.4f} · Δp median {100 * k['delta_p_percentiles'].get('p50', 0):.2f}%",
            file=human,
        )
    if args.json:
        d = res.to_json()
        d.update(
            model=str(model.gguf.path),
            type_k=kv.type_k,
            type_v=kv.type_v,
            kv_equalize=kv.equalize,
            backend=choice.name,
            n_threads=args.threads,
            file=str(p),
        )
        print(json.dumps(d))
    return 0


# -- cache ------------------------------------------------------------------------------------


def build_run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="turbospec run")
    add_run_args(p)
    add_model_args(p)
    return p


def cmd_cache(args) -> int:
    from turbospec.paths import cache_dir

    d = cache_dir()
    if args.action == "clear":
        from turbospec.engine.weights import clear_cache

        d, freed = clear_cache()
        print(f"cleared {d} ({freed / 1e6:.1f} MB)")
        return 0
    total = sum(f.stat().st_size for f in d.rglob("*") if f.is_file()) if d.exists() else 0
    print(f"weight cache: {d} ({total / 1e6:.1f} MB); move it with TURBOSPEC_CACHE_DIR")
    if d.exists():
        for sub in sorted(p for p in d.iterdir() if p.is_dir()):
            size = sum(f.stat().st_size for f in sub.rglob("*") if f.is_file())
            print(f"  {sub.name}  {size / 1e6:.1f} MB")
    return 0


def register(sub) -> None:
    p = sub.add_parser("run", help="generate text from a prompt (streams; --json for scripts)")
    add_run_args(p)
    add_model_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "ppl",
        help="perplexity as llama-perplexity computes it (chunks of -c tokens from BOS; "
        "scores each chunk's second half)",
        description="Perplexity as llama-perplexity computes it: the text is cut into chunks of -c tokens, each "
        "evaluated from an empty cache starting with BOS, and only the second half of each chunk is scored. "
        "--kl-divergence-base FILE alone saves the full distributions (0.5 MB per scored token for a 262144 "
        "vocabulary); with --kl-divergence it compares this run against them.",
    )
    p.add_argument("-f", "--file", required=True, help="text file to score")
    p.add_argument("-c", "--ctx", type=int, default=512, help="chunk size in tokens (default 512)")
    p.add_argument("--chunks", type=int, default=None, help="score at most this many chunks")
    p.add_argument(
        "--kl-divergence-base", default=None, metavar="FILE", help="save (or, with --kl-divergence, read) the base"
    )
    p.add_argument("--kl-divergence", action="store_true", help="compare against --kl-divergence-base")
    p.add_argument("--json", action="store_true", help="last stdout line is one JSON object")
    add_model_args(p)
    p.set_defaults(func=cmd_ppl)

    p = sub.add_parser("cache", help="show or clear the weight cache (TURBOSPEC_CACHE_DIR moves it)")
    p.add_argument("action", nargs="?", default="info", choices=["info", "clear"])
    p.set_defaults(func=cmd_cache)


def _cpu_kernels() -> str:
    """Which products the NumPy engine ran on: "native avx512" (engine/native) or "numpy (why)"."""
    from turbospec.engine import native

    return native.status().describe()
