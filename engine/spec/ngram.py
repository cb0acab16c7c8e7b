"""Prompt-lookup drafting (``--spec ngram``): no weights, the baseline every user has.

Match the longest suffix n-gram of the accepted history (n from ``n_max`` down to ``n_min``)
against its most recent earlier occurrence in the history (prompt + generated) and propose the
tokens that followed it. Deterministic, so its q is one-hot.
"""

from __future__ import annotations

import threading
from dataclasses import replace

from turbospec.engine.spec.base import BLOCK_SIZE_MAX, Drafter, Proposal, Round


def lookup_reference(tokens: list[int], n_steps: int, n_max: int = 3, n_min: int = 1) -> list[int]:
    """The plain O(n·L) scan the indexed drafter must agree with (the test oracle)."""
    L = len(tokens)
    for n in range(min(n_max, L - 1), n_min - 1, -1):
        suffix = tokens[L - n :]
        for end in range(L - 2, n - 2, -1):  # ngram tokens[end-n+1 .. end], end < L-1
            if tokens[end - n + 1 : end + 1] == suffix:
                return continuation(tokens, end, n_steps)
    return []


def continuation(tokens: list[int], end: int, n_steps: int) -> list[int]:
    """What followed the match ending at ``end``; when it runs into the end of the history the
    copy goes on over the tokens it proposed (a periodic history keeps its period)."""
    seq = list(tokens[end + 1 : end + 1 + n_steps])
    for k in range(n_steps - len(seq)):
        seq.append(seq[k])
    return seq[:n_steps]


class NGramDrafter(Drafter):
    """Prompt lookup with an incremental index: ngram -> the last position where it ended."""

    name = "ngram"

    def __init__(self, n_max: int = 3, n_min: int = 1, adapt: bool = False):
        super().__init__()
        if not 1 <= n_min <= n_max:
            raise ValueError("ngram sizes need 1 <= n_min <= n_max")
        self.n_max, self.n_min = n_max, n_min
        self.adapt = adapt  # --lookup-adapt: cap a round's drafts by how the last lookup round fared
        self._hist: list[int] = []
        self._index: list[dict[tuple[int, ...], int]] = [{} for _ in range(n_max + 1)]
        self._indexed = 0  # ngrams ending at positions < _indexed are in the index
        self.cap: int | None = None  # adapt: drafts per round at most (None = the round's n_steps)
        self._last_n = 0  # drafts of the latest proposal (0 = no match)

    def begin(self, session, prompt_ids: list[int]) -> None:
        super().begin(session, prompt_ids)
        self._hist = []
        self._index = [{} for _ in range(self.n_max + 1)]
        self._indexed = 0
        self.cap, self._last_n = None, 0

    def accept(self, n_accepted: int) -> None:
        """With ``adapt``: a lookup round that lost a draft caps the next ones at what it got
        right plus one; each fully accepted round doubles the cap, back to none. On this model's
        greedy text lookup is right for whole loops (chat, translation: ~100% at B = 10) and
        wrong from the first draft on fresh text (code, lists), where every rejected draft still
        costs the verify pass ~0.12-0.18 of a plain step (benchmarks/bench_verify.py): the cap
        keeps large B for the loops without paying it on the misses. Drafts stay exact (the
        target verifies them); only how many are proposed changes."""
        k, self._last_n = self._last_n, 0
        if not self.adapt or k == 0:
            return
        if n_accepted < k:
            self.cap = n_accepted + 1
        elif self.cap is not None:
            self.cap = None if self.cap * 2 > BLOCK_SIZE_MAX else self.cap * 2

    def _sync(self, tokens: list[int]) -> None:
        h = self._hist
        if len(tokens) < len(h) or (h and (tokens[0] != h[0] or tokens[len(h) - 1] != h[-1])):
            # not an extension of what we indexed (a new prompt without begin()): rebuild
            self._hist, self._indexed = [], 0
            self._index = [{} for _ in range(self.n_max + 1)]
            h = self._hist
        h.extend(tokens[len(h) :])
        # index ngrams ending at positions < L-1 (each needs a following token)
        stop = len(h) - 1
        for end in range(self._indexed, stop):
            for n in range(self.n_min, self.n_max + 1):
                if end - n + 1 < 0:
                    break
                self._index[n][tuple(h[end - n + 1 : end + 1])] = end
        self._indexed = max(self._indexed, stop)

    def propose(self, rnd: Round, cancelled: threading.Event) -> Proposal:
        self._sync(rnd.tokens)
        h = self._hist
        L = len(h)
        for n in range(min(self.n_max, L - 1), self.n_min - 1, -1):
            end = self._index[n].get(tuple(h[L - n :]))
            if end is not None:
                n_steps = rnd.n_steps if self.cap is None else min(self.cap, rnd.n_steps)
                toks = continuation(h, end, n_steps)
                self._last_n = len(toks)
                return Proposal(tokens=toks, extra={"n": n})
        self._last_n = 0
        return Proposal(tokens=[])


