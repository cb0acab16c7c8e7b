"""Gemma 3 (GGUF architecture ``gemma3``): the forward pass over NumPy.

Attribute names are the GGUF tensor names (``blk[i].attn_norm`` is ``blk.{i}.attn_norm.weight``).
Two fusions, named as llama.cpp names fused tensors: ``attn_qkv`` = rows of attn_q, attn_k,
attn_v; ``ffn_gate_up`` = rows of ffn_gate, ffn_up (one BLAS call instead of three / two).

Per block (DESIGN.md):  x += post_attention_norm(attn(attn_norm(x)))
                        x += post_ffw_norm(ffn_down(gelu_tanh(gate(h)) * up(h))),  h = ffn_norm(x)
Q and K get a per-head RMSNorm before NEOX RoPE (base 1e6 on global layers, 1e4 on sliding
ones); attention scale 1/sqrt(head_dim); embeddings × sqrt(n_embd); the output head is the
tied token embedding after output_norm. Norm weights already include Gemma's +1.

Napkin math, one decode token on the default model: 18 layers × 5.6M weights + the 168M-weight
LM head = 268M multiply-adds; the file's blocks unpacked to int8 (engine/linear.py BlockInt8)
stream ~306 MB of weights per token (int16 would be ~540 MB), so at ~30 GB/s the floor is ~10 ms
(~100 tok/s) before attention and Python overhead (measured 19.4 ms a token, 2026-12-04).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from turbospec.engine.gguf import GGUFFile
from turbospec.engine.kv.cache import KVCache, KVConfig
from turbospec.engine.linear import BlockInt8, Dense, RowInt16
from turbospec.engine.weights import Entry, WeightStore
from turbospec.errors import UserError

ARCH = "gemma3"


@dataclass
class Gemma3Config:
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_vocab: int
    eps: float
    window: int
    rope_base: float
    rope_base_swa: float
    sliding: list[bool] = field(default_factory=list)
    n_ctx_train: int = 32768
    softcap: float = 0.0

    @classmethod
    def from_gguf(cls, g: GGUFFile) -> Gemma3Config:
        a = g.arch
        n_layer = int(g.require(f"{a}.block_count"))
        n_embd = int(g.require(f"{a}.embedding_length"))
        n_head = int(g.require(f"{a}.attention.head_count"))
        n_head_kv = int(g.get(f"{a}.attention.head_count_kv", n_head))
        head_dim = int(g.get(f"{a}.attention.key_length", n_embd // n_head))
        window = int(g.get(f"{a}.attention.sliding_window", 0) or 0)
        pattern = g.get(f"{a}.attention.sliding_window_pattern")
        if pattern is not None and np.ndim(pattern) == 1 and len(pattern) == n_layer:
            sliding = [bool(x) for x in pattern]
        else:
            period = int(pattern) if pattern is not None and np.ndim(pattern) == 0 else 6
            sliding = [window > 0 and (i + 1) % period != 0 for i in range(n_layer)]
        emb = g.info("token_embd.weight")
        cfg = cls(
            n_layer=n_layer,
            n_embd=n_embd,
            n_head=n_head,
            n_head_kv=n_head_kv,
            head_dim=head_dim,
            n_ff=int(g.require(f"{a}.feed_forward_length")),
            n_vocab=int(emb.shape[0]),
            eps=float(g.get(f"{a}.attention.layer_norm_rms_epsilon", 1e-6)),
            window=window if window > 0 else 1 << 30,
            rope_base=float(g.get(f"{a}.rope.freq_base", 1e6)),
            rope_base_swa=float(g.get(f"{a}.rope.freq_base_swa", 10000.0)),
            sliding=sliding,
            n_ctx_train=int(g.get(f"{a}.context_length", 32768)),
            softcap=float(g.get(f"{a}.final_logit_softcapping", 0.0) or 0.0),
        )
        if n_head % n_head_kv:
            raise UserError(f"{g.path}: head_count {n_head} is not a multiple of head_count_kv {n_head_kv}")
        if emb.shape[1] != n_embd:
            raise UserError(f"{g.path}: token_embd has width {emb.shape[1]}, expected n_embd {n_embd}")
        return cfg


# -- plain ops (the CuPy backend mirrors these with kernels) -------------------------------------


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    ms = np.einsum("...i,...i->...", x, x)[..., None] / np.float32(x.shape[-1])
    return x * (np.float32(1.0) / np.sqrt(ms + np.float32(eps))) * w


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    c = np.float32(math.sqrt(2.0 / math.pi))
    return np.float32(0.5) * x * (np.float32(1.0) + np.tanh(c * (x + np.float32(0.044715) * x * x * x)))


def rope_tables(pos: np.ndarray, base: float, d: int) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin of pos * base^(-2i/d), i < d/2, as (T, 1, d/2) float32 (angles in float64)."""
    half = d // 2
    inv = base ** (-np.arange(half, dtype=np.float64) * 2.0 / d)
    ang = pos.astype(np.float64)[:, None] * inv[None, :]
    return np.cos(ang).astype(np.float32)[:, None, :], np.sin(ang).astype(np.float32)[:, None, :]


