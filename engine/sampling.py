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

    def probs(self, logits: np.ndarray, history: list[int] | None = None) -> np.ndarray:
        """The distribution the sampler draws from (dense, float64, sums to 1)."""
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
        x = lg[order].astype(np.float64)
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
        out = np.zeros(n, np.float64)
        out[order] = q
        return out

    def sample(self, logits: np.ndarray, history: list[int] | None = None) -> int:
        if self.cfg.greedy and (self.cfg.repeat_penalty == 1.0 or not history):
            return int(np.argmax(logits))
        p = self.probs(logits, history)
        return self.draw(p)

    def draw(self, p: np.ndarray) -> int:
        nz = np.nonzero(p)[0]
        if len(nz) == 1:
            return int(nz[0])
        cum = np.cumsum(p[nz])
        u = self.rng.random() * cum[-1]
        return int(nz[min(int(np.searchsorted(cum, u, side="right")), len(nz) - 1)])


def top_probability(scores: np.ndarray) -> float:
    """softmax(scores).max() in float64: 1 / sum(exp(s - max)); entries of -1e30 count as 0.
    What --draft-p-min compares (the MTP assistant's routed candidates, a draft model's logits)."""
    s = np.asarray(scores, np.float64)
    return float(1.0 / np.exp(s - s.max()).sum())
