"""Prompt-lookup drafting (``--spec ngram``): no weights, the baseline every user has.

Match the longest suffix n-gram of the accepted history (n from ``n_max`` down to ``n_min``)
against its most recent earlier occurrence in the history (prompt + generated) and propose the
tokens that followed it. Deterministic, so its q is one-hot.
"""

from __future__ import annotations

import threading

from turbospec.engine.spec.base import Drafter, Proposal, Round


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

    def __init__(self, n_max: int = 3, n_min: int = 1):
        super().__init__()
        if not 1 <= n_min <= n_max:
            raise ValueError("ngram sizes need 1 <= n_min <= n_max")
        self.n_max, self.n_min = n_max, n_min
        self._hist: list[int] = []
        self._index: list[dict[tuple[int, ...], int]] = [{} for _ in range(n_max + 1)]
        self._indexed = 0  # ngrams ending at positions < _indexed are in the index

    def begin(self, session, prompt_ids: list[int]) -> None:
        super().begin(session, prompt_ids)
        self._hist = []
        self._index = [{} for _ in range(self.n_max + 1)]
        self._indexed = 0

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
                return Proposal(tokens=continuation(h, end, rnd.n_steps), extra={"n": n})
        return Proposal(tokens=[])
