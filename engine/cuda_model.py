"""Gemma 3 on turbospec's CUDA kernels (cuda/*.cu): the device runner behind ``--backend cupy``.

One code path over an array module: CuPy arrays run the kernels on the GPU; NumPy arrays run the
very same kernels through the g++ host harness (cuda/emu) — that is how CI tests this file.
Weights stay raw GGML bytes on the device (Q8_0/Q5_0/Q4_K/Q6_K/F16/F32, TQ3_1S/TQ4_1S) and are
dequantized in registers by loader.matvec/matmul; the embedding is a device row lookup
(loader.get_rows), the LM head a matvec over the tied embedding, the greedy id an on-device
argmax (only the id returns).

Per layer (engine/models/gemma3.py is the NumPy model this must equal): rmsnorm -> Q|K and V
projections -> per-head Q/K RMSNorm -> NEOX RoPE -> kv_append into the device cache ->
attn_decode (+ reduce; T causal queries for prefill; the window on sliding layers) -> o-proj ->
add_rmsnorm (residual + post-attention norm + the FFN pre-norm in one kernel) -> gate|up -> GeGLU
-> down -> add_rmsnorm (residual + post-FFN norm + the next layer's pre-norm, or output_norm).

KV cache (``DeviceKV``): per layer a K and a V buffer, uint8 [cells, n_kv_heads, row_bytes], any
cache type of loader.KV_TYPE_ID per layer. Rows are head_dim 256 (the attention kernel's width):
a smaller head_dim is zero-padded to 256 (zero groups encode to zero norms and decode to zeros,
so every type gives the values of engine/kv/cache.py's padding). Sliding-window layers hold the
full context on the device too (the window is applied by attn_decode, no ring); the buffers
grow by doubling.

Decode (one token) uses persistent buffers (nothing is allocated per step) and reads the token
id and position from a small device array, so the step is position-independent: on CuPy it is
captured once into a CUDA graph per (split-count bucket, cache buffers) and replayed
(``use_graph=False`` disables it). Prefill is batched: loader.matmul (8 tokens per weight pass)
and causal T-query attention.

The top of this file imports only NumPy, so tests/gpu/check.py can load it by path on a machine
with nothing but NumPy and CuPy (it passes its own loader module); ``load_device_model`` imports
the engine lazily.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

ATT_D = 256  # attn_decode's head_dim
MAX_SPLIT = 512  # loader.attn_split's cap
GGML_TYPE_NAMES = {0: "f32", 1: "f16", 8: "q8_0", 6: "q5_0", 12: "q4_k", 14: "q6_k", 45: "tq3_1s", 46: "tq4_1s"}


def is_cupy_module(xp: Any) -> bool:
    return getattr(xp, "__name__", "") == "cupy"


def to_host(a: Any, stream: Any = None) -> np.ndarray:
    """A device array on the host, copied on ``stream`` after the stream's queued work (None: a
    host array, e.g. in "emu" mode)."""
    if stream is None:
        return np.array(a)
    out = a.get(stream=stream)
    stream.synchronize()
    return out


def split_bucket(n_cells: int, min_chunk: int = 128) -> int:
    """The decode step's split count for n_cells: a power of two >= ceil(n_cells / 128), at most
    512 (few distinct values, so few CUDA graphs; the kernel derives the chunk on the device)."""
    need = max(1, -(-n_cells // min_chunk))
    s = 1
    while s < need and s < MAX_SPLIT:
        s *= 2
    return s


def _cols(a: Any, n: int) -> tuple[Any, Any]:
    """(a[:, :n], a[:, n:]); for one row as contiguous views (the decode step copies nothing)."""
    if a.shape[0] == 1:
        flat = a.reshape(-1)
        return flat[:n].reshape(1, n), flat[n:].reshape(1, -1)
    return a[:, :n], a[:, n:]


@dataclass
class DevWeight:
    data: Any  # uint8 raw GGML bytes on the device
    wtype: str
    rows: int
    k: int


class DeviceKV:
    """Per-layer K/V caches on the device: ``k[i]``, ``v[i]`` uint8 [cap, n_kv_heads, row_bytes]."""

    def __init__(self, runner: DeviceRunner, types: list[tuple[str, str]], cap: int = 256,
                 calibrate: Any = None, eq_tokens: int = 512):
        self.runner = runner
        self.types = types
        self.n_past = 0
        self.cap = 0
        self.k: list[Any] = []
        self.v: list[Any] = []
        self.graphs: dict[Any, Any] = {}  # CUDA graphs of the decode step over these buffers
        # K equalization (engine/kv/equalize.py): calibrate(K rows [n, head_dim] f32) -> scales s, on
        # layers whose K type is quantized, from the first forward's first eq_tokens tokens; K * s is
        # stored, Q / s scores. eq[i]: s padded with ones to 256 (a fixed device buffer: graph-safe).
        self.calibrate, self.eq_tokens = calibrate, eq_tokens
        on = calibrate is not None
        self.eq = [runner.xp.ones((ATT_D,), runner.xp.float32) if on and tk != "f16" else None for tk, _ in types]
        self.eq_set = [False] * len(types)
        self._alloc(cap)

    def _row_bytes(self, t: str) -> int:
        return self.runner.L._kv_row_bytes(t, ATT_D)

    def _alloc(self, cap: int) -> None:
        xp, hkv = self.runner.xp, self.runner.cfg.n_head_kv
        k = [xp.zeros((cap, hkv, self._row_bytes(tk)), xp.uint8) for tk, _ in self.types]
        v = [xp.zeros((cap, hkv, self._row_bytes(tv)), xp.uint8) for _, tv in self.types]
        for i in range(len(self.k)):  # keep the cells written so far
            k[i][: self.cap] = self.k[i]
            v[i][: self.cap] = self.v[i]
        self.k, self.v, self.cap = k, v, cap
        self.graphs.clear()  # captured graphs point at the old buffers

    def ensure(self, n: int) -> None:
        if n > self.cap:
            cap = max(self.cap, 1)
            while cap < n:
                cap *= 2
            self._alloc(cap)

    def clear(self) -> None:
        self.n_past = 0
        self.eq_set = [False] * len(self.types)  # a new context calibrates again (as engine/kv/cache.py)

    def truncate(self, n_past: int) -> None:
        """Forget positions >= n_past (cells past n_past are never read before being rewritten)."""
        self.n_past = max(0, min(self.n_past, n_past))
        if self.n_past == 0:
            self.clear()

    @property
    def needs_calibration(self) -> bool:
        return any(e is not None and not done for e, done in zip(self.eq, self.eq_set, strict=True))

    @property
    def bytes_per_token(self) -> int:
        h = self.runner.cfg.n_head_kv
        return sum(h * (self._row_bytes(tk) + self._row_bytes(tv)) for tk, tv in self.types)

    @property
    def nbytes(self) -> int:
        """Bytes of the cells holding the current context (every layer keeps every position)."""
        return self.n_past * self.bytes_per_token

    @property
    def nbytes_allocated(self) -> int:
        return self.cap * self.bytes_per_token


class _Bufs:
    """Activations of one forward over T tokens (persistent for T = 1)."""

    def __init__(self, r: DeviceRunner, t: int):
        c, xp, f32 = r.cfg, r.xp, r.xp.float32
        e, h, hkv, hd, ff = c.n_embd, c.n_head, c.n_head_kv, c.head_dim, c.n_ff
        self.t = t
        self.x = xp.empty((t, e), f32)
        self.h = xp.empty((t, e), f32)
        self.qk = xp.empty((t, (h + hkv) * hd), f32) if r.qk_fused else None
        self.q = None if r.qk_fused else xp.empty((t, h * hd), f32)
        self.k = None if r.qk_fused else xp.empty((t, hkv * hd), f32)
        self.v = xp.empty((t, hkv * hd), f32)
        self.qn = xp.empty((t, h, hd), f32)
        self.kn = xp.empty((t, hkv, hd), f32)
        if r.pad:  # the pad columns stay zero: only [..., :hd] is ever written
            self.qp = xp.zeros((t, h, ATT_D), f32)
            self.kp = xp.zeros((t, hkv, ATT_D), f32)
            self.vp = xp.zeros((t, hkv, ATT_D), f32)
            self.ao_c = xp.empty((t, h, hd), f32)
        self.ao = xp.empty((t, h, ATT_D), f32)
        self.o = xp.empty((t, e), f32)
        self.gu = xp.empty((t, 2 * ff), f32) if r.gu_fused else None
        self.g = None if r.gu_fused else xp.empty((t, ff), f32)
        self.u = None if r.gu_fused else xp.empty((t, ff), f32)
        self.act = xp.empty((t, ff), f32)
        self.dn = xp.empty((t, e), f32)
        self.xr = xp.empty((t * max(e, ff, h * hd),), f32)  # rotated input for TQ weights
        if t == 1:
            self.io = xp.zeros((3,), xp.int32)  # [token id, position, position + 1]
            self.next_id = xp.zeros((1,), xp.int32)
            self.logits = xp.empty((c.n_vocab,), f32)
            self.work = (xp.empty((MAX_SPLIT * h * ATT_D,), f32), xp.empty((MAX_SPLIT * h * 2,), f32))
            self.amax = (xp.empty((r.L.ARGMAX_BLOCKS,), f32), xp.empty((r.L.ARGMAX_BLOCKS,), xp.int32))


@dataclass
class _Layer:
    attn_norm: Any
    attn_q_norm: Any
    attn_k_norm: Any
    post_attention_norm: Any
    ffn_norm: Any
    post_ffw_norm: Any
    qk: DevWeight | None  # fused Q|K rows when attn_q and attn_k share a type
    q: DevWeight | None
    k: DevWeight | None
    v: DevWeight
    o: DevWeight
    gu: DevWeight | None  # fused gate|up rows when they share a type
    gate: DevWeight | None
    up: DevWeight | None
    down: DevWeight


class DeviceRunner:
    """The Gemma 3 forward on the kernels over one array module.

    ``cfg``: an object with Gemma3Config's fields (n_layer, n_embd, n_head, n_head_kv, head_dim,
    n_ff, n_vocab, eps, window, rope_base, rope_base_swa, sliding, softcap).
    ``tensors``: GGUF tensor name -> (raw GGML bytes as a NumPy uint8 array, GGML type name as in
    GGML_TYPE_NAMES); matrices are [rows, k] as llama.cpp stores them.
    ``loader``: the cuda/loader.py module (turbospec.cuda.loader by default).
    """

    def __init__(self, cfg: Any, tensors: dict[str, tuple[np.ndarray, str]], xp: Any = np, loader: Any = None,
                 use_graph: bool = True):
        if loader is None:
            from turbospec.cuda import loader
        self.L, self.xp, self.cfg = loader, xp, cfg
        c = cfg
        if c.head_dim > ATT_D or c.head_dim % 2:
            raise ValueError(f"head_dim {c.head_dim}: the attention kernel takes even head_dim <= {ATT_D}")
        if c.n_head % c.n_head_kv or c.n_head // c.n_head_kv > loader.ATT_GMAX:
            raise ValueError(f"{c.n_head} Q heads over {c.n_head_kv} KV heads: at most {loader.ATT_GMAX} per KV head")
        self.pad = c.head_dim != ATT_D
        self.gpu = is_cupy_module(xp)
        self.use_graph = bool(use_graph and self.gpu)
        self.stream = xp.cuda.Stream(non_blocking=True) if self.gpu else None
        with self._ctx():
            self._build(tensors)

    def _build(self, tensors: dict[str, tuple[np.ndarray, str]]) -> None:
        c, xp, loader = self.cfg, self.xp, self.L
        self.scale = 1.0 / math.sqrt(c.head_dim)
        self.window = [int(c.window) if c.sliding[i] and c.window < (1 << 30) else 0 for i in range(c.n_layer)]
        hd, e = c.head_dim, c.n_embd

        def norm(name: str) -> Any:
            raw, t = tensors[name]
            a = np.ascontiguousarray(raw).view(np.float16 if t == "f16" else np.float32).astype(np.float32)
            return xp.asarray(a.reshape(-1))

        def mat(names: tuple[str, ...], rows: tuple[int, ...], k: int) -> DevWeight:
            types = {tensors[n][1] for n in names}
            assert len(types) == 1
            wtype = types.pop()
            if wtype not in loader.WEIGHT_KERNEL_TYPES:
                raise ValueError(f"{names[0]}: no CUDA kernel for weight type {wtype}")
            raw = np.concatenate([np.ascontiguousarray(tensors[n][0]).view(np.uint8).reshape(-1) for n in names])
            if raw.size != loader._weight_bytes(wtype, sum(rows), k):
                raise ValueError(f"{names[0]}: {raw.size} bytes do not hold [{sum(rows)}, {k}] of {wtype}")
            return DevWeight(xp.asarray(raw), wtype, sum(rows), k)

        head = "output.weight" if "output.weight" in tensors else "token_embd.weight"
        self.emb = mat(("token_embd.weight",), (c.n_vocab,), e)
        self.head = self.emb if head == "token_embd.weight" else mat((head,), (c.n_vocab,), e)
        self.output_norm = norm("output_norm.weight")
        self.blk: list[_Layer] = []
        nq, nk = c.n_head * hd, c.n_head_kv * hd
        for i in range(c.n_layer):
            p = f"blk.{i}."
            t = {n: tensors[p + n + ".weight"][1] for n in ("attn_q", "attn_k", "ffn_gate", "ffn_up")}
            fqk, fgu = t["attn_q"] == t["attn_k"], t["ffn_gate"] == t["ffn_up"]
            w = lambda n, r, k, p=p: mat((p + n + ".weight",), (r,), k)  # noqa: E731
            self.blk.append(_Layer(
                attn_norm=norm(p + "attn_norm.weight"), attn_q_norm=norm(p + "attn_q_norm.weight"),
                attn_k_norm=norm(p + "attn_k_norm.weight"),
                post_attention_norm=norm(p + "post_attention_norm.weight"), ffn_norm=norm(p + "ffn_norm.weight"),
                post_ffw_norm=norm(p + "post_ffw_norm.weight"),
                qk=mat((p + "attn_q.weight", p + "attn_k.weight"), (nq, nk), e) if fqk else None,
                q=None if fqk else w("attn_q", nq, e), k=None if fqk else w("attn_k", nk, e),
                v=w("attn_v", nk, e), o=w("attn_output", e, nq),
                gu=mat((p + "ffn_gate.weight", p + "ffn_up.weight"), (c.n_ff, c.n_ff), e) if fgu else None,
                gate=None if fgu else w("ffn_gate", c.n_ff, e), up=None if fgu else w("ffn_up", c.n_ff, e),
                down=w("ffn_down", e, c.n_ff)))
        self.qk_fused = all(b.qk is not None for b in self.blk)
        self.gu_fused = all(b.gu is not None for b in self.blk)
        if not self.qk_fused:  # one layout for every layer's buffers
            for b in self.blk:
                b.q, b.k, b.qk = b.q or self._split(b.qk, nq), b.k or self._split(b.qk, nq, True), None
        if not self.gu_fused:
            for b in self.blk:
                b.gate, b.up, b.gu = b.gate or self._split(b.gu, c.n_ff), b.up or self._split(b.gu, c.n_ff, True), None
        self.dec = _Bufs(self, 1)

    def _split(self, w: DevWeight, rows: int, second: bool = False) -> DevWeight:
        nb = self.L._weight_bytes(w.wtype, rows, w.k)
        part = w.data[nb:] if second else w.data[:nb]
        return DevWeight(self.xp.ascontiguousarray(part), w.wtype, w.rows - rows if second else rows, w.k)

    # -- pieces ---------------------------------------------------------------------------------
    def _mm(self, w: DevWeight, x: Any, out: Any, b: _Bufs) -> Any:
        """out = x W^T; one token goes through the matvec kernel (the decode path)."""
        xr = b.xr[: x.size] if w.wtype.startswith("tq") else None
        if x.shape[0] == 1:
            self.L.matvec(w.data, w.wtype, x.reshape(-1), w.rows, out=out.reshape(-1), xr=xr)
            return out
        return self.L.matmul(w.data, w.wtype, x, w.rows, out=out, xr=xr)

    def _layer(self, i: int, b: _Bufs, cache: DeviceKV, pos0: int, positions: Any, dyn: bool, splits: Any) -> None:
        """Layer i on b.h (its pre-norm input); leaves b.h = the next pre-norm (or output norm)."""
        L, c, lw, t = self.L, self.cfg, self.blk[i], b.t
        hd, nq = c.head_dim, c.n_head * c.head_dim
        if self.qk_fused:
            self._mm(lw.qk, b.h, b.qk, b)
            q, k = _cols(b.qk, nq)
        else:
            q, k = self._mm(lw.q, b.h, b.q, b), self._mm(lw.k, b.h, b.k, b)
        self._mm(lw.v, b.h, b.v, b)
        L.rmsnorm(q.reshape(t, c.n_head, hd), lw.attn_q_norm, c.eps, out=b.qn)
        L.rmsnorm(k.reshape(t, c.n_head_kv, hd), lw.attn_k_norm, c.eps, out=b.kn)
        base = c.rope_base_swa if c.sliding[i] else c.rope_base
        if self.pad:
            b.qp[:, :, :hd] = b.qn
            b.kp[:, :, :hd] = b.kn
            b.vp[:, :, :hd] = b.v.reshape(t, c.n_head_kv, hd)
            qa, ka, va = b.qp, b.kp, b.vp
        else:
            qa, ka, va = b.qn, b.kn, b.v.reshape(t, c.n_head_kv, hd)
        L.rope_neox(qa, positions, base, n_rot=hd)
        L.rope_neox(ka, positions, base, n_rot=hd)
        tk, tv = cache.types[i]
        pos_dev = b.io[1:2] if dyn else None
        eq = cache.eq[i]
        if eq is not None:
            if not cache.eq_set[i]:  # the first forward of this context: never inside a graph capture
                rows = self._host(ka[:, :, :hd]).reshape(-1, hd)[: cache.eq_tokens * c.n_head_kv]
                s = np.ones(ATT_D, np.float32)
                s[:hd] = cache.calibrate(rows)
                self._upload(eq, s)
                cache.eq_set[i] = True
            self.xp.divide(qa, eq, out=qa)
        L.kv_append(ka, cache.k[i], tk, pos0, eq=eq, pos_dev=pos_dev)
        L.kv_append(va, cache.v[i], tv, pos0, pos_dev=pos_dev)
        win = self.window[i]
        if dyn:
            L.attn_decode(qa, cache.k[i], cache.v[i], tk, tv, 0, pos0 + 1, self.scale,
                          n_split=splits[0] if win else splits[1], out=b.ao, window=win, end_dev=b.io[2:3],
                          work=b.work)
        else:
            L.attn_decode(qa, cache.k[i], cache.v[i], tk, tv, 0, pos0 + 1, self.scale, out=b.ao, window=win)
        if self.pad:
            b.ao_c[...] = b.ao[:, :, :hd]
            ao = b.ao_c
        else:
            ao = b.ao
        self._mm(lw.o, ao.reshape(t, nq), b.o, b)
        L.add_rmsnorm(b.x, b.o, lw.post_attention_norm, lw.ffn_norm, c.eps, h=b.h)
        if self.gu_fused:
            self._mm(lw.gu, b.h, b.gu, b)
            g, u = _cols(b.gu, c.n_ff)
        else:
            g, u = self._mm(lw.gate, b.h, b.g, b), self._mm(lw.up, b.h, b.u, b)
        L.geglu(g, u, out=b.act)
        self._mm(lw.down, b.act, b.dn, b)
        w_next = self.blk[i + 1].attn_norm if i + 1 < c.n_layer else self.output_norm
        L.add_rmsnorm(b.x, b.dn, lw.post_ffw_norm, w_next, c.eps, h=b.h)

    def _body(self, b: _Bufs, cache: DeviceKV, pos0: int, ids: Any, positions: Any, dyn: bool,
              splits: Any = None) -> None:
        """Embedding, every layer; b.h ends as the final-norm hidden state of the T tokens."""
        c = self.cfg
        self.L.get_rows(self.emb.data, self.emb.wtype, ids, c.n_embd, math.sqrt(c.n_embd), out=b.x)
        self.L.rmsnorm(b.x, self.blk[0].attn_norm, c.eps, out=b.h)
        for i in range(c.n_layer):
            self._layer(i, b, cache, pos0, positions, dyn, splits)

    def _decode_body(self, cache: DeviceKV, pos: int, splits: tuple[int, int]) -> None:
        """One token (id and position from dec.io on the device) through the model, the LM head
        into dec.logits and the greedy id into dec.next_id. Allocates nothing."""
        b = self.dec
        self._body(b, cache, pos, b.io[0:1], b.io[1:2], True, splits)
        self.L.matvec(self.head.data, self.head.wtype, b.h.reshape(-1), self.cfg.n_vocab, out=b.logits,
                      xr=b.xr[: self.cfg.n_embd] if self.head.wtype.startswith("tq") else None)
        self.L.argmax(b.logits, out=b.next_id, work=b.amax)

    def _upload(self, dst: Any, host: np.ndarray) -> None:
        if self.gpu:
            dst.set(host, stream=self.stream)
        else:
            dst[...] = host

    def _decode(self, token: int, cache: DeviceKV) -> None:
        pos = cache.n_past
        cache.ensure(pos + 1)
        win = max((w for w in self.window if w), default=0)
        splits = (split_bucket(min(pos + 1, win) if win else 1), split_bucket(pos + 1))
        self._upload(self.dec.io, np.array([token, pos, pos + 1], np.int32))
        if not self.use_graph or cache.needs_calibration:
            self._decode_body(cache, pos, splits)
        else:
            with self.stream:
                g = cache.graphs.get(splits)
                if g is not None:
                    g[0].launch(self.stream)
                else:  # run it once (loads every kernel), then capture it for the next steps
                    self._decode_body(cache, pos, splits)
                    # the step allocates nothing; should a temporary slip in, it comes from a pool
                    # that lives with the graph, so no later allocation can reuse its memory
                    pool = self.xp.cuda.MemoryPool()
                    with self.xp.cuda.using_allocator(pool.malloc):
                        self.stream.begin_capture()
                        try:
                            self._decode_body(cache, pos, splits)
                        finally:
                            graph = self.stream.end_capture()
                    cache.graphs[splits] = (graph, pool)
                    g = None
        cache.n_past = pos + 1

    def _prefill(self, tokens: np.ndarray, cache: DeviceKV) -> _Bufs:
        xp, t, pos0 = self.xp, len(tokens), cache.n_past
        cache.ensure(pos0 + t)
        b = _Bufs(self, t)
        ids = xp.asarray(tokens.astype(np.int32))
        positions = xp.asarray(np.arange(pos0, pos0 + t, dtype=np.int32))
        self._body(b, cache, pos0, ids, positions, False)
        cache.n_past = pos0 + t
        return b

    def _run(self, tokens: Any, cache: DeviceKV) -> _Bufs:
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if tokens.size == 0:
            raise ValueError("no tokens to run")
        if tokens.min() < 0 or tokens.max() >= self.cfg.n_vocab:
            bad = int(tokens[(tokens < 0) | (tokens >= self.cfg.n_vocab)][0])
            raise ValueError(f"token id {bad} is outside the vocabulary (0..{self.cfg.n_vocab - 1})")
        if tokens.size == 1:
            self._decode(int(tokens[0]), cache)
            return self.dec
        return self._prefill(tokens, cache)

    def _ctx(self) -> Any:
        """Everything runs on the runner's stream (a non-blocking one on CuPy: what it allocates,
        fills, launches and copies stays ordered without touching the legacy default stream)."""
        return self.stream if self.gpu else contextlib.nullcontext()

    def _host(self, a: Any) -> np.ndarray:
        return to_host(a, self.stream if self.gpu else None)

    def _softcap(self, logits: np.ndarray) -> np.ndarray:
        sc = float(getattr(self.cfg, "softcap", 0.0) or 0.0)
        if sc:
            logits = (np.tanh(logits / np.float32(sc)) * np.float32(sc)).astype(np.float32)
        return logits

    # -- the model interface -------------------------------------------------------------------
    def new_cache(self, types: list[tuple[str, str]], cap: int = 256, calibrate: Any = None,
                  eq_tokens: int = 512) -> DeviceKV:
        if len(types) != self.cfg.n_layer:
            raise ValueError(f"{len(types)} cache types for {self.cfg.n_layer} layers")
        for tk, tv in types:
            for tname in (tk, tv):
                if tname not in self.L.KV_TYPE_ID:
                    raise ValueError(f"no CUDA cache type {tname!r}; have {', '.join(self.L.KV_TYPE_ID)}")
        with self._ctx():
            return DeviceKV(self, types, cap, calibrate, eq_tokens)

    def forward(self, tokens: Any, cache: DeviceKV, logits_rows: Any = "last",
                want_hidden: bool = True) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Like Gemma3.forward: tokens at positions cache.n_past.. appended to the cache; returns
        (logits of ``logits_rows`` ("last", "all", None or row indices) as a host array, the
        final-norm hidden states [T, n_embd] as a host array, or None without ``want_hidden``)."""
        with self._ctx():
            return self._forward(tokens, cache, logits_rows, want_hidden)

    def _forward(self, tokens: Any, cache: DeviceKV, logits_rows: Any, want_hidden: bool) -> tuple[Any, Any]:
        b = self._run(tokens, cache)
        c = self.cfg
        logits = None
        if logits_rows is not None:
            if b.t == 1:  # the decode step computed the head already
                logits = self._host(b.logits).reshape(1, -1)
            else:
                if isinstance(logits_rows, str):
                    rows = b.h[-1:] if logits_rows == "last" else b.h
                else:
                    rows = b.h[self.xp.asarray(np.asarray(logits_rows, np.int64))]
                rows = self.xp.ascontiguousarray(rows)
                xr = self.xp.empty_like(rows) if self.head.wtype.startswith("tq") else None
                logits = self._host(self.L.matmul(self.head.data, self.head.wtype, rows, c.n_vocab, xr=xr))
            logits = self._softcap(logits)
        hidden = self._host(b.h) if want_hidden else None
        return logits, hidden

    def greedy_next(self, tokens: Any, cache: DeviceKV) -> int:
        """Run tokens (appending to the cache) and return the greedy id after the last one; only
        the id leaves the device (softcapping is monotonic: the argmax ignores it)."""
        with self._ctx():
            return self._greedy(tokens, cache)

    def _greedy(self, tokens: Any, cache: DeviceKV) -> int:
        b = self._run(tokens, cache)
        if b.t == 1:
            return int(self._host(b.next_id)[0])
        h = self.xp.ascontiguousarray(b.h[-1])
        xr = self.xp.empty_like(h) if self.head.wtype.startswith("tq") else None
        logits = self.L.matvec(self.head.data, self.head.wtype, h, self.cfg.n_vocab, xr=xr)
        return int(self._host(self.L.argmax(logits))[0])


