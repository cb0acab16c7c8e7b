"""Sampling from logits: greedy, temperature, top-k, top-p, min-p, repetition penalty.

The order follows llama.cpp's common sampler chain: repetition penalty -> top-k -> top-p ->
min-p -> temperature -> draw. ``temp <= 0`` is greedy (argmax, ties to the lowest id).
``probs`` exposes the final distribution so speculative rejection sampling can use the very
same one the plain sampler draws from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SamplingConfig:
    temp: float = 0.0
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int = -1

    @property
    def greedy(self) -> bool:
        return self.temp <= 0


class Sampler:
    def __init__(self, cfg: SamplingConfig):
        self.cfg = cfg
        self.rng = np.random.default_rng(None if cfg.seed < 0 else cfg.seed)

    def penalize(self, logits: np.ndarray, history: list[int]) -> np.ndarray:
        c = self.cfg
        if c.repeat_penalty == 1.0 or not history:
            return logits
        ids = np.unique(np.asarray(history[-c.repeat_last_n :], dtype=np.int64))
        out = logits.astype(np.float32, copy=True)
        v = out[ids]
        out[ids] = np.where(v > 0, v / c.repeat_penalty, v * c.repeat_penalty)
        return out

    def candidates(self, logits: np.ndarray, history: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The distribution the sampler draws from, sparse: (token ids by logit descending, ties
        lower id first; their probabilities, float64, summing to 1). ``probs`` is its dense form.

        Napkin math, the default model (262,144 logits, top-k 40): the reference's argpartition over
        the whole row costs ~2.5 ms and its dense float64 output another ~1 ms, once per sampled token
        and once per verified row. Here the top-k comes from a threshold that cannot miss: the k-th
        largest of the 1,024 block maxima (blocks of 256) is at most the row's k-th largest value, so
        every top-k entry is >= it; the few entries that pass are then ordered exactly as the
        reference orders its k (``probs_reference``; tests/engine/test_runtime.py compares them on
        fresh random rows, ties included). The float64 steps after the cut are the reference's."""
        c = self.cfg
        lg = self.penalize(np.asarray(logits, dtype=np.float32).reshape(-1), history or [])
        n = lg.shape[0]
        if c.greedy:
            return np.array([int(np.argmax(lg))], np.int64), np.ones(1, np.float64)
        if 0 < c.top_k < n:
            order = _top_k(lg, c.top_k)
        else:
            keep = np.arange(n)
            order = keep[np.lexsort((keep, -lg))]
        x = lg[order].astype(np.float64)
        return self._cut(order, x)

    def _cut(self, order: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """top-p, min-p and temperature over candidates sorted by logit (x, float64, descending)."""
        c = self.cfg
        p = np.exp(x - x[0])
        p /= p.sum()
        if c.top_p < 1.0:
            cum = np.cumsum(p)
            last = int(np.searchsorted(cum, c.top_p)) + 1
            order, x = order[:last], x[:last]
        if c.min_p > 0.0:
            pm = np.exp(x - x[0])
            sel = pm >= c.min_p
            sel[0] = True
            order, x = order[sel], x[sel]
        x = x / c.temp
        q = np.exp(x - x.max())
        q /= q.sum()
        return order, q

    def probs(self, logits: np.ndarray, history: list[int] | None = None) -> np.ndarray:
        """The distribution the sampler draws from (dense, float64, sums to 1)."""
        ids, q = self.candidates(logits, history)
        out = np.zeros(np.asarray(logits).size, np.float64)
        out[ids] = q
        return out

    def probs_reference(self, logits: np.ndarray, history: list[int] | None = None) -> np.ndarray:
        """The plain version of ``probs`` (argpartition over the whole row), kept as the reference
        the fast path is tested against."""
        c = self.cfg
        lg = self.penalize(np.asarray(logits, dtype=np.float32).reshape(-1), history or [])
        n = lg.shape[0]
        if c.greedy:
            p = np.zeros(n, np.float64)
            p[int(np.argmax(lg))] = 1.0
            return p
        keep = np.arange(n)
        if 0 < c.top_k < n:
            keep = np.argpartition(-lg, c.top_k - 1)[: c.top_k]
        # sort the kept candidates by logit, descending (ties: lower id first)
        order = keep[np.lexsort((keep, -lg[keep]))]
        order, q = self._cut(order, lg[order].astype(np.float64))
        out = np.zeros(n, np.float64)
        out[order] = q
        return out

    def sample(self, logits: np.ndarray, history: list[int] | None = None) -> int:
        if self.cfg.greedy and (self.cfg.repeat_penalty == 1.0 or not history):
            return int(np.argmax(logits))
        return self.draw_sparse(*self.candidates(logits, history))

    def draw(self, p: np.ndarray) -> int:
        nz = np.nonzero(p)[0]
        if len(nz) == 1:
            return int(nz[0])
        cum = np.cumsum(p[nz])
        u = self.rng.random() * cum[-1]
        return int(nz[min(int(np.searchsorted(cum, u, side="right")), len(nz) - 1)])

    def draw_sparse(self, ids: np.ndarray, q: np.ndarray) -> int:
        """``draw`` of the dense row that holds q at ids (any order, no id twice): the same
        token for the same generator state, and the generator advanced the same."""
        i = np.argsort(ids, kind="stable")
        ids, q = ids[i], q[i]
        nz = q != 0
        if not nz.all():
            ids, q = ids[nz], q[nz]
        if len(ids) == 1:
            return int(ids[0])
        cum = np.cumsum(q)
        u = self.rng.random() * cum[-1]
        return int(ids[min(int(np.searchsorted(cum, u, side="right")), len(ids) - 1)])


BLOCK = 256  # _top_k's blocks: 1,024 maxima for the default model's 262,144 logits


def _top_k(lg: np.ndarray, k: int) -> np.ndarray:
    """The ids of the k largest logits, by logit descending, ties lower id first (a row with a
    NaN takes the reference's argpartition: a NaN threshold would pass nothing; a row with fewer
    blocks than k, the full sort)."""
    n = lg.shape[0]
    nb = n // BLOCK
    maxima = lg[: nb * BLOCK].reshape(nb, BLOCK).max(axis=1) if nb else lg[:0]
    maxima = np.concatenate([maxima, lg[nb * BLOCK :]])  # the tail: each entry its own block
    if np.isnan(maxima).any():
        keep = np.argpartition(-lg, k - 1)[:k]
        return keep[np.lexsort((keep, -lg[keep]))]
    if len(maxima) < k:  # a small row (fewer blocks than k): the full sort, ties to the lowest ids
        keep = np.arange(n)
        return keep[np.lexsort((keep, -lg))][:k]
    t = np.partition(maxima, len(maxima) - k)[len(maxima) - k]  # k distinct blocks reach t
    keep = np.flatnonzero(lg >= t)
    return keep[np.lexsort((keep, -lg[keep]))][:k]


def top_probability(scores: np.ndarray) -> float:
    """softmax(scores).max() in float64: 1 / sum(exp(s - max)); entries of -1e30 count as 0.
    What --draft-p-min compares (the MTP assistant's routed candidates, a draft model's logits)."""
    s = np.asarray(scores, np.float64)
    return float(1.0 / np.exp(s - s.max()).sum())
