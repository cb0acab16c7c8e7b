"""`turbospec sweep`: grids of cache types × draft block sizes × ..., in llama-bench's manner.

Every list option takes comma lists and ranges (``a-b``, ``a-b+s``); the Cartesian product runs
cell by cell, ``-r`` repetitions each. Each repetition appends one row (turbospec.results
schema) to ``--results`` the moment it finishes — one atomic line, so Ctrl-C or a crash never
loses a finished row — with its NDJSON trace under ``--trace-dir``. ``--resume`` skips the
repetitions already in the results file; a cell that fails is recorded as ``failed`` with its
one-line error and the sweep goes on.

Prompts: ``-p N`` (llama-bench's prompt length in tokens) takes the first N tokens of the
shipped prompt set's text (real text rather than llama-bench's random tokens, since drafters
need text to be meaningful); ``--prompts FILE`` (one prompt per line, or JSONL with ``prompt``
and ``kind``) makes every prompt its own cell instead, so reports can break results down by
prompt kind. The default set (chat, code, lists, translation, prose) ships as package data.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from turbospec.errors import UserError

DEFAULT_RESULTS = Path("turbospec-results") / "results.jsonl"


def parse_list(spec: str, kind=int, name: str = "option") -> list:
    """'1,2,4-8+2' -> [1, 2, 4, 6, 8]; strings are split on commas only."""
    out = []
    for part in str(spec).split(","):
        part = part.strip()
        if not part:
            continue
        if kind is int and "-" in part[1:]:
            step = 1
            if "+" in part:
                part, s = part.split("+", 1)
                step = _int(s, name)
            a, b = part.split("-", 1) if not part.startswith("-") else ("-" + part[1:].split("-", 1)[0],
                                                                         part[1:].split("-", 1)[1])
            a, b = _int(a, name), _int(b, name)
            if step <= 0 or b < a:
                raise UserError(f"{name}: bad range {spec!r}; write a-b or a-b+s with a <= b and s > 0")
            out.extend(range(a, b + 1, step))
        elif kind is int:
            out.append(_int(part, name))
        else:
            out.append(part)
    if not out:
        raise UserError(f"{name}: empty list {spec!r}; give at least one value")
    return list(dict.fromkeys(out))


def _int(s: str, name: str) -> int:
    try:
        return int(s)
    except ValueError:
        raise UserError(f"{name}: {s!r} is not a whole number") from None


@dataclass
class Prompt:
    text: str
    kind: str
    index: int | None


def load_prompts(path: str | None) -> list[Prompt]:
    if path is None:
        from importlib.resources import files

        raw = files("turbospec.engine.data").joinpath("prompts.jsonl").read_text(encoding="utf-8")
        src = "the default prompt set"
    else:
        p = Path(path)
        if not p.exists():
            raise UserError(f"prompt file not found: {p}; pass a text file (one prompt per line) or JSONL")
        raw = p.read_text(encoding="utf-8", errors="replace")
        src = str(p)
    out: list[Prompt] = []
    for i, line in enumerate(raw.splitlines()):
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                obj = json.loads(line)
                text, kind = str(obj["prompt"]), str(obj.get("kind", "prompt"))
            except (ValueError, KeyError, TypeError):
                raise UserError(
                    f"{src}:{i + 1}: not a JSON object with a 'prompt' field; fix or remove the line"
                ) from None
        else:
            text, kind = line, "prompt"
        out.append(Prompt(text, kind, len(out)))
    if not out:
        raise UserError(f"{src} holds no prompts; put one prompt per line")
    return out


def add_sweep_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", default="default", help="GGUF path(s), comma separated (default: embedded model)")
    p.add_argument("-ctk", "--cache-type-k", default="f16", help="K cache types, e.g. f16,q8_0,turbo3")
    p.add_argument("-ctv", "--cache-type-v", default="f16", help="V cache types")
    p.add_argument("--spec", default="none", help="drafters: none,ngram,draft,mtp")
    p.add_argument("--draft-block-size", default="3", help="block sizes B, e.g. 2-6 (ignored for spec none)")
    p.add_argument("--draft-max", type=int, default=16)
    p.add_argument("--pipeline-depth", default="2", help="1,2")
    p.add_argument("-p", "--n-prompt", default="64", help="prompt lengths in tokens (llama-bench -p; default 64)")
    p.add_argument("-n", "--n-gen", default="64", help="tokens to generate (default 64)")
    p.add_argument("--prompts", default=None, metavar="FILE",
                   help="prompt set (one per line, or JSONL with prompt/kind); each prompt becomes a cell")
    p.add_argument("--default-prompts", action="store_true", help="use the shipped prompt set as --prompts")
    p.add_argument("--backend", default="numpy", help="backends: numpy,cupy")
    p.add_argument("-t", "--threads", default=str(os.cpu_count() or 1), help="thread counts")
    p.add_argument("-r", "--repetitions", type=int, default=3)
    p.add_argument("--temp", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--kv-equalize", type=float, default=0.0)
    p.add_argument("--model-draft", default=None, help="draft model GGUF for --spec draft")
    p.add_argument("--mtp-head", default=None, help="MTP assistant GGUF for --spec mtp")
    p.add_argument("--weights", default="auto", choices=["auto", "f32", "i16"])
    p.add_argument("--results", default=str(DEFAULT_RESULTS), help="results JSONL (appended; default %(default)s)")
    p.add_argument("--trace-dir", default=None, help="traces folder (default: traces/ beside --results)")
    p.add_argument("--resume", action="store_true", help="skip repetitions already in --results")
    p.add_argument("-o", "--output", default="md", choices=["md", "csv", "json", "jsonl"], help="summary format")


@dataclass
class Cell:
    model: str
    backend: str
    threads: int
    type_k: str
    type_v: str
    spec: str
    block: int | None
    depth: int
    n_prompt: int
    n_gen: int
    prompt: Prompt | None


def expand(args) -> list[Cell]:
    from turbospec.engine.kv.cache import cache_type_names

    names = cache_type_names()
    ctk = parse_list(args.cache_type_k, str, "-ctk")
    ctv = parse_list(args.cache_type_v, str, "-ctv")
    for t in ctk + ctv:
        if t not in names:
            raise UserError(f"unknown cache type {t!r}; choose from {', '.join(names)}")
    specs = parse_list(args.spec, str, "--spec")
    for s in specs:
        if s not in ("none", "ngram", "draft", "mtp"):
            raise UserError(f"unknown --spec {s!r}; choose from none, ngram, draft, mtp")
    blocks = parse_list(args.draft_block_size, int, "--draft-block-size")
    for b in blocks:
        if not 2 <= b <= 32:
            raise UserError(f"--draft-block-size {b} is out of range; choose 2..32")
    depths = parse_list(args.pipeline_depth, int, "--pipeline-depth")
    for d in depths:
        if d not in (1, 2):
            raise UserError(f"--pipeline-depth {d}: choose 1 or 2")
    backends = parse_list(args.backend, str, "--backend")
    for b in backends:
        if b not in ("numpy", "cupy"):
            raise UserError(f"unknown backend {b!r}; choose numpy or cupy")
    if args.repetitions < 1:
        raise UserError(f"-r {args.repetitions}: run at least one repetition")
    prompts: list[Prompt | None]
    if args.prompts or args.default_prompts:
        prompts = list(load_prompts(args.prompts))
        n_prompts = [0]
    else:
        prompts = [None]
        n_prompts = parse_list(args.n_prompt, int, "-p")
    cells = []
    for model, be, th, k, v, sp, npr, ng, pr in itertools.product(
        parse_list(args.model, str, "-m"), backends, parse_list(args.threads, int, "-t"), ctk, ctv, specs,
        n_prompts, parse_list(args.n_gen, int, "-n"), prompts,
    ):
        if sp == "none":
            cells.append(Cell(model, be, th, k, v, sp, None, 1, npr, ng, pr))
        else:
            for b, d in itertools.product(blocks, depths):
                cells.append(Cell(model, be, th, k, v, sp, b, d, npr, ng, pr))
    return cells


class ModelPool:
    """Models and tokenizers loaded once per path for the whole sweep."""

    def __init__(self, weights: str):
        self.weights = weights
        self.cache: dict[str, tuple] = {}

    def get(self, path: str, backend: str = "numpy"):
        key = f"{backend}:{path}"
        if key not in self.cache:
            from turbospec.engine.loader import load_model, load_tokenizer

            p = None if path == "default" else path
            if backend == "cupy":
                from turbospec.engine.cuda_model import load_device_model

                m = load_device_model(p, "cupy")
            else:
                m = load_model(p, storage=self.weights)
            self.cache[key] = (m, load_tokenizer(m))
        return self.cache[key]


def synthetic_prompt(tok, n: int) -> list[int]:
    """The first n tokens of the prompt set's text (repeated as needed), BOS first."""
    text = " ".join(p.text for p in load_prompts(None))
    ids = tok.encode(text, add_bos=True)
    body = ids[1:]
    while len(body) < n:
        body = body + body
    return ids[:1] + body[: max(n - 1, 0)]


