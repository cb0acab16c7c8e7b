"""Exact verification of a drafted block.

The target ran one forward over ``[id_last, d_0 .. d_{n-1}]``; row i of its logits is the
target's distribution for the token after row i's token. Two rules:

- greedy: accept the longest prefix of drafts equal to what the plain sampler would pick
  (``Sampler.sample`` — argmax, with the repetition penalty over the history when set), then
  one bonus token from the row after the last accepted draft. Token-identical to plain greedy
  decoding because every target token comes from the same ``Session.step`` path.
- sampling: speculative rejection sampling (Leviathan et al. / Chen et al.). Draft i is accepted
  with probability min(1, p_i(d_i) / q_i(d_i)); on the first rejection the token is drawn from
  norm(max(0, p_i - q_i)); when every draft is accepted the bonus comes from p_n. p_i is
  ``Sampler.probs`` (the exact distribution plain sampling draws from, with the history
  extended by the accepted drafts); q_i is the drafter's distribution, one-hot at d_i for
  deterministic drafters. The output distribution then equals the target's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Verdict:
    n_accepted: int  # drafts accepted (a prefix)
    tokens: list[int]  # what this round emits: drafts[:n_accepted] + [bonus or correction]


def verify_greedy(logits: np.ndarray, drafts: list[int], sampler, history: list[int]) -> Verdict:
    """``history`` ends with id_last (the token of logits row 0)."""
    hist = list(history)
    n = 0
    for i, d in enumerate(drafts):
        t = sampler.sample(logits[i], hist)
        if t != d:
            return Verdict(n, list(drafts[:n]) + [t])
        n += 1
        hist.append(d)
    bonus = sampler.sample(logits[len(drafts)], hist)
    return Verdict(n, list(drafts) + [bonus])


def verify_sampling(
    logits: np.ndarray,
    drafts: list[int],
    sampler,
    history: list[int],
    q: list[np.ndarray] | None = None,
) -> Verdict:
    """Speculative rejection sampling; ``q[i]`` dense draft distributions (None = one-hot:
    _verify_sampling_one_hot)."""
    hist = list(history)
    rng = sampler.rng
    if q is None:
        return _verify_sampling_one_hot(logits, drafts, sampler, hist)
    for i, d in enumerate(drafts):
        p = sampler.probs(logits[i], hist)
        qi = np.asarray(q[i], dtype=np.float64)
        qd = float(qi[d])
        pd = float(p[d])
        # accept with probability min(1, p/q); q(d) > 0 whenever the drafter could draw d
        if qd > 0 and (pd >= qd or rng.random() * qd < pd):
            hist.append(d)
            continue
        r = np.maximum(p - qi, 0.0)
        s = r.sum()
        # s == 0 only when p == q exactly, where rejection has probability 0; fall back to p
        t = sampler.draw(r / s) if s > 0 else sampler.draw(p)
        return Verdict(i, list(drafts[:i]) + [t])
    bonus = sampler.draw(sampler.probs(logits[len(drafts)], hist))
    return Verdict(len(drafts), list(drafts) + [bonus])


def _verify_sampling_one_hot(logits: np.ndarray, drafts: list[int], sampler, hist: list[int]) -> Verdict:
    """verify_sampling for deterministic drafters (q one-hot at each draft: prompt lookup, the
    MTP assistant's greedy drafts) over the sampler's sparse candidates: accept d with
    probability p(d); on a rejection draw from p without d, renormalized. The same rule as the
    dense loop, without a 262,144-entry float64 row per verified token."""
    rng = sampler.rng
    for i, d in enumerate(drafts):
        ids, p = sampler.candidates(logits[i], hist)
        at = np.flatnonzero(ids == d)
        pd = float(p[at[0]]) if len(at) else 0.0
        if pd >= 1.0 or rng.random() < pd:
            hist.append(d)
            continue
        r_ids, r = (np.delete(ids, at[0]), np.delete(p, at[0])) if len(at) else (ids, p)
        s = r.sum()
        t = sampler.draw_sparse(r_ids, r / s) if s > 0 else sampler.draw_sparse(ids, p)
        return Verdict(i, list(drafts[:i]) + [t])
    bonus = sampler.draw_sparse(*sampler.candidates(logits[len(drafts)], hist))
    return Verdict(len(drafts), list(drafts) + [bonus])


def verify(logits: np.ndarray, drafts: list[int], sampler, history: list[int], q=None) -> Verdict:
    if sampler.cfg.greedy:
        return verify_greedy(logits, drafts, sampler, history)
    return verify_sampling(logits, drafts, sampler, history, q)
