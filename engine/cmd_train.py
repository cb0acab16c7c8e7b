"""``turbospec train-assistant``: build an MTP assistant for a target by distillation.

Needs the optional ``train`` extra (``torch==2.13.0``, CPU build); PyTorch is imported inside
the command only. Work (data shards, clusters, checkpoints) lives in ``--work`` so a job can
span several sittings: rerun the same command with ``--resume``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from turbospec.errors import UserError


def register(sub) -> None:
    p = sub.add_parser(
        "train-assistant",
        help="train an MTP assistant (--spec mtp) for a model by distillation (needs torch)",
        description="The target writes its own text from a prompt set (greedy and sampled); the assistant "
        "learns its next tokens from its hidden states and KV. Checkpoints in --work; --resume continues.",
    )
    p.add_argument("--out", required=True, metavar="PATH", help="assistant GGUF to write (gemma4_assistant)")
    p.add_argument("-m", "--model", default=None, metavar="PATH", help="target GGUF (default: the embedded model)")
    p.add_argument("--tokens", type=int, default=200_000, help="generated target tokens to collect (default 200000)")
    p.add_argument("--work", default=None, metavar="DIR",
                   help="work folder for shards, clusters, checkpoints (default: <cache>/assistant-work/<model>)")
    p.add_argument("--resume", action="store_true", help="continue the work already in --work")
    p.add_argument("--phase", choices=["all", "data", "train"], default="all",
                   help="data = generate only; train = train and write from the data already there")
    p.add_argument("--prompts", default=None, metavar="FILE", help="prompt file (KIND<TAB>TEXT per line)")
    p.add_argument("--free", type=int, default=0, metavar="N",
                   help="also N free-running jobs: BOS, 32 tokens sampled at temperature 1.0, then greedy or "
                   "sampled; generated before the remaining prompt jobs (default 0)")
    p.add_argument("--batch", type=int, default=16, help="sequences generated together (default 16)")
    p.add_argument("--max-new", type=int, default=320, help="generated tokens per sequence at most (default 320)")
    p.add_argument("--layers", type=int, default=4, help="assistant layers (default 4; the last is global)")
    p.add_argument("--n-ff", type=int, default=1024, help="assistant FFN width (default 1024)")
    p.add_argument("--heads", type=int, default=4, help="assistant query heads (default 4)")
    p.add_argument("--draft-steps", type=int, default=3, help="draft steps unrolled in training (default 3)")
    p.add_argument("--top-k-clusters", type=int, default=32, help="centroid_top_k written to the file (default 32)")
    p.add_argument("--epochs", type=float, default=2.0, help="passes over the data (default 2)")
    p.add_argument("--steps", type=int, default=0, help="optimizer steps (overrides --epochs)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    p.add_argument("--soft-weight", type=float, default=0.0, metavar="W",
                   help="add W x the cross-entropy against the target's top-8 distribution to the argmax loss "
                        "(default 0: argmax labels only)")
    p.add_argument("--batch-seqs", type=int, default=4, help="sequences per training step (default 4)")
    p.add_argument("--type", dest="qtype", choices=["f32", "f16", "q8_0"], default="q8_0",
                   help="weight type of the written matrices (default q8_0)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a shared, loaded machine 2 OpenMP threads ran 9x slower; "
                   "raise it on an idle one)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the generation jobs and the training (default 0); data with another seed in the "
                   "same --work adds new jobs beside the old ones")
    p.add_argument("--init", default=None, metavar="GGUF",
                   help="start training from this assistant (its weights, centroids and token_ordering) instead "
                   "of a fresh one, e.g. to fine-tune the shipped assistant on more data")
    p.add_argument("--grow", action="store_true",
                   help="--init may have fewer layers or a narrower FFN than --layers/--n-ff: the new FFN units and "
                   "layers start as exact no-ops, so training starts from the file's accuracy with more capacity")
    p.add_argument("--train-cache", default="", metavar="K/V",
                   help="also train on the source layers' K/V as a cache of these types hands them back (e.g. "
                   "q8_0/turbo3: encoded, decoded, unrotated), for the share --train-cache-p of the sequences; "
                   "default: f16 K/V only")
    p.add_argument("--train-cache-p", type=float, default=0.5, metavar="P",
                   help="share of the sequences, drawn per batch, that see --train-cache's K/V (default 0.5)")
    p.add_argument("--init-tokens", type=int, default=None, metavar="N",
                   help="target tokens behind --init that --work does not hold, for an --init file that does not "
                   "record its shards (older files); default: all it records. Files written now record their "
                   "shards and are counted exactly")
    p.set_defaults(func=cmd_train_assistant)


def _train_counts(path: str) -> tuple[int, int, list[str] | None]:
    """(target tokens, steps, shard ids or None) recorded in an assistant GGUF by train-assistant;
    (0, 0, None) if absent."""
    from turbospec.engine.models.gemma4_assistant import read_train_record

    return read_train_record(path)


def _data_behind(prior: tuple[int, int, list[str] | None], new_ids: list[str], init_tokens: int | None,
                 log) -> tuple[int, list[str]]:
    """(distinct target tokens, shard ids) behind a fine-tune: the --init file's data and this run's,
    each shard counted once. Tokens the --init file records beyond its shard ids (data from before
    files recorded them) count once, as --init-tokens says or, without it, in full."""
    from turbospec.engine.models.gemma4_assistant import count_shard_tokens

    tokens, _, ids = prior
    ids = ids or []
    legacy = max(0, tokens - count_shard_tokens(ids))
    if init_tokens is not None:
        legacy = init_tokens
    elif legacy and not ids:
        log(f"train: the --init file records {tokens} target tokens but not its shards; counting them all as "
            "data --work does not hold (pass --init-tokens N if it does)")
    union = sorted(set(ids) | set(new_ids))
    return legacy + count_shard_tokens(union), union


def cmd_train_assistant(args) -> int:
    try:
        import torch
    except ImportError:
        raise UserError(
            "train-assistant needs PyTorch: pip install 'turbospec[train]' (torch==2.13.0, the CPU build)"
        ) from None
    from turbospec.engine import assistant_train as at
    from turbospec.engine.loader import default_model_path, load_model, load_tokenizer
    from turbospec.engine.weights import file_sha256
    from turbospec.paths import cache_dir

    if args.threads < 1:
        raise UserError(f"--threads {args.threads} must be 1 or more")
    torch.set_num_threads(args.threads)
    if not 0.0 <= args.soft_weight <= 100.0:
        raise UserError(f"--soft-weight {args.soft_weight} must be between 0 and 100")
    for name in ("tokens", "batch", "max_new", "layers", "n_ff", "heads", "draft_steps", "batch_seqs"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} {getattr(args, name)} must be 1 or more")
    model_path = Path(args.model) if args.model else default_model_path()
    target = load_model(model_path, quiet=True)
    tok = load_tokenizer(target)
    work = Path(args.work) if args.work else cache_dir() / "assistant-work" / file_sha256(model_path)[:16]
    has_work = (work / at.MANIFEST).exists() or (work / at.CKPT).exists()
    if has_work and not args.resume and args.phase == "all":
        raise UserError(f"{work} already holds training work; pass --resume to continue it, or another --work")
    if args.train_cache:
        from turbospec.engine.kv.cache import cache_type_names

        pair = args.train_cache.split("/")
        bad = [t for t in pair if t not in cache_type_names()]
        if len(pair) != 2 or bad:
            raise UserError(f"--train-cache {args.train_cache!r} must be K/V with types from "
                            f"{', '.join(cache_type_names())} (e.g. q8_0/turbo3)")
    if not 0.0 < args.train_cache_p <= 1.0:
        raise UserError(f"--train-cache-p {args.train_cache_p} must be in (0, 1]")
    if args.init_tokens is not None and (args.init_tokens < 0 or not args.init):
        raise UserError(f"--init-tokens {args.init_tokens} needs --init and must be 0 or more")
    if args.grow and not args.init:
        raise UserError("--grow needs --init (the assistant to widen or deepen); pass --init HEAD.gguf")
    if args.init and not Path(args.init).is_file():
        raise UserError(f"--init {args.init}: no such file; pass an assistant GGUF (e.g. the shipped one)")
    out = Path(args.out)
    if out.parent and not out.parent.exists():
        raise UserError(f"folder {out.parent} does not exist; create it or choose another --out")

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    prompts = at.load_prompts(args.prompts)
    dc = at.DataConfig(tokens=args.tokens, batch=args.batch, max_new=args.max_new, seed=args.seed, free=args.free)
    t0 = time.perf_counter()
    if args.phase in ("all", "data"):
        man = at.generate_data(model_path, tok, work, dc, prompts, log=log)
        log(f"data: {man['n_tokens']} target tokens in {len(man['shards'])} shards under {work}")
        if man["n_tokens"] < dc.tokens:
            log(f"data: the prompt set's jobs ran out at {man['n_tokens']} tokens")
        if args.phase == "data":
            return 0
    tc = at.TrainConfig(n_layer=args.layers, n_ff=args.n_ff, n_head=args.heads, draft_steps=args.draft_steps,
                        top_k_clusters=args.top_k_clusters, epochs=args.epochs, max_steps=args.steps, lr=args.lr,
                        batch_seqs=args.batch_seqs, w_soft=args.soft_weight, qtype=args.qtype, seed=args.seed,
                        init=args.init or "", grow=args.grow, kv_cache=args.train_cache, kv_cache_p=args.train_cache_p)
    model, order, summary = at.train(model_path, work, tc, resume=args.resume or args.phase == "train", log=log)
    # a fine-tune (--init) counts the data and steps behind the assistant it started from as well,
    # each shard once
    prior = _train_counts(args.init) if args.init else (0, 0, None)
    n_data, shards = _data_behind(prior, summary["shards"], args.init_tokens, log)
    at.write_gguf(model, order, out, tok.tokens, args.qtype, extra={
        "general.name": f"MTP assistant for {model_path.name}",
        "general.source.description": "distilled from the target model (a Gemma model)",
        "turbospec.train.target_tokens": n_data,
        "turbospec.train.steps": prior[1] + int(summary["steps"]),
        "turbospec.train.shards": shards,
    })
    log(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): {summary['n_tokens']} target tokens, "
        f"{summary['steps']} steps, {time.perf_counter() - t0:.0f} s; behind the file {n_data} distinct target "
        f"tokens, {prior[1] + int(summary['steps'])} steps")
    # the file must load and validate against the target it was built for
    from turbospec.engine.models.gemma4_assistant import Gemma4Assistant

    Gemma4Assistant.load(out).validate(target, tok.tokens)
    return 0