class LookupFirst(Drafter):
    """``--spec mtp --draft-lookup N``: prompt lookup first, the assistant otherwise.

    When the last ``n_min`` or more tokens of the accepted history occurred earlier, the round's
    drafts are what followed them (no assistant step: microseconds); otherwise ``inner`` drafts.
    The two are complementary on a small model: its greedy text falls into loops that lookup
    copies at 100% while the assistant, which cannot see that far back, guesses; on fresh text
    lookup has no match and the assistant carries the round. Each round's trace line names the
    drafter that produced it (``drafter``: "ngram" or the inner drafter's name); ``name`` (the
    run's ``spec``) stays the inner drafter's. Rounds depend only on their inputs for both parts
    (the MTP assistant keeps no KV of its own), so either may serve any round, on the worker
    thread too (pipeline depth 2). ``inner_max`` (``--mtp-draft-max``) caps the inner drafter's
    rounds only: lookup's drafts on a loop are accepted nearly always and pay at large B, while
    the shipped assistant's second and later drafts rarely are (benchmarks/results/spec_greedy.md)."""

    def __init__(self, inner: Drafter, n_min: int, n_max: int = 3, inner_max: int = 0, adapt: bool = False):
        super().__init__()
        if n_min < 1 or inner_max < 0:
            raise ValueError("LookupFirst needs n_min >= 1 and inner_max >= 0")
        self.inner = inner
        self.inner_max = inner_max  # > 0: the inner drafter's rounds draft at most this many (lookup's up to n_steps)
        self.name = inner.name
        self.lookup = NGramDrafter(n_max=max(n_max, n_min), n_min=n_min, adapt=adapt)
        self.served = {"ngram": 0, inner.name: 0}  # rounds each part drafted

    @property
    def p_min(self) -> float:  # --draft-p-min applies to the assistant's drafts
        return self.inner.p_min

    @p_min.setter
    def p_min(self, value: float) -> None:
        self.inner.p_min = value

    def begin(self, session, prompt_ids: list[int]) -> None:
        super().begin(session, prompt_ids)
        self.inner.begin(session, prompt_ids)
        self.lookup.begin(session, prompt_ids)
        self.served = dict.fromkeys(self.served, 0)

    def close(self) -> None:
        super().close()
        self.inner.close()

    def accept(self, n_accepted: int) -> None:
        self.lookup.accept(n_accepted)  # counts only when lookup drafted the round (--lookup-adapt)
        self.inner.accept(n_accepted)

    def propose(self, rnd: Round, cancelled: threading.Event) -> Proposal:
        prop = self.lookup.propose(rnd, cancelled)
        source = "ngram"
        if not prop.tokens:
            if self.inner_max and rnd.n_steps > self.inner_max:
                rnd = replace(rnd, n_steps=self.inner_max)
            prop, source = self.inner.propose(rnd, cancelled), self.inner.name
        prop.extra["source"] = source
        self.served[source] += 1
        return prop
