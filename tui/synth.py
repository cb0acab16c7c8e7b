"""Synthetic traces for tests, benchmarks and demos (no engine): the fork's and turbospec's format.

The rounds follow the fork's rules: ``iter`` advances after each accept line; a skipped round
writes a draft line with empty drafts (path skip-streak / skip-nsteps) that gets no accept line
and shares ``iter`` with the next draft.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import orjson

from turbospec.trace import SCHEMA


def fork_draft(it: int, path: str, drafts: list[int], h_l2: float, attn_pos: int = 17, h_idx: int = -1) -> str:
    return (
        f'{{"evt":"mtp_draft","iter":{it},"path":"{path}","seq_id":0,"id_last":128006,"h_idx":{h_idx},'
        f'"attn_pos":{attn_pos},"n_steps":{len(drafts)},"h_l2":{h_l2:.4f},'
        f'"drafts":[{",".join(map(str, drafts))}]}}'
    )


def fork_accept(it: int, n_accepted: int, n_drafted_prev: int) -> str:
    return f'{{"evt":"mtp_accept","iter":{it},"n_accepted":{n_accepted},"n_drafted_prev":{n_drafted_prev}}}'


def synth_lines(
    n_rounds: int,
    *,
    block_size: int = 3,
    fmt: str = "turbospec",
    p_accept: float = 0.8,
    skip_every: int = 0,
    malformed_every: int = 0,
    noise_every: int = 0,
    seed: int = 0,
    t0_us: int = 1_764_380_000_000_000,
    step_us: int = 40_000,
    run: str = "synthrun",
    n_prompt: int = 12,
    with_header: bool = True,
) -> Iterator[str]:
    """Lines (without newline) of one run.

    fmt: "turbospec" (run_start, prefill, rounds with appended fields and t_us/run, run_end) or
    "fork" (bare draft/accept lines only). skip_every: every k-th round is preceded by a skip
    line sharing its iter; malformed_every / noise_every: every k-th line is followed by a broken
    JSON line / a non-JSON stderr line.
    """
    rng = random.Random(seed)
    ts = fmt == "turbospec"
    t = t0_us
    n_lines = 0

    def tail(extra: dict[str, object]) -> str:
        nonlocal t
        t += rng.randint(step_us // 4, step_us // 2)
        extra["t_us"] = t
        extra["run"] = run
        return "," + orjson.dumps(extra).decode()[1:]

    def emit(line: str) -> Iterator[str]:
        nonlocal n_lines
        n_lines += 1
        yield line
        if malformed_every and n_lines % malformed_every == 0:
            yield line[: max(1, len(line) // 2)]  # a half line / broken JSON
        if noise_every and n_lines % noise_every == 0:
            yield "llama_decode: some stderr chatter 42"

    if ts and with_header:
        head = {"evt": "run_start", "schema": SCHEMA, "model": "gemma3-270m-q4_k_m.gguf", "model_sha256": "ab" * 32,
                "backend": "numpy", "device": "cpu", "type_k": "q8_0", "type_v": "turbo3", "spec": "mtp",
                "draft_block_size": block_size, "draft_max": 16, "pipeline_depth": 2, "n_ctx": 4096,
                "n_threads": 2, "temp": 0.0, "seed": seed, "version": "0.1.0", "t_us": t, "run": run}
        yield from emit(orjson.dumps(head).decode())
        yield from emit(f'{{"evt":"prefill","n_tokens":{n_prompt},"us":30000' + tail({}))
    it = 0
    pos = n_prompt
    n_acc_total = n_dr_total = 0
    for r in range(n_rounds):
        if skip_every and r % skip_every == skip_every - 1:
            path = "skip-streak" if rng.random() < 0.5 else "skip-nsteps"
            line = fork_draft(it, path, [], 0.0)
            if ts:
                line = line[:-1] + tail({"drafter": "mtp", "draft_us": 0})
            yield from emit(line)
            if ts:
                pos += 1
                yield from emit(f'{{"evt":"decode","n_emitted":1,"us":{step_us}' + tail({}))
        nd = block_size - 1
        drafts = [rng.randrange(262144) for _ in range(nd)]
        h = rng.uniform(50.0, 250.0)
        path = "lazy" if rng.random() < 0.7 else "sync"
        line = fork_draft(it, path, drafts, h, attn_pos=pos - 1, h_idx=rng.choice([-1, 0, 1, 2]))
        if ts:
            line = line[:-1] + tail({"drafter": "mtp", "draft_us": rng.randint(500, 4000)})
        yield from emit(line)
        na = 0
        while na < nd and rng.random() < p_accept:
            na += 1
        n_acc_total += na
        n_dr_total += nd
        pos += na + 1
        line = fork_accept(it, na, nd)
        if ts:
            line = line[:-1] + tail({"verify_us": rng.randint(20_000, 40_000), "n_emitted": na + 1, "pos": pos})
        yield from emit(line)
        it += 1
    if ts and with_header:
        rounds = max(n_rounds, 1)
        end = {"evt": "run_end", "status": "ok", "n_prompt": n_prompt, "n_gen": pos - n_prompt,
               "prefill_tok_s": 400.0, "decode_tok_s": 50.0, "kv_bytes": 123456,
               "draft_acceptance_rate": n_acc_total / n_dr_total if n_dr_total else None,
               "tau": 1 + n_acc_total / rounds}
        yield from emit(orjson.dumps(end).decode()[:-1] + tail({}))


def write_trace(path: object, n_rounds: int = 300, **kw: object) -> list[str]:
    """Write a synthetic trace file (one run) and return its lines."""
    lines = list(synth_lines(n_rounds, **kw))  # type: ignore[arg-type]
    with open(path, "w", encoding="utf-8") as f:  # type: ignore[call-overload]
        f.write("\n".join(lines) + "\n")
    return lines