def run_cell(args, cell: Cell, rep: int, pool: ModelPool, run_id: str, trace_dir: Path, results_dir: Path) -> dict:
    from turbospec import __version__, results
    from turbospec.engine.backend import blas_info, choose_backend, cpu_name, set_threads
    from turbospec.engine.cmd_run import make_drafter, open_trace
    from turbospec.engine.generate import GenConfig, chat_prompt, generate, has_chat_template
    from turbospec.engine.kv.cache import KVConfig, get_codec
    from turbospec.engine.sampling import SamplingConfig
    from turbospec.engine.weights import file_sha256

    set_threads(cell.threads)
    choice = choose_backend(cell.backend, quiet=True)
    model, tok = pool.get(cell.model, choice.name)
    kv = KVConfig(cell.type_k, cell.type_v, equalize=args.kv_equalize)
    if cell.prompt is not None:
        text = cell.prompt.text
        ids = tok.encode(chat_prompt(text) if has_chat_template(model) else text, add_bos=True)
    else:
        ids = synthetic_prompt(tok, cell.n_prompt)
    n_ctx = max(4096, len(ids) + cell.n_gen + 64)
    cfg = GenConfig(n_predict=cell.n_gen, sampling=SamplingConfig(temp=args.temp, seed=args.seed + rep), kv=kv,
                    n_ctx=n_ctx, ignore_eos=True)
    ns = argparse.Namespace(
        spec=cell.spec, draft_block_size=cell.block or 3, draft_max=args.draft_max, pipeline_depth=cell.depth,
        mtp_head=args.mtp_head, model_draft=args.model_draft, ngram_max=3, weights=args.weights,
        threads=cell.threads, trace=None,
    )
    drafter, spec = make_drafter(ns, model, tok, kv, n_ctx)
    tname = (f"{run_id}-c{cell_index(cell)}-{cell.type_k}-{cell.type_v}-{cell.spec}"
             f"{'' if cell.block is None else f'-B{cell.block}'}-r{rep}.ndjson")
    tpath = trace_dir / tname
    ns.trace = str(tpath)
    trace = open_trace(ns, model, choice, cfg)
    t0 = time.perf_counter()
    status = "ok"
    try:
        res = generate(model, tok, ids, cfg, trace=trace, drafter=drafter, spec=spec)
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        if trace is not None and status != "ok":
            trace.run_end(status=status)
            trace.close()
        if drafter is not None:
            try:
                drafter.cancel()
            except Exception:
                pass
    wall = time.perf_counter() - t0
    sm = res.spec or {}
    n_gen = len(res.tokens)
    if trace is not None:
        trace.run_end(status="ok", n_prompt=res.n_prompt, n_gen=n_gen, prefill_tok_s=res.prefill_tok_s,
                      decode_tok_s=res.decode_tok_s, kv_bytes=res.kv_bytes,
                      draft_acceptance_rate=sm.get("draft_acceptance_rate"), tau=sm.get("tau"))
        trace.close()
    gs = model.gguf
    rounds = sm.get("rounds") or 0
    row = {
        "schema": results.SCHEMA, "run_id": run_id, "test_time": results.utc_now(), "repetition": rep,
        "build_commit": None, "version": __version__,
        "versions": {"turbospec": __version__, "python": sys.version.split()[0], "numpy": _ver("numpy")},
        "cpu_info": cpu_name(), "gpu_info": None if choice.name == "numpy" else choice.device,
        "backends": "CPU" if choice.name == "numpy" else "CUDA",
        "machine": results.machine_info(n_threads=cell.threads, blas=blas_info()),
        "model_filename": str(gs.path), "model_type": f"{model.arch} {gs.get('general.size_label', '')}".strip(),
        "model_size": gs.path.stat().st_size, "model_n_params": int(sum(t.n_elements for t in gs.tensors.values())),
        "model_sha256": file_sha256(gs.path), "backend": choice.name, "device": choice.device,
        "n_threads": cell.threads, "type_k": cell.type_k, "type_v": cell.type_v, "spec": cell.spec,
        "draft_block_size": cell.block, "draft_max": args.draft_max if cell.spec != "none" else None,
        "pipeline_depth": cell.depth, "n_prompt": res.n_prompt, "n_gen": n_gen,
        "prompt_kind": cell.prompt.kind if cell.prompt else "synthetic",
        "prompt_index": cell.prompt.index if cell.prompt else None,
        "avg_ns": int(res.decode_s * 1e9), "stddev_ns": 0.0, "avg_ts": res.decode_tok_s, "stddev_ts": 0.0,
        "prefill_tok_s": res.prefill_tok_s, "decode_tok_s": res.decode_tok_s,
        "draft_acceptance_rate": sm.get("draft_acceptance_rate"), "tau": sm.get("tau"),
        "per_position": sm.get("per_position"), "kv_bytes": res.kv_bytes,
        "kv_bytes_per_token": res.kv_bytes / max(res.n_prompt + n_gen, 1),
        "peak_mem_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "wall_s": wall, "status": "ok", "error": None, "trace_path": os.path.relpath(tpath, results_dir),
        "n_rounds": rounds or None, "n_drafted": sm.get("n_drafted"), "n_accepted": sm.get("n_accepted"),
        "draft_us": (sm.get("draft_us_total", 0) / rounds) if rounds else None,
        "verify_us": (sm.get("verify_us_total", 0) / rounds) if rounds else None,
        "plain_step_us": (res.decode_s * 1e6 / max(res.n_decode_steps, 1)) if cell.spec == "none" else None,
        "bits_k": get_codec(cell.type_k).bits_per_value, "bits_v": get_codec(cell.type_v).bits_per_value,
        "n_ctx": n_ctx, "temp": args.temp, "seed": args.seed + rep,
    }  # fmt: skip
    return row


