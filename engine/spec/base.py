"""The drafter interface and the per-round bookkeeping of speculative decoding.

One round, in the fork's words (DESIGN.md, "MTP assistant"):

- ``id_last``: the token fed to the first draft step — the previous round's bonus token (or the
  token sampled from the prompt's logits), NOT yet in the target's KV cache; it sits at
  position ``attn_pos + 1``.
- ``attn_pos``: the position of the last cell in the target's KV cache after rejected drafts
  were removed (= ``session.n_past - 1``). Draft step k (k = 0..n_steps-1) sits at
  ``attn_pos + 1 + k``: step 0 is fed ``id_last`` and proposes the token for ``attn_pos + 2``.
- ``h_prev``: the target's final-norm hidden state at the LAST ACCEPTED position (= attn_pos),
  never a rejected draft's. ``h_idx`` is its row in the last verify batch (-1 = the batch's
  last row, e.g. after a prefill, a plain step or a fully accepted round).
- ``n_steps = min(B - 1, draft_max)`` (also capped by the tokens left to generate and the
  context), 0 when the round is skipped.
- ``path``: ``sync`` (computed inside :meth:`Drafter.draft`), ``lazy`` (a request submitted by
  :meth:`Drafter.prepare_next` at the end of the previous round was awaited), ``skip-nsteps``,
  ``skip-streak`` (the loop decodes one plain token; no accept line).

A drafter implements :meth:`Drafter.propose` (pure with respect to the target: it may READ the
target session's KV cache at positions <= attn_pos and its model, and may write only its own
state) plus, optionally, :meth:`begin`, :meth:`accept` and :meth:`close`. The base class runs
``propose`` synchronously in :meth:`draft`, or on its worker thread when the loop calls
:meth:`prepare_next` (pipeline depth 2); :meth:`cancel` drains the one request in flight. The
loop never calls the target model while a request is in flight.

How ``turbospec run --spec mtp`` builds it (engine/cmd_run.py)::

    from turbospec.engine.spec.mtp_device import load_mtp_drafter
    drafter = load_mtp_drafter(args.mtp_head, model, tok)  # head path or None (= the shipped
    # assistant); MTPDrafter (NumPy) or DeviceMTPDrafter (--backend cupy: the assistant on the
    # kernels, its own stream); raises UserError on a bad file

Writing a drafter (e.g. ``engine/spec/mtp.py``)::

    class MTPDrafter(Drafter):
        name = "mtp"
        def __init__(self, target_model, head_path, ...): ...
        def begin(self, session, prompt_ids):     # session.model (embed(), cfg), session.cache
            super().begin(session, prompt_ids)
        def propose(self, rnd: Round, cancelled: threading.Event) -> Proposal:
            # rnd.id_last, rnd.h_prev, rnd.attn_pos, rnd.n_steps; read
            # self.session.cache.layers[i].attend(q, qpos, scale, max_pos=rnd.attn_pos)
            return Proposal(tokens=[...])          # greedy: q = None (one-hot)
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PATH_SYNC = "sync"
PATH_LAZY = "lazy"
PATH_SKIP_STREAK = "skip-streak"
PATH_SKIP_NSTEPS = "skip-nsteps"

BLOCK_SIZE_MIN, BLOCK_SIZE_MAX = 2, 32
SKIP_STREAK_MIN, SKIP_STREAK_MAX = 1, 32


@dataclass
class Round:
    """The inputs of one drafting round (immutable once built; shared with the worker thread)."""

    iter: int  # the fork's iter: advances after each accept line; a skip shares it with the next draft
    id_last: int  # token fed to draft step 0, at position attn_pos + 1, not yet in the KV cache
    attn_pos: int  # last cell of the target's KV cache (= session.n_past - 1)
    h_idx: int  # row of h_prev in the last verify batch; -1 = that batch's last row
    h_prev: np.ndarray  # (n_embd,) float32 final-norm hidden state of the last accepted position
    n_steps: int  # drafts requested: min(B-1, draft_max, tokens left - 1, context left); 0 = skip
    tokens: list[int] = field(default_factory=list)  # accepted history: prompt + generated, ends with id_last
    path: str = PATH_SYNC  # set by Drafter.draft / the loop

    @property
    def h_l2(self) -> float:
        """||h_prev||_2 (the fork's ``h_l2``)."""
        return float(np.sqrt(np.dot(self.h_prev.astype(np.float64), self.h_prev.astype(np.float64))))

    def key(self) -> tuple[int, int, int, int]:
        """What identifies a round's inputs: a prepared request is used only when it matches."""
        return (self.attn_pos, self.id_last, self.n_steps, len(self.tokens))


@dataclass
class Proposal:
    """A drafter's answer: up to n_steps tokens and, optionally, the distributions they were
    drawn from (q[i] dense over the vocabulary). ``q is None`` means deterministic drafts
    (greedy / prompt lookup): each q[i] is one-hot at tokens[i], which rejection sampling uses."""

    tokens: list[int]
    q: list[np.ndarray] | None = None
    us: int = 0  # microseconds spent producing it (the worker's compute time, not waiting)
    extra: dict[str, Any] = field(default_factory=dict)


class Drafter:
    """Base class: begin / draft / accept / prepare_next / cancel (+ close).

    Subclasses implement :meth:`propose`. Exactly one request is in flight at a time.
    """

    name = "base"
    p_min = 0.0  # --draft-p-min: drafters with probabilities (mtp, draft) end a round's drafts at
    # the first one below it; prompt lookup has none (the CLI refuses P > 0 for it)

    def __init__(self) -> None:
        self.session = None
        self._worker: _Worker | None = None
        self.last: Proposal | None = None  # the proposal returned by the latest draft()

    # -- lifecycle ---------------------------------------------------------------------------
    def begin(self, session, prompt_ids: list[int]) -> None:
        """A new prompt: the target session is prefilled with ``prompt_ids``. Drains any request."""
        self.cancel()
        self.session = session

    def close(self) -> None:
        """Drain and stop the worker thread (idempotent)."""
        self.cancel()
        if self._worker is not None:
            self._worker.stop()
            self._worker = None

    # -- the work (subclasses) -----------------------------------------------------------------
    def propose(self, rnd: Round, cancelled: threading.Event) -> Proposal:  # pragma: no cover - abstract
        """Produce up to ``rnd.n_steps`` drafts. Check ``cancelled`` between steps to stop early."""
        raise NotImplementedError

    def accept(self, n_accepted: int) -> None:
        """The target accepted the first ``n_accepted`` drafts of the last draft() (hook)."""

    # -- the round protocol ------------------------------------------------------------------
    def draft(self, rnd: Round) -> list[int]:
        """The drafts for ``rnd``: awaits a matching prepared request (path ``lazy``), else
        computes them here (path ``sync``). Sets ``rnd.path`` and ``self.last``."""
        w = self._worker
        prop = None
        if w is not None and w.busy:
            prop = w.wait(rnd.key())  # None when the prepared round does not match (drained)
        if prop is not None:
            rnd.path = PATH_LAZY
        else:
            rnd.path = PATH_SYNC
            t0 = time.perf_counter()
            prop = self.propose(rnd, _NEVER)
            prop.us = int((time.perf_counter() - t0) * 1e6)
        prop.tokens = [int(t) for t in prop.tokens[: rnd.n_steps]]
        if prop.q is not None:
            prop.q = prop.q[: len(prop.tokens)]
        self.last = prop
        return prop.tokens

    def prepare_next(self, rnd: Round) -> None:
        """Submit the next round's draft to the worker thread (pipeline depth 2); returns at once."""
        if self._worker is None:
            self._worker = _Worker(self)
        self._worker.submit(rnd)

    def cancel(self) -> None:
        """Cancel and drain the request in flight (before anything rewrites KV cells <= attn_pos)."""
        if self._worker is not None:
            self._worker.drain()

    @property
    def in_flight(self) -> bool:
        return self._worker is not None and self._worker.busy


_NEVER = threading.Event()  # a "cancelled" flag that is never set (synchronous drafts)


class _Worker:
    """One daemon thread running ``drafter.propose`` for at most one request at a time."""

    def __init__(self, drafter: Drafter):
        self.drafter = drafter
        self._cv = threading.Condition()
        self._req: Round | None = None
        self._res: Proposal | None = None
        self._err: BaseException | None = None
        self._busy = False
        self._done = False
        self._cancel = threading.Event()
        self._stop = False
        self._res_key: tuple[int, int, int, int] | None = None
        self.submitted = 0
        self.cancelled = 0
        self._t = threading.Thread(target=self._run, name=f"drafter-{drafter.name}", daemon=True)
        self._t.start()

    @property
    def busy(self) -> bool:
        return self._busy

    def submit(self, rnd: Round) -> None:
        with self._cv:
            if self._busy:
                raise RuntimeError("a draft request is already in flight (exactly one allowed); cancel() first")
            self._req, self._res, self._err, self._done = rnd, None, None, False
            self._cancel.clear()
            self._busy = True
            self.submitted += 1
            self._cv.notify_all()

    def _run(self) -> None:
        while True:
            with self._cv:
                while self._req is None and not self._stop:
                    self._cv.wait()
                if self._stop:
                    return
                rnd = self._req
                self._req = None
            res = err = None
            try:
                t0 = time.perf_counter()
                res = self.drafter.propose(rnd, self._cancel)
                res.us = int((time.perf_counter() - t0) * 1e6)
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                err = e
            with self._cv:
                self._res, self._err, self._done = res, err, True
                self._res_key = rnd.key()
                self._cv.notify_all()

    def _await(self) -> None:
        with self._cv:
            while not self._done:
                self._cv.wait()

    def wait(self, key: tuple[int, int, int, int]) -> Proposal | None:
        """Await the request; its proposal when it was for ``key``, else None."""
        self._await()
        with self._cv:
            res, err, rkey = self._res, self._err, self._res_key
            self._busy = False
            self._res = self._err = None
        if err is not None:
            raise err
        return res if rkey == key and not self._cancel.is_set() else None

    def drain(self) -> None:
        if not self._busy:
            return
        self._cancel.set()
        self.cancelled += 1
        self._await()
        with self._cv:
            self._busy = False
            self._res = self._err = None

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        self._t.join(timeout=5)


class SkipStreak:
    """The fork's skip rule: count consecutive rounds with zero accepted drafts; when the count
    reaches ``threshold``, the next round is skipped once (one plain token) and the count resets;
    the round right after a skip is not counted as a miss (else threshold 1 would skip every
    other round forever). ``threshold`` 0 = off. Rounds that drafted nothing are neutral."""

    def __init__(self, threshold: int = 0):
        self.threshold = threshold
        self.count = 0
        self.after_skip = False

    def would_skip(self) -> bool:
        """Whether the next drafting round will be skipped (no state change)."""
        return self.threshold > 0 and self.count >= self.threshold

    def should_skip(self) -> bool:
        """Asked when a round is about to draft; True = skip it (and reset the count)."""
        if self.threshold > 0 and self.count >= self.threshold:
            self.count = 0
            self.after_skip = True
            return True
        return False

    def record(self, n_drafted: int, n_accepted: int) -> None:
        """Feed a verified round."""
        if n_drafted <= 0:
            return
        if self.after_skip:
            self.after_skip = False
            if n_accepted == 0:
                return
        self.count = self.count + 1 if n_accepted == 0 else 0
