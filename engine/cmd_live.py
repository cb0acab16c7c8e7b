"""The live views: `turbospec demo` (the README's main job) and `turbospec run --tui`.

Both start the engine in a child process that writes an NDJSON trace, and show the dashboard
(turbospec.tui, which never imports the engine) following that file in the foreground. When the
child ends the dashboard stays until the user quits; quitting early interrupts the child, which
closes its trace with ``run_end status=interrupted`` (nothing it wrote is lost). Without a
terminal the demo runs inline with plain progress lines and exits when done.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from turbospec.errors import UserError

DEMO_SPEC = ("ngram", 4)  # drafter and block size the demo shows (the MTP head replaces ngram when shipped)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("LLAMA_MTP_ACC_TRACE", None)  # the child writes the trace we follow, nothing else
    return env


def follow_child(cmd: list[str], trace: Path, log: Path, title: str) -> int:
    """Run ``cmd`` (writing ``trace``) in a child process while the dashboard follows the trace."""
    from turbospec.tui.app import run_dashboard

    with open(log, "wb") as logf:
        child = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 env=_child_env(), start_new_session=True)
    rc = 0
    try:
        rc = run_dashboard([str(trace)], follow=True)
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGINT)  # the engine closes its trace as interrupted
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
    out = log.read_text(errors="replace").strip().splitlines()
    last = out[-1] if out else ""
    print(f"{title}: trace {trace} (engine log {log})", file=sys.stderr)
    if child.returncode not in (0, 130, -signal.SIGINT) and last:
        print(f"turbospec: the engine stopped: {last}", file=sys.stderr)
        return child.returncode or 1
    return rc


def run_tui(argv: list[str], trace: str | None) -> int:
    """`turbospec run --tui ...`: the same run in a child process, the dashboard in front."""
    if not sys.stdout.isatty():
        raise UserError("--tui needs a terminal; drop --tui (or use --trace FILE and `turbospec top FILE`)")
    if trace in ("1",):
        raise UserError("--tui shows the trace on screen; give --trace a file path (not 1 = stderr)")
    tdir = Path(tempfile.mkdtemp(prefix="turbospec-run-"))
    tpath = Path(trace) if trace else tdir / "trace.ndjson"
    cmd = [sys.executable, "-m", "turbospec.cli", "run", *argv, "--trace", str(tpath), "--json"]
    return follow_child(cmd, tpath, tdir / "engine.log", "turbospec run --tui")


def cmd_demo(args) -> int:
    prompts = _demo_prompts(args.prompts)
    if sys.stdout.isatty() and not args.plain:
        tdir = Path(args.trace_dir or tempfile.mkdtemp(prefix="turbospec-demo-"))
        tdir.mkdir(parents=True, exist_ok=True)
        tpath = tdir / "demo.ndjson"
        cmd = [sys.executable, "-m", "turbospec.cli", "demo-worker", "--trace", str(tpath),
               "-n", str(args.n_predict), "--prompts", str(prompts)]
        if args.model:
            cmd += ["-m", args.model]
        return follow_child(cmd, tpath, tdir / "engine.log", "turbospec demo")
    return demo_worker(args.model, args.n_predict, prompts, trace=args.trace, plain=True)


def _demo_prompts(n: int) -> int:
    return max(1, min(n, 20))


def demo_worker(model_path: str | None, n_predict: int, n_prompts: int, trace: str | None, plain: bool) -> int:
    """Generate on the default prompt set with the demo's drafter, one run per prompt."""
    from turbospec.engine.backend import choose_backend, set_threads

    set_threads(0)
    choice = choose_backend("auto", quiet=not plain)
    from turbospec.engine.cmd_sweep import load_prompts
    from turbospec.engine.generate import GenConfig, chat_prompt, generate, has_chat_template
    from turbospec.engine.kv.cache import KVConfig
    from turbospec.engine.loader import load_model, load_tokenizer
    from turbospec.engine.spec.loop import SpecConfig
    from turbospec.engine.spec.ngram import NGramDrafter
    from turbospec.trace import TraceWriter

    model = load_model(model_path)
    tok = load_tokenizer(model)
    drafter_name, block = DEMO_SPEC
    totals = {"tokens": 0, "s": 0.0}
    interrupted = False
    for i, p in enumerate(load_prompts(None)[:n_prompts]):
        w = TraceWriter.open(trace) if trace else None
        cfg = GenConfig(n_predict=n_predict, kv=KVConfig())
        spec = SpecConfig(block_size=block, pipeline_depth=2)
        if w is not None:
            from turbospec import __version__
            from turbospec.engine.weights import file_sha256

            w.run_start(schema="turbospec.trace/1", model=model.gguf.path.name,
                        model_sha256=file_sha256(model.gguf.path), backend=choice.name, device=choice.device,
                        type_k="f16", type_v="f16", spec=drafter_name, draft_block_size=block,
                        draft_max=spec.draft_max, pipeline_depth=2, n_ctx=cfg.n_ctx,
                        n_threads=int(os.environ.get("TURBOSPEC_THREADS", "1")), temp=0.0, seed=-1,
                        version=__version__)
        ids = tok.encode(chat_prompt(p.text) if has_chat_template(model) else p.text, add_bos=True)
        if plain:
            print(f"[{i + 1}] ({p.kind}) {p.text}", flush=True)
        t0 = time.perf_counter()
        status = "ok"
        try:
            res = generate(model, tok, ids, cfg, trace=w, drafter=NGramDrafter(), spec=spec)
        except KeyboardInterrupt:
            status, res = "interrupted", None
        dt = time.perf_counter() - t0
        sm = (res.spec or {}) if res else {}
        if w is not None:
            w.run_end(status=status, n_prompt=len(ids), n_gen=len(res.tokens) if res else None,
                      prefill_tok_s=res.prefill_tok_s if res else None, decode_tok_s=res.decode_tok_s if res else None,
                      kv_bytes=res.kv_bytes if res else None,
                      draft_acceptance_rate=sm.get("draft_acceptance_rate"), tau=sm.get("tau"))
            w.close()
        if res is None:
            interrupted = True
            break
        totals["tokens"] += len(res.tokens)
        totals["s"] += dt
        if plain:
            text = tok.decode(res.tokens).strip().replace("\n", " ")
            acc = sm.get("draft_acceptance_rate")
            print(f"    {text[:300]}", flush=True)
            print(f"    {len(res.tokens)} tokens, decode {res.decode_tok_s:.1f} tok/s, "
                  f"draft acceptance rate {'-' if acc is None else f'{100 * acc:.1f}%'}, "
                  f"τ {sm.get('tau') or 0:.2f} ({drafter_name}, B={block})", flush=True)
    if plain:
        print(json.dumps({"prompts": n_prompts, "tokens": totals["tokens"], "seconds": round(totals["s"], 2)}))
    return 130 if interrupted else 0


def cmd_demo_worker(args) -> int:
    return demo_worker(args.model, args.n_predict, args.prompts, trace=args.trace, plain=False)


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="the README's main job: generation on the default model with the live dashboard "
        "(plain lines without a terminal)",
    )
    p.add_argument("-m", "--model", default=None)
    p.add_argument("-n", "--n-predict", type=int, default=96, help="tokens per prompt (default 96)")
    p.add_argument("--prompts", type=int, default=5, help="how many prompts of the default set (default 5)")
    p.add_argument("--plain", action="store_true", help="plain lines even in a terminal")
    p.add_argument("--trace", default=None, help="also write the trace here (plain mode)")
    p.add_argument("--trace-dir", default=None, help="where the dashboard's trace goes (default: a temp folder)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("demo-worker")  # internal: the demo's engine process
    p.add_argument("-m", "--model", default=None)
    p.add_argument("-n", "--n-predict", type=int, default=96)
    p.add_argument("--prompts", type=int, default=5)
    p.add_argument("--trace", required=True)
    p.set_defaults(func=cmd_demo_worker)