_CELL_IDS: dict[int, int] = {}


def cell_index(cell: Cell) -> int:
    return _CELL_IDS.get(id(cell), 0)


def _ver(name: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None


def failed_row(args, cell: Cell, rep: int, run_id: str, err: str, status: str = "failed") -> dict:
    from turbospec import __version__, results

    return {
        "schema": results.SCHEMA, "run_id": run_id, "test_time": results.utc_now(), "repetition": rep,
        "build_commit": None, "version": __version__, "versions": {"turbospec": __version__},
        "cpu_info": None, "gpu_info": None, "backends": None, "machine": results.machine_info(n_threads=cell.threads),
        "model_filename": cell.model, "model_type": None, "model_size": None, "model_n_params": None,
        "model_sha256": None, "backend": cell.backend, "device": None, "n_threads": cell.threads,
        "type_k": cell.type_k, "type_v": cell.type_v, "spec": cell.spec, "draft_block_size": cell.block,
        "draft_max": args.draft_max if cell.spec != "none" else None, "pipeline_depth": cell.depth,
        "n_prompt": cell.n_prompt, "n_gen": cell.n_gen,
        "prompt_kind": cell.prompt.kind if cell.prompt else "synthetic",
        "prompt_index": cell.prompt.index if cell.prompt else None,
        "avg_ns": None, "stddev_ns": None, "avg_ts": None, "stddev_ts": None, "prefill_tok_s": None,
        "decode_tok_s": None, "draft_acceptance_rate": None, "tau": None, "per_position": None, "kv_bytes": None,
        "kv_bytes_per_token": None, "peak_mem_bytes": None, "wall_s": None, "status": status,
        "error": err.splitlines()[0][:500] if err else "unknown error", "trace_path": None,
    }  # fmt: skip


def resume_key(cell: Cell, args) -> tuple:
    """The settings of a cell as they appear in its rows (model hash excluded: known only after load)."""
    return (cell.backend, cell.threads, cell.type_k, cell.type_v, cell.spec, cell.block,
            args.draft_max if cell.spec != "none" else None, cell.depth,
            cell.prompt.kind if cell.prompt else "synthetic", cell.prompt.index if cell.prompt else None,
            cell.n_gen, cell.n_prompt if cell.prompt is None else None)


def row_resume_key(row: dict) -> tuple:
    return (row.get("backend"), row.get("n_threads"), row.get("type_k"), row.get("type_v"), row.get("spec"),
            row.get("draft_block_size"), row.get("draft_max"), row.get("pipeline_depth"), row.get("prompt_kind"),
            row.get("prompt_index"), row.get("n_gen"), row.get("n_prompt") if row.get("prompt_index") is None
            else None)


def cmd_sweep(args) -> int:
    from turbospec import results

    cells = expand(args)
    for i, c in enumerate(cells):
        _CELL_IDS[id(c)] = i
    res_path = Path(args.results)
    trace_dir = Path(args.trace_dir) if args.trace_dir else res_path.parent / "traces"
    try:
        trace_dir.mkdir(parents=True, exist_ok=True)
        res_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {trace_dir} ({e.strerror}); pass writable --results/--trace-dir") from None
    done: set[tuple] = set()
    if args.resume and res_path.exists():
        rows, _ = results.read_rows(res_path, validate=False)
        for r in rows:
            if r.get("status") == "ok":
                done.add((r.get("model_filename") if args.model != "default" else "default",
                          row_resume_key(r), r.get("repetition")))
    todo = []
    for c in cells:
        for rep in range(args.repetitions):
            mkey = c.model if args.model != "default" else "default"
            if (mkey, resume_key(c, args), rep) in done:
                continue
            todo.append((c, rep))
    run_id = results.new_run_id()
    skipped = len(cells) * args.repetitions - len(todo)
    print(f"sweep: {len(cells)} cells x {args.repetitions} repetitions = {len(cells) * args.repetitions} runs"
          f"{f'; {skipped} already done (--resume)' if skipped else ''}; results -> {res_path}", file=sys.stderr)
    pool = ModelPool(args.weights)
    written: list[dict] = []
    interrupted = False
    use_rich = sys.stderr.isatty()
    prog = task = None
    if use_rich:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        prog = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeRemainingColumn(), transient=False)
        prog.start()
        task = prog.add_task("sweep", total=len(todo))
    try:
        for i, (c, rep) in enumerate(todo):
            label = (f"cell {_CELL_IDS[id(c)] + 1}/{len(cells)} rep {rep + 1}/{args.repetitions}: "
                     f"{c.type_k}/{c.type_v} {c.spec}{'' if c.block is None else f' B={c.block}'}"
                     f"{f' {c.prompt.kind}#{c.prompt.index}' if c.prompt else f' p={c.n_prompt}'} n={c.n_gen}")
            if prog is not None:
                prog.update(task, description=label)
            else:
                print(f"[{i + 1}/{len(todo)}] {label}", file=sys.stderr, flush=True)
            try:
                row = run_cell(args, c, rep, pool, run_id, trace_dir, res_path.parent)
            except KeyboardInterrupt:
                results.append_row(res_path, failed_row(args, c, rep, run_id, "interrupted by the user",
                                                        "interrupted"), validate=False)
                interrupted = True
                break
            except UserError as e:
                row = failed_row(args, c, rep, run_id, str(e))
            except Exception as e:  # a failed cell is recorded and the sweep goes on
                row = failed_row(args, c, rep, run_id, f"{type(e).__name__}: {e}")
            results.append_row(res_path, row, validate=False)
            written.append(row)
            if row["status"] != "ok":
                print(f"turbospec: cell failed: {row['error']}", file=sys.stderr)
            if prog is not None:
                prog.advance(task)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if prog is not None:
            prog.stop()
    all_rows, _ = results.read_rows(res_path, validate=False)
    mine = [r for r in all_rows if r.get("run_id") == run_id or args.resume]
    if mine:
        print(results.format_summary(results.summarize(mine), args.output))
    if interrupted:
        print(f"turbospec: sweep interrupted; {len(written)} finished rows are in {res_path} "
              "(continue with --resume)", file=sys.stderr)
        return 130
    return 0 if all(r["status"] == "ok" for r in written) else 1


def register(sub) -> None:
    p = sub.add_parser("sweep", help="run a grid of cache types x draft block sizes x ... (llama-bench style)",
                       description=__doc__.split("\n\n")[0])
    add_sweep_args(p)
    p.set_defaults(func=cmd_sweep)
