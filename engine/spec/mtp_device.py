"""MTP drafting on the device model (``--spec mtp --backend cupy``): the assistant's forward on
turbospec's CUDA kernels, over the device target's KV cache (engine/cuda_model.py's DeviceKV).

The same drafts as engine/spec/mtp.py's MTPDrafter (engine/models/gemma4_assistant.py is the
NumPy forward this must equal), with:

- the assistant's weights uploaded once, as stored (F32/F16/Q8_0/... raw GGML bytes,
  dequantized in registers by loader.matvec); the token embedding and (``use_target_embeddings``)
  the scoring rows are the target's own device weights;
- attention read-only over the target's DeviceKV of the last sliding / last global layer, cells
  [qpos - window + 1 (sliding), attn_pos] — what LayerKV.attend(max_pos=attn_pos) reads — with
  the layer's K equalization (Q / s), no KV of its own;
- the routed head on the device: centroid logits -> top-k clusters (loader.topk) -> their token
  ids (gather_cluster_ids over token_ordering) -> gathered rows (matvec_rows) -> argmax with ids;
  the id is written into the device array the next step's embedding lookup reads, so a round's
  n_steps run without the host, and the ids come back once at the end (one sync per round);
- its own stream (a non-blocking CUDA stream; no-op in "emu" mode) that waits, on the device, for
  an event recorded on the target's stream right after the verify (accept()) — so with pipeline
  depth 2 the next round's draft runs while the host does the round's bookkeeping. The loop never
  calls the target while a request is in flight, and propose() synchronizes its stream before it
  returns (also when cancelled), so no draft kernel still reads KV cells the target rewrites.

Napkin (default model's assistant, 4 layers × 640, q8_0): ~18M MACs and ~17 MB of weights read per step
(+ 32 × 128 LM-head rows of 640) — ~14 small launches per layer, launch-bound on a GPU.
"""

from __future__ import annotations

import contextlib
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from turbospec.engine.cuda_model import ATT_D, MAX_SPLIT, DevWeight, gguf_tensors, to_host
from turbospec.engine.models.gemma4_assistant import AssistantConfig, Gemma4Assistant
from turbospec.engine.spec.base import Drafter, Proposal, Round
from turbospec.errors import UserError


@dataclass
class _DevLayer:
    attn_norm: Any
    attn_q_norm: Any
    post_attention_norm: Any
    ffn_norm: Any
    post_ffw_norm: Any
    q: DevWeight
    o: DevWeight
    gu: DevWeight | None  # gate|up rows in one weight when they share a type (one launch, one pass over h)
    gate: DevWeight | None
    up: DevWeight | None
    down: DevWeight


