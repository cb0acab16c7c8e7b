"""The speculative decoding loop: draft -> verify (one ``Session.step``) -> accept -> rollback.

Round protocol (DESIGN.md, "MTP assistant"), with ``B = --draft-block-size``:

1. build the Round (id_last, attn_pos, h_idx, h_prev, n_steps = min(B-1, draft_max, tokens
   left - 1, context left)); a round is skipped (path ``skip-nsteps`` when n_steps <= 0,
   ``skip-streak`` by the skip rule): the loop drains any request in flight, writes the skip
   line, and decodes one plain token (a ``decode`` event; no accept line; iter unchanged);
2. ``drafter.draft(round)`` (awaits a prepared request: ``lazy``; else ``sync``); a drafter with
   nothing to propose (prompt lookup without a match) gives an empty draft line, then one
   plain token;
3. verify ``[id_last] + drafts`` in one target forward, accept (greedy prefix + bonus, or
   rejection sampling), roll the target's KV back to the accepted prefix;
4. pipeline depth 2: build the next round and ``prepare_next`` it right away (unless it will be
   skipped), then do the bookkeeping (trace lines, emitting tokens, stop checks); on stop the
   request in flight is cancelled and drained.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from turbospec.engine.spec.base import (
    BLOCK_SIZE_MAX,
    BLOCK_SIZE_MIN,
    PATH_SKIP_NSTEPS,
    PATH_SKIP_STREAK,
    SKIP_STREAK_MAX,
    Drafter,
    Round,
    SkipStreak,
)
from turbospec.engine.spec.verify import verify
from turbospec.errors import UserError

SKIP_ENV = "LLAMA_MTP_SKIP_STREAK_THRESHOLD"
DEPTH2_ENV = "LLAMA_PIPELINE_DEPTH2"


@dataclass
class SpecConfig:
    block_size: int = 3  # --draft-block-size B: a round drafts min(B-1, draft_max) tokens
    draft_max: int = 16  # --draft-max
    pipeline_depth: int = 2  # 1 = synchronous drafts; 2 = prepare_next after accept
    skip_streak: int = 0  # 0 = off; 1..32

    @property
    def n_steps(self) -> int:
        return max(0, min(self.block_size - 1, self.draft_max))

    def validate(self) -> None:
        if not BLOCK_SIZE_MIN <= self.block_size <= BLOCK_SIZE_MAX:
            raise UserError(
                f"--draft-block-size {self.block_size} is out of range; choose {BLOCK_SIZE_MIN}..{BLOCK_SIZE_MAX}"
            )
        if self.draft_max < 0:
            raise UserError(f"--draft-max {self.draft_max} is negative; pass 0 or more (0 = never draft)")
        if self.pipeline_depth not in (1, 2):
            raise UserError(f"--pipeline-depth {self.pipeline_depth} is not 1 or 2; choose 1 or 2")
        if not 0 <= self.skip_streak <= SKIP_STREAK_MAX:
            raise UserError(f"{SKIP_ENV}={self.skip_streak} is out of range; set 1..{SKIP_STREAK_MAX}, or 0 = off")


def skip_streak_from_env(environ: dict[str, str] | None = None) -> int:
    """$LLAMA_MTP_SKIP_STREAK_THRESHOLD: unset/''/'0' = off; 1..32 enables (one clear line otherwise)."""
    v = (os.environ if environ is None else environ).get(SKIP_ENV, "").strip()
    if v in ("", "0"):
        return 0
    try:
        n = int(v)
    except ValueError:
        raise UserError(f"{SKIP_ENV}={v!r} is not a number; set 1..{SKIP_STREAK_MAX}, or 0 = off") from None
    if not 1 <= n <= SKIP_STREAK_MAX:
        raise UserError(f"{SKIP_ENV}={n} is out of range; set 1..{SKIP_STREAK_MAX}, or 0 = off")
    return n


def pipeline_depth_default(cli_value: int | None, environ: dict[str, str] | None = None) -> int:
    """--pipeline-depth wins; else LLAMA_PIPELINE_DEPTH2=0 selects 1; else 2 (the fork's default)."""
    if cli_value is not None:
        return cli_value
    env = os.environ if environ is None else environ
    return 1 if env.get(DEPTH2_ENV) == "0" else 2


@dataclass
class SpecStats:
    """Counters of the verified rounds (what the trace's mtp_accept lines hold)."""

    rounds: int = 0
    n_accepted: int = 0
    n_drafted: int = 0
    skip_rounds: int = 0  # draft lines with no drafts: skip-streak, skip-nsteps, empty proposals
    empty_rounds: int = 0  # the drafter had nothing to propose (counted in skip_rounds too)
    lazy_rounds: int = 0
    pair_counts: dict[tuple[int, int], int] = field(default_factory=dict)  # (n_drafted, n_accepted)
    draft_us: int = 0
    verify_us: int = 0
    cancelled: int = 0

    def add(self, n_drafted: int, n_accepted: int) -> None:
        self.rounds += 1
        self.n_accepted += n_accepted
        self.n_drafted += n_drafted
        k = (n_drafted, n_accepted)
        self.pair_counts[k] = self.pair_counts.get(k, 0) + 1

    def metrics(self) -> dict:
        """draft_acceptance_rate, tau, per_position (+ conditional) exactly as turbospec.trace defines them."""
        from turbospec.trace import per_position

        ps, alphas = per_position(self.pair_counts)
        return {
            "draft_acceptance_rate": self.n_accepted / self.n_drafted if self.n_drafted else None,
            "tau": 1.0 + self.n_accepted / self.rounds if self.rounds else None,
            "per_position": ps,
            "conditional": alphas,
            "pair_counts": dict(self.pair_counts),
            "rounds": self.rounds,
            "n_accepted": self.n_accepted,
            "n_drafted": self.n_drafted,
            "skip_rounds": self.skip_rounds,
            "empty_rounds": self.empty_rounds,
            "lazy_rounds": self.lazy_rounds,
            "cancelled": self.cancelled,
            "draft_us_total": self.draft_us,
            "verify_us_total": self.verify_us,
        }


def generate_spec(
    model,
    tok,
    prompt_ids: list[int],
    cfg,
    drafter: Drafter,
    spec: SpecConfig,
    on_token: Callable[[int], None] | None = None,
    trace=None,
    should_stop: Callable[[], bool] | None = None,
):
    """Speculative generation; same result type and stop rules as ``generate.generate``."""
    from turbospec.engine.generate import GenResult, start_session, stop_ids
    from turbospec.engine.sampling import Sampler

    spec.validate()
    sampler = Sampler(cfg.sampling)
    eos, eot = stop_ids(tok)
    stops = () if cfg.ignore_eos else (eos, eot)
    tr = trace if trace is not None and trace.enabled else None
    stats = SpecStats()
    skipper = SkipStreak(spec.skip_streak)
    drafter.cancel()  # drain anything from a previous prompt before the KV is rewritten

    sess, logits, prefill_s = start_session(model, prompt_ids, cfg, tr)
    drafter.begin(sess, prompt_ids)
    out: list[int] = []
    history = list(prompt_ids)
    reason = "length"
    t1 = time.perf_counter()
    steps = 0
    it = 0  # the fork's iter

    def emit(toks: list[int]) -> tuple[int, str | None]:
        """Emit tokens in order; (how many were emitted, stop reason or None)."""
        for i, t in enumerate(toks):
            out.append(t)
            history.append(t)
            if on_token:
                on_token(t)
            if t in stops:
                return i + 1, ("eos" if t == eos else "eot")
            if len(out) >= cfg.n_predict:
                return i + 1, "length"
        return len(toks), None

    def plan(id_last: int, h_idx: int, h_prev: np.ndarray, toks: list[int], n_out: int) -> Round:
        """The next round, once its id_last is known (n_out = tokens generated including it)."""
        left = cfg.n_predict - n_out
        ctx_left = cfg.n_ctx - sess.n_past - 1  # id_last takes one cell
        n = min(spec.n_steps, left - 1, ctx_left)
        return Round(it, id_last, sess.n_past - 1, h_idx, h_prev, max(n, 0), toks)

    try:
        if cfg.n_predict <= 0:
            raise StopIteration
        first = sampler.sample(logits[-1], history)
        _, stop = emit([first])
        if stop is not None:
            reason = stop
            raise StopIteration
        rnd = plan(first, -1, sess.hidden[-1].copy(), list(history), len(out))
        while True:
            if sess.n_past + 1 > cfg.n_ctx:
                reason = "ctx"
                break
            if should_stop and should_stop():
                reason = "interrupted"
                break
            ts = time.perf_counter()
            skip = None
            if rnd.n_steps <= 0:
                skip = PATH_SKIP_NSTEPS
            elif skipper.should_skip():
                skip = PATH_SKIP_STREAK
            drafts: list[int] = []
            if skip is None:
                drafts = drafter.draft(rnd)
                prop = drafter.last
                du = prop.us if prop is not None else 0
                stats.draft_us += du
                if rnd.path == "lazy":
                    stats.lazy_rounds += 1
                if tr is not None:
                    tr.mtp_draft(rnd.iter, rnd.path, 0, rnd.id_last, rnd.h_idx, rnd.attn_pos, rnd.n_steps,
                                 rnd.h_l2, drafts, drafter=(prop.extra.get("source") if prop else None) or drafter.name,
                                 draft_us=du)
            else:
                drafter.cancel()  # nothing may be in flight when the KV is written
                stats.skip_rounds += 1
                if tr is not None:
                    tr.mtp_draft(rnd.iter, skip, 0, rnd.id_last, rnd.h_idx, rnd.attn_pos, 0, rnd.h_l2, [],
                                 drafter=drafter.name, draft_us=0)
            if not drafts:
                # one plain token: verification of zero drafts
                if skip is None:  # the drafter had nothing: a skip for the trace's readers too
                    stats.empty_rounds += 1
                    stats.skip_rounds += 1
                drafter.cancel()
                logits = sess.step([rnd.id_last])
                steps += 1
                nxt = sampler.sample(logits[0], history)
                nrnd = plan(nxt, -1, sess.hidden[-1].copy(), history + [nxt], len(out) + 1)
                if tr is not None:
                    tr.decode(n_emitted=1, us=int((time.perf_counter() - ts) * 1e6))
                _, stop = emit([nxt])
                if stop is not None:
                    reason = stop
                    break
                rnd = nrnd
                continue

            tv = time.perf_counter()
            logits = sess.step([rnd.id_last] + drafts)
            steps += 1
            v = verify(logits, drafts, sampler, history, None if drafter.last is None else drafter.last.q)
            n_acc = v.n_accepted
            sess.rollback(rnd.attn_pos + 2 + n_acc)  # keep id_last and the accepted drafts
            verify_us = int((time.perf_counter() - tv) * 1e6)
            stats.verify_us += verify_us
            stats.add(len(drafts), n_acc)
            skipper.record(len(drafts), n_acc)
            drafter.accept(n_acc)
            it += 1
            # the next round: id_last = the bonus / correction token, h_prev from the last accepted row
            n_out = len(out) + len(v.tokens)
            nrnd = plan(v.tokens[-1], n_acc, sess.hidden[n_acc].copy(), history + v.tokens, n_out)
            will_draft = nrnd.n_steps > 0 and not skipper.would_skip()
            stop_now = any(t in stops for t in v.tokens) or n_out >= cfg.n_predict
            if spec.pipeline_depth == 2 and will_draft and not stop_now:
                drafter.prepare_next(nrnd)
            if tr is not None:
                tr.mtp_accept(rnd.iter, n_acc, len(drafts), verify_us=verify_us, n_emitted=len(v.tokens),
                              pos=len(history) + len(v.tokens))
            _, stop = emit(v.tokens)
            if stop is not None:
                reason = stop
                break
            rnd = nrnd
    except StopIteration:
        pass
    except KeyboardInterrupt:
        reason = "interrupted"
    finally:
        if drafter.in_flight:
            stats.cancelled += 1
        drafter.cancel()
    decode_s = time.perf_counter() - t1
    res = GenResult(
        tokens=out,
        n_prompt=len(prompt_ids),
        prefill_s=prefill_s,
        decode_s=decode_s,
        stop_reason=reason,
        kv_bytes=sess.cache.nbytes,
        n_decode_steps=steps,
    )
    res.spec = {"drafter": drafter.name, "block_size": spec.block_size, "draft_max": spec.draft_max,
                "pipeline_depth": spec.pipeline_depth, "skip_streak": spec.skip_streak, **stats.metrics()}
    return res