def rope_neox(x: np.ndarray, pos: np.ndarray, base: float, tables=None) -> np.ndarray:
    """NEOX RoPE on (T, H, D): rotate pairs (i, i + D/2) by pos * base^(-2i/D)."""
    half = x.shape[-1] // 2
    cos, sin = tables if tables is not None else rope_tables(pos, base, x.shape[-1])
    x1, x2 = x[..., :half], x[..., half:]
    out = np.empty_like(x)
    np.subtract(x1 * cos, x2 * sin, out=out[..., :half])
    np.add(x2 * cos, x1 * sin, out=out[..., half:])
    return out


@dataclass
class Block:
    attn_norm: np.ndarray
    attn_qkv: Dense | RowInt16 | BlockInt8
    attn_q_norm: np.ndarray
    attn_k_norm: np.ndarray
    attn_output: Dense | RowInt16 | BlockInt8
    post_attention_norm: np.ndarray
    ffn_norm: np.ndarray
    ffn_gate_up: Dense | RowInt16 | BlockInt8
    ffn_down: Dense | RowInt16 | BlockInt8
    post_ffw_norm: np.ndarray


def weight_entries(cfg: Gemma3Config, g: GGUFFile) -> list[Entry]:
    e = [Entry("output_norm", ("output_norm.weight",), "norm")]
    head = "output.weight" if "output.weight" in g.tensors else "token_embd.weight"
    e.append(Entry("output", (head,), "linear"))
    for i in range(cfg.n_layer):
        p = f"blk.{i}."
        for n in ("attn_norm", "attn_q_norm", "attn_k_norm", "post_attention_norm", "ffn_norm", "post_ffw_norm"):
            e.append(Entry(f"{p}{n}", (f"{p}{n}.weight",), "norm"))
        e.append(Entry(f"{p}attn_qkv", (f"{p}attn_q.weight", f"{p}attn_k.weight", f"{p}attn_v.weight"), "linear"))
        e.append(Entry(f"{p}attn_output", (f"{p}attn_output.weight",), "linear"))
        e.append(Entry(f"{p}ffn_gate_up", (f"{p}ffn_gate.weight", f"{p}ffn_up.weight"), "linear"))
        e.append(Entry(f"{p}ffn_down", (f"{p}ffn_down.weight",), "linear"))
    for ent in e:  # fail early, with the tensor's name, on an incomplete file
        for src in ent.sources:
            g.info(src)
    return e


