"""MTP speculation (``--spec mtp --mtp-head PATH``): the assistant drafts from the target's state.

Each round the assistant is fed ``id_last`` and ``h_prev`` (the target's final-norm hidden
state at the last accepted position, attn_pos) and runs ``n_steps`` draft steps at positions
attn_pos+1.., attending read-only over the target's KV cache (cells <= attn_pos) of the last
sliding and the last global layer (engine/models/gemma4_assistant.py). It has no KV of its own,
so a round depends only on (id_last, h_prev, attn_pos) and the cache cells <= attn_pos —
rejected drafts never need rolling back here. Greedy drafts: q is one-hot (Proposal.q None).
Path values (sync / lazy) and h_l2 (= ||h_prev||, Round.h_l2) come from the base class / loop.
"""

from __future__ import annotations

import threading
from importlib import resources
from pathlib import Path

from turbospec.engine.models.gemma4_assistant import Gemma4Assistant
from turbospec.engine.spec.base import Drafter, Proposal, Round
from turbospec.errors import UserError

SHIPPED_HEAD = "mtp-gemma3-270m.gguf"  # package data in turbospec.engine.data (the default model's assistant)


def shipped_head_path() -> Path | None:
    try:
        p = resources.files("turbospec.engine.data") / SHIPPED_HEAD
    except (ModuleNotFoundError, TypeError):
        return None
    return Path(str(p)) if p.is_file() else None


class MTPDrafter(Drafter):
    name = "mtp"

    def __init__(self, assistant: Gemma4Assistant, target):
        super().__init__()
        self.assistant = assistant
        self.target = target

    @classmethod
    def load(cls, path: str | Path | None, target, tok) -> MTPDrafter:
        """Load and validate an assistant for ``target`` (None = the shipped one); one-line UserError."""
        if path is None:
            path = shipped_head_path()
            if path is None:
                raise UserError(
                    "no MTP assistant is shipped in this build; build one with `turbospec train-assistant --out "
                    "PATH` and pass --mtp-head PATH (or use --spec ngram)"
                )
        a = Gemma4Assistant.load(path)
        a.validate(target, tok.tokens)
        return cls(a, target)

    def propose(self, rnd: Round, cancelled: threading.Event) -> Proposal:
        sess = self.session
        if sess is None:
            raise RuntimeError("MTPDrafter.propose before begin()")
        toks = self.assistant.draft(self.target, sess.cache, rnd.id_last, rnd.h_prev, rnd.attn_pos, rnd.n_steps,
                                    cancelled, p_min=self.p_min)
        return Proposal(tokens=toks, extra={"h_l2": rnd.h_l2})