# -- the engine's model object ------------------------------------------------------------------
class DeviceGemma3:
    """A Gemma 3 GGUF on the device, with Gemma3's interface for Session/generate: ``cfg``,
    ``gguf``, ``store``, ``new_cache(kv)``, ``forward(tokens, cache, logits_rows)``, plus
    ``greedy_next(tokens, cache)`` (only the id leaves the device)."""

    arch = "gemma3"

    def __init__(self, cfg: Any, gguf: Any, store: Any, runner: DeviceRunner, backend: str):
        self.cfg, self.gguf, self.store, self.runner, self.backend = cfg, gguf, store, runner, backend

    @property
    def weight_bytes(self) -> int:
        ws = [self.runner.emb]
        for b in self.runner.blk:
            ws += [w for w in (b.qk, b.q, b.k, b.v, b.o, b.gu, b.gate, b.up, b.down) if w is not None]
        return int(sum(w.data.nbytes for w in ws))

    def new_cache(self, kv: Any = None) -> DeviceKV:
        from turbospec.engine.kv.cache import KVConfig
        from turbospec.errors import UserError

        kv = kv or KVConfig()
        if kv.k_outliers:
            raise UserError("outlier K channels (--kv-k-outliers, recipe turbo3-k) are not on the CUDA backend yet; "
                            "drop them or use --backend numpy")
        calibrate = None
        if kv.equalize:
            from turbospec.engine.kv.equalize import compute_scales

            hd = self.cfg.head_dim

            def calibrate(rows: np.ndarray) -> np.ndarray:
                if kv.rope_pairs and hd % 2 == 0:
                    rows = np.concatenate([rows, np.roll(rows, hd // 2, axis=-1)])
                return compute_scales(rows, kv.equalize)
        for key in kv.layer_types:
            if not -self.cfg.n_layer <= key < self.cfg.n_layer:
                raise UserError(f"per-layer cache type for layer {key}, but the model has {self.cfg.n_layer} layers")
        types = [kv.types_for(i, self.cfg.n_layer) for i in range(self.cfg.n_layer)]
        try:
            return self.runner.new_cache(types, calibrate=calibrate, eq_tokens=kv.equalize_tokens)
        except ValueError as e:
            raise UserError(f"{e}; pick another -ctk/-ctv or use --backend numpy") from None

    def forward(self, tokens: Any, cache: DeviceKV, logits_rows: Any = "last") -> tuple[Any, Any]:
        from turbospec.errors import UserError

        try:
            return self.runner.forward(tokens, cache, logits_rows)
        except ValueError as e:
            raise UserError(str(e)) from None

    def greedy_next(self, tokens: Any, cache: DeviceKV) -> int:
        return self.runner.greedy_next(tokens, cache)


def gguf_tensors(g: Any, skip: tuple[str, ...] = ()) -> dict[str, tuple[np.ndarray, str]]:
    """Every tensor of an open GGUFFile (but ``skip``) as (raw bytes, GGML type name) for the
    kernels (DeviceRunner, and the MTP assistant in engine/spec/mtp_device.py)."""
    from turbospec.errors import UserError

    tensors = {}
    for name in g.tensors:
        if name in skip:
            continue
        info = g.info(name)
        tname = GGML_TYPE_NAMES.get(info.type_id)
        if tname is None:
            raise UserError(f"{g.path}: tensor {name} has GGML type {info.type_name}, which the CUDA kernels do "
                            f"not read ({', '.join(GGML_TYPE_NAMES.values())}); use --backend numpy")
        tensors[name] = (np.asarray(g.raw(name)), tname)
    return tensors


def load_device_model(path: Any = None, backend: str = "cupy", use_graph: bool = True, quiet: bool = True,
                      use_cache: bool = True) -> DeviceGemma3:
    """Open a Gemma 3 GGUF (None = the default model) for the CUDA kernels.

    backend "cupy": weights and caches on the GPU (CUDA graph of the decode step unless
    ``use_graph`` is False or TURBOSPEC_CUDA_GRAPH=0); "emu": NumPy arrays through the host harness (tests; slow)."""
    import os
    from pathlib import Path

    from turbospec.engine.gguf import GGUFFile
    from turbospec.engine.loader import default_model_path
    from turbospec.engine.models.gemma3 import ARCH, Gemma3Config, weight_entries
    from turbospec.engine.weights import StoragePolicy, WeightStore
    from turbospec.errors import UserError

    use_graph = use_graph and os.environ.get("TURBOSPEC_CUDA_GRAPH", "1") != "0"
    if backend == "cupy":
        try:
            import cupy as xp

            xp.cuda.runtime.getDeviceCount()
        except Exception as e:
            raise UserError(f"--backend cupy needs CuPy and a usable GPU ({type(e).__name__}); "
                            "use --backend numpy") from None
    elif backend == "emu":
        xp = np
    else:
        raise UserError(f"device backend {backend!r}: use cupy (or emu in tests)")
    p = Path(path) if path else default_model_path()
    g = GGUFFile.open(p)
    if g.arch != ARCH:
        raise UserError(f"{p}: architecture {g.arch or '(none)'!r} is not supported on the CUDA backend "
                        f"(it runs {ARCH}); use --backend numpy")
    cfg = Gemma3Config.from_gguf(g)
    weight_entries(cfg, g)  # fails early, naming a missing tensor
    try:
        runner = DeviceRunner(cfg, gguf_tensors(g), xp, use_graph=use_graph)
    except ValueError as e:
        raise UserError(f"{p}: {e}; use --backend numpy") from None
    store = WeightStore(g, StoragePolicy(), use_cache=use_cache)  # its dir keys the tokenizer cache
    return DeviceGemma3(cfg, g, store, runner, backend)
