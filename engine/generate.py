"""Text generation: prefill the prompt, then decode token by token (or through a drafter).

Plain decoding is verification of zero drafts: every decode step, speculative or not, goes
through ``Session.step(tokens)`` — one forward over ``[last token, drafts...]`` returning
logits for each row — so plain and speculative greedy decoding share one numerical path.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from turbospec.engine.kv.cache import KVCache, KVConfig
from turbospec.engine.sampling import Sampler, SamplingConfig
from turbospec.errors import UserError

UBATCH = 512  # prompt tokens per forward during prefill (llama.cpp's default n_ubatch)


def chat_prompt(text: str) -> str:
    """Gemma's turn format for one user message."""
    return f"<start_of_turn>user\n{text}<end_of_turn>\n<start_of_turn>model\n"


def has_chat_template(model) -> bool:
    """Whether the GGUF carries a chat template (instruction-tuned); the default Gemma 3 270M is
    the pretrained base model, which continues text and echoes a turn-formatted prompt."""
    return bool(model.gguf.get("tokenizer.chat_template"))


@dataclass
class GenConfig:
    n_predict: int = 128
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    kv: KVConfig = field(default_factory=KVConfig)
    n_ctx: int = 4096
    ignore_eos: bool = False


@dataclass
class GenResult:
    tokens: list[int]
    n_prompt: int
    prefill_s: float
    decode_s: float
    stop_reason: str  # "eos" | "eot" | "length" | "ctx" | "interrupted"
    kv_bytes: int
    n_decode_steps: int = 0
    spec: dict = field(default_factory=dict)

    @property
    def prefill_tok_s(self) -> float:
        return self.n_prompt / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_tok_s(self) -> float:
        # the first generated token comes from the prefill's logits; decode time covers the rest
        n = max(len(self.tokens) - 1, 0)
        return n / self.decode_s if self.decode_s > 0 else 0.0


class Session:
    """A model, its KV cache and the tokens the cache covers."""

    def __init__(self, model, kv: KVConfig | None = None, n_ctx: int = 4096):
        self.model = model
        self.cache: KVCache = model.new_cache(kv)
        self.n_ctx = n_ctx
        self.tokens: list[int] = []
        self.hidden: np.ndarray | None = None  # final-norm hidden states of the last forward

    @property
    def n_past(self) -> int:
        return self.cache.n_past

    def reset(self) -> None:
        self.cache.clear()
        self.tokens = []

    def prefill(self, ids: list[int]) -> np.ndarray:
        """Run the prompt (in ubatches); returns the last token's logits (1, n_vocab)."""
        if len(ids) + self.n_past > self.n_ctx:
            raise UserError(
                f"prompt of {len(ids)} tokens does not fit the context of {self.n_ctx}; "
                "shorten it or raise -c/--ctx-size"
            )
        logits = None
        for a in range(0, len(ids), UBATCH):
            chunk = ids[a : a + UBATCH]
            last = a + UBATCH >= len(ids)
            logits, self.hidden = self.model.forward(chunk, self.cache, logits_rows="last" if last else None)
        self.tokens.extend(ids)
        return logits

    def step(self, ids: list[int]) -> np.ndarray:
        """Verify ``ids`` = [last token, drafts...]: logits for every row (len(ids), n_vocab)."""
        logits, self.hidden = self.model.forward(ids, self.cache, logits_rows="all")
        self.tokens.extend(ids)
        return logits

    def rollback(self, n_past: int) -> None:
        """Forget positions >= n_past (rejected drafts)."""
        self.cache.truncate(n_past)
        del self.tokens[n_past:]


def stop_ids(tok) -> tuple[int | None, int | None]:
    eos = getattr(tok, "eos_id", None)
    eot = tok.find_token("<end_of_turn>") if hasattr(tok, "find_token") else None
    return eos, eot


def start_session(model, prompt_ids: list[int], cfg: GenConfig, trace=None) -> tuple[Session, np.ndarray, float]:
    """A new session with the prompt prefilled (and its ``prefill`` trace event):
    (session, last-token logits, prefill seconds). Shared by plain and speculative generation."""
    if not prompt_ids:
        raise UserError("the prompt is empty; pass text with -p or a file with -f")
    sess = Session(model, cfg.kv, cfg.n_ctx)
    t0 = time.perf_counter()
    logits = sess.prefill(prompt_ids)
    prefill_s = time.perf_counter() - t0
    if trace is not None:
        trace.prefill(n_tokens=len(prompt_ids), us=int(prefill_s * 1e6))
    return sess, logits, prefill_s


def generate(
    model,
    tok,
    prompt_ids: list[int],
    cfg: GenConfig,
    on_token: Callable[[int], None] | None = None,
    trace=None,
    should_stop: Callable[[], bool] | None = None,
    drafter=None,
    spec=None,
) -> GenResult:
    """Generation. ``trace`` is a turbospec.trace writer or None. With ``drafter`` (an
    engine.spec Drafter) and ``spec`` (engine.spec.loop.SpecConfig) it is speculative
    (engine.spec.loop.generate_spec); otherwise plain, one ``Session.step([last])`` per token."""
    if drafter is not None:
        from turbospec.engine.spec.loop import SpecConfig, generate_spec

        return generate_spec(model, tok, prompt_ids, cfg, drafter, spec or SpecConfig(), on_token=on_token,
                             trace=trace, should_stop=should_stop)
    sess, logits, prefill_s = start_session(model, prompt_ids, cfg, trace)
    sampler = Sampler(cfg.sampling)
    eos, eot = stop_ids(tok)
    out: list[int] = []
    reason = "length"
    t1 = time.perf_counter()
    steps = 0
    history = list(prompt_ids)
    try:
        while len(out) < cfg.n_predict:
            ts = time.perf_counter()
            nxt = sampler.sample(logits[-1], history)
            out.append(nxt)
            history.append(nxt)
            if on_token:
                on_token(nxt)
            if not cfg.ignore_eos and nxt in (eos, eot):
                reason = "eos" if nxt == eos else "eot"
                break
            if len(out) >= cfg.n_predict:
                break
            if sess.n_past + 1 > cfg.n_ctx:
                reason = "ctx"
                break
            if should_stop and should_stop():
                reason = "interrupted"
                break
            logits = sess.step([nxt])
            steps += 1
            if trace is not None:
                trace.decode(n_emitted=1, us=int((time.perf_counter() - ts) * 1e6))
    except KeyboardInterrupt:
        reason = "interrupted"
    decode_s = time.perf_counter() - t1
    return GenResult(
        tokens=out,
        n_prompt=len(prompt_ids),
        prefill_s=prefill_s,
        decode_s=decode_s,
        stop_reason=reason,
        kv_bytes=sess.cache.nbytes,
        n_decode_steps=steps,
    )
