"""Perplexity the way llama-perplexity computes it, and KL divergence against a saved base.

The text is tokenized once (BOS added), cut into chunks of ``n_ctx`` tokens; each chunk is
evaluated from an empty cache with its first token replaced by BOS, and only the second half
is scored: logits at positions first..n_ctx-2 (first = n_ctx/2) predict tokens first+1..n_ctx-1,
i.e. n_ctx - 1 - n_ctx/2 tokens per chunk. Prefill attends over K/V read back from the
quantized cache, so the cache type shapes the result.

KL divergence (llama-perplexity's --kl-divergence-base / --kl-divergence): the base run saves,
for every scored token, the full log-probabilities as float16 (n_vocab x 2 bytes: 0.5 MB per
token for a 262144 vocabulary — keep it out of CI-sized runs) plus a JSON header; a later run
compares against it: mean KLD, top-1 agreement ("same top p"), PPL ratio, Δp percentiles.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from turbospec.engine.kv.cache import KVConfig
from turbospec.errors import UserError

KLD_FORMAT = "turbospec.kld-base/1"


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


@dataclass
class PplResult:
    ppl: float
    ppl_std: float
    n_tokens: int
    n_chunks: int
    ctx: int
    nll_per_chunk: list[float]
    seconds: float
    kld: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        d = {
            "ppl": self.ppl,
            "ppl_std": self.ppl_std,
            "n_tokens": self.n_tokens,
            "n_chunks": self.n_chunks,
            "ctx": self.ctx,
            "nll_per_chunk": self.nll_per_chunk,
            "seconds": round(self.seconds, 3),
        }
        d.update(self.kld)
        return d


class KLBaseWriter:
    def __init__(self, path: Path, n_vocab: int, n_scored: int, header: dict):
        self.path = Path(path)
        self.n_vocab = n_vocab
        self.header = dict(header, format=KLD_FORMAT, n_vocab=n_vocab, n_scored=n_scored)
        tmp = self.path.with_name(self.path.name + ".partial")
        self.tmp = tmp
        self.arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n_scored, n_vocab))
        self.tokens = np.zeros(n_scored, np.int64)
        self.i = 0

    def add(self, logp: np.ndarray, targets: np.ndarray) -> None:
        n = logp.shape[0]
        self.arr[self.i : self.i + n] = np.maximum(logp, -60000).astype(np.float16)
        self.tokens[self.i : self.i + n] = targets
        self.i += n

    def close(self) -> None:
        self.arr.flush()
        del self.arr
        self.tmp.replace(self.path)
        meta = dict(self.header, targets=self.tokens[: self.i].tolist())
        Path(str(self.path) + ".json").write_text(json.dumps(meta))


class KLBaseReader:
    def __init__(self, path: Path):
        self.path = Path(path)
        meta_path = Path(str(self.path) + ".json")
        if not self.path.exists() or not meta_path.exists():
            raise UserError(
                f"KL base {self.path} (and its .json header) not found; "
                "create it first with --kl-divergence-base FILE without --kl-divergence"
            )
        try:
            self.meta = json.loads(meta_path.read_text())
            self.arr = np.load(self.path, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise UserError(f"KL base {self.path} is unreadable ({e}); create it again") from None
        if self.meta.get("format") != KLD_FORMAT:
            raise UserError(f"{self.path} is not a turbospec KL base ({self.meta.get('format')}); create it again")
        self.targets = np.asarray(self.meta["targets"], np.int64)
        self.i = 0


@dataclass
class KLStats:
    kld: list[np.ndarray] = field(default_factory=list)
    same_top: int = 0
    n: int = 0
    dp: list[np.ndarray] = field(default_factory=list)
    base_nll: float = 0.0

    def add(self, base_logp: np.ndarray, logp: np.ndarray, targets: np.ndarray) -> None:
        pb = np.exp(base_logp)
        self.kld.append(np.sum(pb * (base_logp - logp), axis=-1))
        self.same_top += int(np.sum(np.argmax(base_logp, -1) == np.argmax(logp, -1)))
        self.n += logp.shape[0]
        r = np.arange(len(targets))
        self.dp.append(np.exp(logp[r, targets]) - pb[r, targets])
        self.base_nll -= float(np.sum(base_logp[r, targets]))

    def summary(self, ppl: float) -> dict:
        k = np.concatenate(self.kld) if self.kld else np.zeros(0)
        dp = np.concatenate(self.dp) if self.dp else np.zeros(0)
        base_ppl = math.exp(self.base_nll / max(self.n, 1))
        pct = {f"p{q}": float(np.percentile(dp, q)) for q in (1, 5, 10, 25, 50, 75, 90, 95, 99)} if len(dp) else {}
        return {
            "kld_mean": float(k.mean()) if len(k) else float("nan"),
            "kld_median": float(np.median(k)) if len(k) else float("nan"),
            "kld_p99": float(np.percentile(k, 99)) if len(k) else float("nan"),
            "top1_agreement": self.same_top / max(self.n, 1),
            "ppl_base": base_ppl,
            "ppl_ratio": ppl / base_ppl if base_ppl > 0 else float("nan"),
            "delta_p_mean": float(dp.mean()) if len(dp) else float("nan"),
            "delta_p_percentiles": pct,
        }


def perplexity(
    model,
    tokens: list[int],
    bos_id: int,
    ctx: int = 512,
    chunks: int | None = None,
    kv: KVConfig | None = None,
    kl_base: str | None = None,
    kl_compare: bool = False,
    progress: Callable[[int, int, float], None] | None = None,
    batch: int = 512,
) -> PplResult:
    if ctx < 8:
        raise UserError(f"-c/--ctx {ctx} is too small; use at least 8 (llama-perplexity scores the second half)")
    n_chunk_max = len(tokens) // ctx
    if n_chunk_max == 0:
        raise UserError(
            f"the text has {len(tokens)} tokens, fewer than one chunk of {ctx}; use a longer file or a smaller -c"
        )
    n_chunk = min(chunks, n_chunk_max) if chunks and chunks > 0 else n_chunk_max
    first = ctx // 2
    n_scored = ctx - 1 - first
    writer = reader = None
    stats = KLStats()
    if kl_base and kl_compare:
        reader = KLBaseReader(Path(kl_base))
        if reader.meta.get("ctx") != ctx or reader.meta.get("n_scored") < n_chunk * n_scored:
            raise UserError(
                f"KL base {kl_base} was made with ctx {reader.meta.get('ctx')} and "
                f"{reader.meta.get('n_scored')} scored tokens; run with the same -c and --chunks"
            )
    elif kl_base:
        writer = KLBaseWriter(
            Path(kl_base), model.cfg.n_vocab, n_chunk * n_scored, {"ctx": ctx, "n_chunks": n_chunk}
        )
    nlls: list[float] = []
    t0 = time.perf_counter()
    for c in range(n_chunk):
        chunk = list(tokens[c * ctx : (c + 1) * ctx])
        chunk[0] = bos_id
        cache = model.new_cache(kv)
        rows = []
        for a in range(0, ctx, batch):
            part = chunk[a : a + batch]
            idx = [j - a for j in range(a, a + len(part)) if first <= j <= ctx - 2]
            lg, _ = model.forward(part, cache, logits_rows=np.asarray(idx, np.int64) if idx else None)
            if idx:
                rows.append(lg)
        logits = np.concatenate(rows, axis=0)
        logp = log_softmax(logits)
        targets = np.asarray(chunk[first + 1 : ctx], np.int64)
        nll = -float(np.sum(logp[np.arange(n_scored), targets]))
        nlls.append(nll)
        if writer is not None:
            writer.add(logp, targets)
        if reader is not None:
            base = np.asarray(reader.arr[reader.i : reader.i + n_scored], np.float64)
            if not np.array_equal(reader.targets[reader.i : reader.i + n_scored], targets):
                raise UserError(f"KL base {kl_base} was made on other tokens; use the same text file and -c")
            reader.i += n_scored
            stats.add(base, logp, targets)
        if progress:
            progress(c + 1, n_chunk, math.exp(sum(nlls) / ((c + 1) * n_scored)))
    if writer is not None:
        writer.close()
    per_tok = np.asarray(nlls) / n_scored
    mean_nll = float(per_tok.mean())
    ppl = math.exp(mean_nll)
    # llama-perplexity's ± : from the spread of per-token NLL; here from the chunk means
    std = ppl * float(per_tok.std(ddof=1) / math.sqrt(len(per_tok))) if len(per_tok) > 1 else 0.0
    res = PplResult(ppl, std, n_chunk * n_scored, n_chunk, ctx, nlls, time.perf_counter() - t0)
    if reader is not None:
        res.kld = stats.summary(ppl)
    return res