class DeviceAssistant:
    """The assistant's weights on the target runner's device and the one-round forward.

    ``host``: the loaded and validated Gemma4Assistant (its cfg, src and token_ordering are used;
    its float weights are not). ``raw``: tensor name -> (raw GGML bytes, GGML type name).
    ``runner``: the target's DeviceRunner (array module, kernels, embedding and LM head)."""

    def __init__(self, host: Gemma4Assistant, raw: dict[str, tuple[np.ndarray, str]], runner: Any):
        self.cfg: AssistantConfig = host.cfg
        self.src = list(host.src)
        self.runner, self.L, self.xp = runner, runner.L, runner.xp
        self.name = host.path.name if host.path else "(memory)"
        c, tc, xp = self.cfg, runner.cfg, runner.xp
        if not self.src:
            raise ValueError("DeviceAssistant needs a validated assistant (Gemma4Assistant.validate sets src)")
        if c.n_head // tc.n_head_kv > self.L.ATT_GMAX:
            raise UserError(f"MTP head {self.name}: {c.n_head} query heads over the target's {tc.n_head_kv} KV "
                            f"heads: the CUDA attention takes at most {self.L.ATT_GMAX} per KV head; "
                            "use --backend numpy")
        self.scale = 1.0 / math.sqrt(c.head_dim)
        self.pad = c.head_dim != ATT_D

        def norm(name: str) -> Any:
            a, t = raw[name]
            a = np.ascontiguousarray(a).view(np.float16 if t == "f16" else np.float32).astype(np.float32)
            return xp.asarray(a.reshape(-1))

        def mat(name: str, rows: int, k: int, *more: str) -> DevWeight:
            """One weight, or ``name`` and ``more`` (same type and width) stacked by rows."""
            a, t = raw[name]
            qk = 256 if t in ("q4_k", "q6_k") else 32
            if t not in self.L.WEIGHT_KERNEL_TYPES or k % qk:
                raise UserError(f"MTP head {self.name}: {name} ({t}, rows of {k}) has no CUDA matvec (types "
                                f"{', '.join(self.L.WEIGHT_KERNEL_TYPES)}, rows a multiple of {qk}); "
                                "use --backend numpy")
            parts = [np.asarray(raw[n][0], np.uint8).reshape(-1) for n in (name, *more)]
            data = np.concatenate(parts)  # a copy either way: the file is memory-mapped
            return DevWeight(xp.asarray(data), t, rows * len(parts), k)

        e, eb, qd = c.n_embd, c.n_embd_backbone, c.n_head * c.head_dim
        self.pre = mat("mtp.pre_projection.weight", e, 2 * eb)
        self.post = mat("mtp.post_projection.weight", eb, e)
        self.output_norm = norm("output_norm.weight")
        self.blk = []
        for i in range(c.n_layer):
            p = f"blk.{i}."
            fused = raw[p + "ffn_gate.weight"][1] == raw[p + "ffn_up.weight"][1]
            self.blk.append(_DevLayer(
                attn_norm=norm(p + "attn_norm.weight"), attn_q_norm=norm(p + "attn_q_norm.weight"),
                post_attention_norm=norm(p + "post_attention_norm.weight"), ffn_norm=norm(p + "ffn_norm.weight"),
                post_ffw_norm=norm(p + "post_ffw_norm.weight"),
                q=mat(p + "attn_q.weight", qd, e), o=mat(p + "attn_output.weight", e, qd),
                gu=mat(p + "ffn_gate.weight", c.n_ff, e, p + "ffn_up.weight") if fused else None,
                gate=None if fused else mat(p + "ffn_gate.weight", c.n_ff, e),
                up=None if fused else mat(p + "ffn_up.weight", c.n_ff, e),
                down=mat(p + "ffn_down.weight", e, c.n_ff)))
        # the scoring rows: the target's LM head, or the assistant's own (token-ordered) embedding
        self.emb = runner.head if c.use_target_embeddings else mat("token_embd.weight", c.n_vocab, e)
        self.ordered = c.use_ordered_embeddings and not c.use_target_embeddings
        order = host.token_ordering
        self.order = None if order is None else xp.asarray(order.astype(np.int32))
        self.rows_of = xp.asarray(np.arange(c.n_vocab, dtype=np.int32)) if self.ordered and c.n_centroids else None
        self.cent = mat("mtp.centroids.weight", c.n_centroids, e) if c.n_centroids else None
        self._alloc(4)

    # -- buffers (persistent; nothing but loader.topk's two small arrays is allocated per step) -----
    def _alloc(self, n_steps: int) -> None:
        c, xp, f32 = self.cfg, self.xp, self.xp.float32
        e, eb, qd = c.n_embd, c.n_embd_backbone, c.n_head * c.head_dim
        self.cap = n_steps
        self.ids = xp.zeros((n_steps + 1,), xp.int32)  # [id_last, draft 0, draft 1, ...]
        self.pos = xp.zeros((n_steps,), xp.int32)
        self.cat = xp.zeros((2 * eb,), f32)  # [embed(token) * sqrt(n_embd_target), h_prev]
        self.x, self.h, self.o, self.dn = (xp.empty((e,), f32) for _ in range(4))
        self.q = xp.empty((qd,), f32)
        self.qn = xp.empty((1, c.n_head, c.head_dim), f32)
        self.qp = xp.zeros((1, c.n_head, ATT_D), f32) if self.pad else None  # pad columns stay zero
        self.ao = xp.empty((1, c.n_head, ATT_D), f32)
        self.ao_c = xp.empty((1, c.n_head, c.head_dim), f32) if self.pad else None
        self.gu = xp.empty((2 * c.n_ff,), f32)  # [gate | up]
        self.act = xp.empty((c.n_ff,), f32)
        self.xr = xp.empty((max(2 * eb, e, qd, c.n_ff),), f32)  # rotated input for TQ weights
        self.work = (xp.empty((MAX_SPLIT * c.n_head * ATT_D,), f32), xp.empty((MAX_SPLIT * c.n_head * 2,), f32))
        if c.n_centroids:
            per = c.n_vocab // c.n_centroids
            self.clog = xp.empty((c.n_centroids,), f32)
            self.cand_tok = xp.empty((c.centroid_top_k * per,), xp.int32)
            self.cand_row = xp.empty((c.centroid_top_k * per,), xp.int32) if self.ordered else self.cand_tok
            self.vals = xp.empty((c.centroid_top_k * per,), f32)
        else:
            self.vals = xp.empty((c.n_vocab,), f32)
        self.amax = (xp.empty((self.L.ARGMAX_BLOCKS,), f32), xp.empty((self.L.ARGMAX_BLOCKS,), xp.int32))
        self.pk = xp.zeros((n_steps,), f32)  # --draft-p-min: each step's draft probability

    def _mv(self, w: DevWeight, x: Any, out: Any) -> Any:
        xr = self.xr[: x.size] if w.wtype.startswith("tq") else None
        return self.L.matvec(w.data, w.wtype, x, w.rows, out=out, xr=xr)

    # -- one round -------------------------------------------------------------------------------
    def upload_round(self, id_last: int, h_prev: np.ndarray, attn_pos: int, n_steps: int, put: Any) -> None:
        """Inputs of a round into the device buffers; ``put(dst, host)`` copies on the drafter's stream."""
        if n_steps > self.cap:
            self._alloc(max(n_steps, 2 * self.cap))
        eb = self.cfg.n_embd_backbone
        put(self.ids[:1], np.array([id_last], np.int32))
        put(self.pos[:n_steps], np.arange(attn_pos + 1, attn_pos + 1 + n_steps, dtype=np.int32))
        put(self.cat[eb:], np.ascontiguousarray(h_prev, np.float32).reshape(eb))

    def step(self, cache: Any, attn_pos: int, k: int, want_next: bool = True) -> None:
        """Draft step k: reads ids[k] (the token), pos[k], cat[n_embd_backbone:] (h_prev); leaves
        h = h_inner, ids[k + 1] = the greedy draft and (want_next) cat[eb:] = the next h_prev."""
        c, L, r, xp = self.cfg, self.L, self.runner, self.xp
        eb, hd = c.n_embd_backbone, c.head_dim
        L.get_rows(r.emb.data, r.emb.wtype, self.ids[k:k + 1], eb, math.sqrt(eb), out=self.cat[:eb].reshape(1, eb))
        self._mv(self.pre, self.cat, self.x)
        L.rmsnorm(self.x, self.blk[0].attn_norm, c.eps, out=self.h)
        qpos = attn_pos + 1 + k
        for i, lw in enumerate(self.blk):
            self._mv(lw.q, self.h, self.q)
            L.rmsnorm(self.q.reshape(1, c.n_head, hd), lw.attn_q_norm, c.eps, out=self.qn)
            if self.pad:
                self.qp[:, :, :hd] = self.qn
                qa = self.qp
            else:
                qa = self.qn
            L.rope_neox(qa, self.pos[k:k + 1], c.rope_base_swa if c.sliding[i] else c.rope_base, n_rot=hd)
            s = self.src[i]
            eq = cache.eq[s]
            if eq is not None:
                xp.divide(qa, eq, out=qa)
            win = r.window[s]
            start = max(0, qpos - win + 1) if win else 0
            if start <= attn_pos:
                tk, tv = cache.types[s]
                L.attn_decode(qa, cache.k[s], cache.v[s], tk, tv, start, attn_pos + 1, self.scale, out=self.ao,
                              work=self.work)
            else:  # no visible cell (a window shorter than the draft): LayerKV.attend gives zeros
                self.ao.fill(0)
            if self.pad:
                self.ao_c[...] = self.ao[:, :, :hd]
                ao = self.ao_c
            else:
                ao = self.ao
            self._mv(lw.o, ao.reshape(-1), self.o)
            L.add_rmsnorm(self.x, self.o, lw.post_attention_norm, lw.ffn_norm, c.eps, h=self.h)
            g, u = self.gu[: c.n_ff], self.gu[c.n_ff:]
            if lw.gu is not None:
                self._mv(lw.gu, self.h, self.gu)
            else:
                self._mv(lw.gate, self.h, g)
                self._mv(lw.up, self.h, u)
            L.geglu(g, u, out=self.act)
            self._mv(lw.down, self.act, self.dn)
            w_next = self.blk[i + 1].attn_norm if i + 1 < c.n_layer else self.output_norm
            L.add_rmsnorm(self.x, self.dn, lw.post_ffw_norm, w_next, c.eps, h=self.h)
        self.head(self.h, self.ids[k + 1:k + 2])
        if want_next:
            self._mv(self.post, self.h, self.cat[eb:])

    def draft_probability(self, k: int) -> None:
        """pk[k] = the softmax probability of step k's draft over the scored tokens (self.vals, the
        softcap applied as the host does): 1 / sum(exp(v - max)). On the device; fetched with the
        ids at the end of the round, so --draft-p-min adds no sync (it allocates two temporaries of
        the candidates' size a step: the one exception to the persistent buffers)."""
        xp, c = self.xp, self.cfg
        v = self.vals
        if c.softcap:
            v = xp.tanh(v / c.softcap) * c.softcap
        self.pk[k : k + 1] = 1.0 / xp.exp(v - v.max()).sum()

    def head(self, h: Any, out: Any) -> Any:
        """Greedy id of h_inner into ``out`` (int32[1] on the device): the routed head (centroids ->
        top-k -> candidate ids -> gathered rows -> argmax with ids), or the dense head. The softcap
        is monotonic, so the argmax ignores it."""
        c, L = self.cfg, self.L
        if not c.n_centroids:
            self._mv(DevWeight(self.emb.data, self.emb.wtype, c.n_vocab, c.n_embd), h, self.vals)
            return L.argmax(self.vals, ids=self.order if self.ordered else None, out=out, work=self.amax)
        per, k = c.n_vocab // c.n_centroids, c.centroid_top_k
        self._mv(self.cent, h, self.clog)
        clusters, _ = L.topk(self.clog, k)
        grid = (max(1, min(1024, -(-k * per // 256))),)
        L.launch("gather_cluster_ids", grid, (256,), (clusters, self.order, per, k, self.cand_tok))
        if self.ordered:  # row r of the own embedding is token ordering[r]: a cluster's rows are contiguous
            L.launch("gather_cluster_ids", grid, (256,), (clusters, self.rows_of, per, k, self.cand_row))
        L.matvec_rows(self.emb.data, self.emb.wtype, self.cand_row, h, out=self.vals)
        return L.argmax(self.vals, ids=self.cand_tok, out=out, work=self.amax)


def read_raw_tensors(path: str | Path) -> dict[str, tuple[np.ndarray, str]]:
    """The assistant file's float/quantized tensors as (raw bytes, GGML type name); token_ordering
    (I32) is read by Gemma4Assistant.load."""
    from turbospec.engine.gguf import GGUFFile

    return gguf_tensors(GGUFFile.open(path), skip=("mtp.token_ordering.weight",))


class DeviceMTPDrafter(Drafter):
    """MTPDrafter's rounds on the device model (engine/cuda_model.DeviceGemma3)."""

    name = "mtp"

    def __init__(self, assistant: DeviceAssistant):
        super().__init__()
        self.assistant = assistant
        r = assistant.runner
        self.xp, self.gpu = r.xp, r.gpu
        self.stream = r.xp.cuda.Stream(non_blocking=True) if r.gpu else None
        self._ready = None  # event recorded on the target's stream after its latest forward we know of
        self._ready_n_past = -1  # the target cache's n_past when it was recorded

    @classmethod
    def load(cls, path: str | Path | None, target: Any, tok: Any) -> DeviceMTPDrafter:
        """Load, validate (the same one-line checks as MTPDrafter.load) and upload an assistant for
        the device model ``target`` (None = the shipped one)."""
        from turbospec.engine.spec.mtp import MTPDrafter

        host = MTPDrafter.load(path, target, tok).assistant  # validates; sets src
        raw = read_raw_tensors(host.path)
        with target.runner._ctx():  # uploads on the target's stream (ordered before its first forward)
            a = DeviceAssistant(host, raw, target.runner)
        if target.runner.gpu:
            target.runner.stream.synchronize()
        return cls(a)

    # -- streams ----------------------------------------------------------------------------------
    def _ctx(self) -> Any:
        return self.stream if self.gpu else contextlib.nullcontext()

    def _put(self, dst: Any, host: np.ndarray) -> None:
        if self.gpu:
            dst.set(host, stream=self.stream)
        else:
            dst[...] = host

    def _fetch(self, a: Any) -> np.ndarray:
        """The round's ids on the host, after the drafter's stream has finished its work."""
        return to_host(a, self.stream if self.gpu else None)

    def _mark_target(self) -> None:
        """Record an event on the target's stream: everything it has queued so far (the verify)."""
        sess = self.session
        self._ready_n_past = sess.cache.n_past if sess is not None else -1
        if self.gpu:
            ev = self.xp.cuda.Event(disable_timing=True)
            ev.record(self.assistant.runner.stream)
            self._ready = ev

    def begin(self, session: Any, prompt_ids: list[int]) -> None:
        super().begin(session, prompt_ids)
        self._mark_target()  # after the prefill

    def accept(self, n_accepted: int) -> None:
        self._mark_target()  # right after the verify (and the host-side rollback)

    # -- the work ---------------------------------------------------------------------------------
    def propose(self, rnd: Round, cancelled: threading.Event) -> Proposal:
        sess = self.session
        if sess is None:
            raise RuntimeError("DeviceMTPDrafter.propose before begin()")
        cache, a = sess.cache, self.assistant
        if self._ready_n_past != cache.n_past:  # e.g. after a plain step: nothing else is queued meanwhile
            self._mark_target()
        n = rnd.n_steps
        done = 0
        with self._ctx():
            if self.gpu:
                self.stream.wait_event(self._ready)  # the draft waits for the verify on the device
            a.upload_round(rnd.id_last, rnd.h_prev, rnd.attn_pos, n, self._put)
            for k in range(n):
                if cancelled.is_set():
                    break
                a.step(cache, rnd.attn_pos, k, want_next=k + 1 < n)
                if self.p_min > 0:  # every step still runs; the drafts are cut on the host below
                    a.draft_probability(k)
                done += 1
            # fetched also when cancelled: nothing may still read the KV afterwards
            toks = [int(t) for t in self._fetch(a.ids[1:done + 1])]
            if self.p_min > 0 and done:
                low = np.nonzero(self._fetch(a.pk[:done]) < self.p_min)[0]
                if len(low):
                    toks = toks[: int(low[0])]
        return Proposal(tokens=toks, extra={"h_l2": rnd.h_l2})


def load_mtp_drafter(path: str | Path | None, model: Any, tok: Any) -> Drafter:
    """The MTP drafter for ``model``: DeviceMTPDrafter on the device model (engine/cuda_model.py's
    DeviceGemma3, ``--backend cupy``), else the NumPy MTPDrafter. Same arguments and one-line
    UserErrors as MTPDrafter.load (path None = the shipped assistant)."""
    from turbospec.engine.cuda_model import DeviceGemma3
    from turbospec.engine.spec.mtp import MTPDrafter

    if isinstance(model, DeviceGemma3):
        return DeviceMTPDrafter.load(path, model, tok)
    return MTPDrafter.load(path, model, tok)
