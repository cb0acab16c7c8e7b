"""Draft-model speculation (``--spec draft --model-draft PATH``): a separate small model sharing
the target's vocabulary drafts greedily in its own Session (its own KV cache).

Each round the draft session is brought to the accepted history: it keeps the longest common
prefix with it (rolling back its own rejected drafts), runs the missing tokens plus ``id_last``
in one forward, then one forward per further draft. Greedy drafts are deterministic (q one-hot).
"""

from __future__ import annotations

import threading

import numpy as np

from turbospec.engine.sampling import top_probability
from turbospec.engine.spec.base import Drafter, Proposal, Round
from turbospec.errors import UserError

VOCAB_CHECK_FROM = 5  # like the fork's verifier: token text compared from id 5 on (specials may differ)


def check_vocab(target_tokens: list[str], draft_tokens: list[str], draft_name: str) -> None:
    """One clear line when the draft model's vocabulary differs from the target's."""
    if len(target_tokens) != len(draft_tokens):
        raise UserError(
            f"draft model {draft_name} has a vocabulary of {len(draft_tokens)} tokens, the target has "
            f"{len(target_tokens)}; --model-draft needs a model with the target's tokenizer"
        )
    for i in range(VOCAB_CHECK_FROM, len(target_tokens)):
        if target_tokens[i] != draft_tokens[i]:
            raise UserError(
                f"draft model {draft_name}: token {i} is {draft_tokens[i]!r}, the target's is "
                f"{target_tokens[i]!r}; --model-draft needs a model with the target's tokenizer"
            )


class DraftModelDrafter(Drafter):
    name = "draft"

    def __init__(self, model, kv=None, n_ctx: int = 4096):
        super().__init__()
        from turbospec.engine.generate import Session

        self.model = model
        self.dsess = Session(model, kv, n_ctx)

    @classmethod
    def load(cls, path: str, target_tokens: list[str], storage: str = "auto", kv=None, n_ctx: int = 4096):
        from pathlib import Path

        from turbospec.engine.loader import load_model, load_tokenizer

        if not Path(path).exists():
            raise UserError(f"draft model not found: {path}; pass an existing GGUF with --model-draft")
        m = load_model(path, storage=storage, quiet=True)
        check_vocab(target_tokens, load_tokenizer(m).tokens, Path(path).name)
        return cls(m, kv, n_ctx)

    def begin(self, session, prompt_ids: list[int]) -> None:
        super().begin(session, prompt_ids)
        self.dsess.reset()

    def _common_prefix(self, toks: list[int]) -> int:
        have = self.dsess.tokens
        n = min(len(have), len(toks))
        if n and have[:n] == toks[:n]:
            return n
        a = np.asarray(have[:n])
        b = np.asarray(toks[:n])
        diff = np.nonzero(a != b)[0]
        return int(diff[0]) if len(diff) else n

    def propose(self, rnd: Round, cancelled: threading.Event) -> Proposal:
        s = self.dsess
        hist = rnd.tokens  # ends with id_last
        keep = self._common_prefix(hist)
        keep = min(keep, len(hist) - 1)  # always run id_last, so its logits are fresh
        if keep < s.n_past:
            s.rollback(keep)
        feed = hist[keep:]
        out: list[int] = []
        for _ in range(rnd.n_steps):
            if cancelled.is_set():
                break
            logits, s.hidden = self.model.forward(feed, s.cache, logits_rows="last")
            s.tokens.extend(feed)
            t = int(np.argmax(logits[-1]))
            if self.p_min > 0 and top_probability(logits[-1]) < self.p_min:
                break  # t is not proposed (nor fed: the draft session holds exactly its tokens)
            out.append(t)
            feed = [t]
        return Proposal(tokens=out)