class Gemma3:
    """The model: weights plus ``forward`` over a KVCache."""

    arch = ARCH

    def __init__(self, cfg: Gemma3Config, gguf: GGUFFile, store: WeightStore):
        self.cfg = cfg
        self.gguf = gguf
        self.store = store
        self.output_norm = store.norm("output_norm")
        self.output = store.linear("output")
        self.embd_raw = gguf.raw("token_embd.weight")
        self.embd_type = gguf.info("token_embd.weight").type_id
        self.blk = []
        for i in range(cfg.n_layer):
            p = f"blk.{i}."
            self.blk.append(
                Block(
                    attn_norm=store.norm(p + "attn_norm"),
                    attn_qkv=store.linear(p + "attn_qkv"),
                    attn_q_norm=store.norm(p + "attn_q_norm"),
                    attn_k_norm=store.norm(p + "attn_k_norm"),
                    attn_output=store.linear(p + "attn_output"),
                    post_attention_norm=store.norm(p + "post_attention_norm"),
                    ffn_norm=store.norm(p + "ffn_norm"),
                    ffn_gate_up=store.linear(p + "ffn_gate_up"),
                    ffn_down=store.linear(p + "ffn_down"),
                    post_ffw_norm=store.norm(p + "post_ffw_norm"),
                )
            )
        self.attn_scale = 1.0 / math.sqrt(cfg.head_dim)
        # per-head norm weights of the Q heads then the K heads (layer_attention norms them together)
        self._qk_norm = [
            np.concatenate([np.broadcast_to(b.attn_q_norm, (cfg.n_head, cfg.head_dim)),
                            np.broadcast_to(b.attn_k_norm, (cfg.n_head_kv, cfg.head_dim))]).astype(np.float32)
            for b in self.blk
        ]

    @classmethod
    def load(cls, gguf: GGUFFile, store: WeightStore, quiet: bool = False) -> Gemma3:
        cfg = Gemma3Config.from_gguf(gguf)
        store.prepare(weight_entries(cfg, gguf), quiet=quiet)
        return cls(cfg, gguf, store)

    def new_cache(self, kv: KVConfig | None = None) -> KVCache:
        c = self.cfg
        return KVCache(c.n_layer, c.n_head_kv, c.head_dim, c.sliding, c.window, kv)

    @property
    def weight_bytes(self) -> int:
        total = self.output.nbytes
        for b in self.blk:
            total += b.attn_qkv.nbytes + b.attn_output.nbytes + b.ffn_gate_up.nbytes + b.ffn_down.nbytes
        return int(total)

    # -- pieces (the MTP drafter reuses embed and head) ------------------------------------
    def embed(self, tokens: np.ndarray) -> np.ndarray:
        """Token embeddings × sqrt(n_embd), dequantized exactly from the file's rows."""
        from turbospec.engine.gguf import dequantize

        tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.cfg.n_vocab):
            bad = int(tokens[(tokens < 0) | (tokens >= self.cfg.n_vocab)][0])
            raise UserError(f"token id {bad} is outside the vocabulary (0..{self.cfg.n_vocab - 1})")
        rows = dequantize(self.embd_raw[tokens], self.embd_type, (len(tokens), self.cfg.n_embd))
        return rows * np.float32(math.sqrt(self.cfg.n_embd))

    def head(self, hidden: np.ndarray) -> np.ndarray:
        logits = self.output.apply(hidden)
        if self.cfg.softcap:
            sc = np.float32(self.cfg.softcap)
            logits = np.tanh(logits / sc) * sc
        return logits

    def layer_attention(self, i: int, h: np.ndarray, pos: np.ndarray, cache: KVCache, rope=None) -> np.ndarray:
        c, b = self.cfg, self.blk[i]
        T = h.shape[0]
        qkv = b.attn_qkv.apply(h)
        nq, nk = c.n_head * c.head_dim, c.n_head_kv * c.head_dim
        # Q and K heads side by side: one per-head RMSNorm (each head with its own weight row)
        # and one RoPE call for both, the same arithmetic per element as two calls each
        qk = qkv[:, : nq + nk].reshape(T, c.n_head + c.n_head_kv, c.head_dim)
        v = qkv[:, nq + nk :].reshape(T, c.n_head_kv, c.head_dim)
        qk = rms_norm(qk, self._qk_norm[i], c.eps)
        base = c.rope_base_swa if c.sliding[i] else c.rope_base
        tables = rope[base] if rope is not None else rope_tables(pos, base, c.head_dim)
        qk = rope_neox(qk, pos, base, tables)
        q, k = qk[:, : c.n_head], qk[:, c.n_head :]
        o = cache.layers[i].attend(q, pos, self.attn_scale, k_new=k, v_new=v)
        return b.attn_output.apply(o.reshape(T, c.n_head * c.head_dim))

    def forward(self, tokens, cache: KVCache, logits_rows="last") -> tuple[np.ndarray | None, np.ndarray]:
        """Run tokens at positions cache.n_past.. through the model, appending to the cache.

        Returns (logits, hidden): hidden is the final-norm hidden state of every token
        (T, n_embd); logits are for ``logits_rows``: "last", "all", None, or row indices.
        """
        c = self.cfg
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        T = len(tokens)
        pos = np.arange(cache.n_past, cache.n_past + T, dtype=np.int64)
        x = self.embed(tokens)
        rope = {base: rope_tables(pos, base, c.head_dim) for base in {c.rope_base, c.rope_base_swa}}
        for i, b in enumerate(self.blk):
            h = rms_norm(x, b.attn_norm, c.eps)
            x = x + rms_norm(self.layer_attention(i, h, pos, cache, rope), b.post_attention_norm, c.eps)
            h = rms_norm(x, b.ffn_norm, c.eps)
            gu = b.ffn_gate_up.apply(h)
            a = gelu_tanh(gu[:, : c.n_ff]) * gu[:, c.n_ff :]
            x = x + rms_norm(b.ffn_down.apply(a), b.post_ffw_norm, c.eps)
        cache.n_past += T
        hidden = rms_norm(x, self.output_norm, c.eps)
        if logits_rows is None:
            return None, hidden
        if isinstance(logits_rows, str):
            rows = hidden[-1:] if logits_rows == "last" else hidden
        else:
            rows = hidden[np.asarray(logits_rows)]
        return self.head(rows), hidden
