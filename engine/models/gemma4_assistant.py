"""The MTP assistant (GGUF architecture ``gemma4_assistant``): loading, validation, forward.

A small decoder that drafts tokens for a Gemma-style target from the target's own state
(DESIGN.md, "MTP assistant"). One draft step k (k = 0..n_steps-1), at position
``pos = attn_pos + 1 + k``::

    x       = pre_projection · concat(target.embed([token]) (already × sqrt(n_embd)), h_prev)
    per layer i:
        q   = RoPE(RMSNorm_head(attn_q · RMSNorm(x)), pos)          (n_head, head_dim)
        o   = attention of q over the TARGET's KV cache layer src[i] (the last target layer
              of layer i's kind, sliding or global), read-only, cells <= attn_pos
        x  += post_attention_norm(attn_output · o)
        x  += post_ffw_norm(ffn_down · (gelu_tanh(ffn_gate · h) * ffn_up · h)),  h = ffn_norm(x)
    h_inner = output_norm(x);   next h_prev = post_projection · h_inner
    logits  = h_inner · E^T   (dense) or the centroid-routed head (below)

Constraints the file must meet to attend over the target's cache: ``attention.key_length`` =
the target's head_dim and ``attention.head_count`` a multiple of the target's head_count_kv
(query heads are grouped over the target's KV heads as in the target's own GQA). RoPE uses the
assistant's ``rope.freq_base`` (global layers) / ``rope.freq_base_swa`` (sliding layers); the
trainer writes the target's bases. The attention scale is 1/sqrt(head_dim).

Heads. E = the rows that score tokens: the assistant's own ``token_embd.weight`` (n_vocab,
n_embd), or — when ``<arch>.use_target_embeddings`` is true (a turbospec key; the file then
needs no token_embd and n_embd must equal the target's) — the target's LM-head rows (its tied
token_embd, as the target's engine stores them). ``use_ordered_embeddings`` (the fork's key):
the assistant's token_embd rows are stored in ``token_ordering`` order (row r is token
ordering[r]), so a cluster's rows are contiguous. Centroid-routed head (n_centroids > 0):
centroid logits = centroids · h_inner, the top ``centroid_top_k`` clusters, their token ids
from ``token_ordering`` viewed as [n_centroids, n_vocab / n_centroids], those tokens scored,
scattered into a row of -1e30, argmax. With top_k = n_centroids it equals the dense head.

Napkin math, the default-model assistant (4 layers, n_embd 640, n_ff 1024, 4 heads × 256):
per step ~13M MACs in the layers + 1.2M projections + 1.3M centroid logits + 32 × 128 rows
× 640 = 2.6M for the candidates ≈ 18M MACs — ~1/15 of one target token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from turbospec.engine.gguf import GGUFFile, dequantize
from turbospec.engine.models.gemma3 import gelu_tanh, rms_norm, rope_neox, rope_tables
from turbospec.engine.sampling import top_probability
from turbospec.errors import UserError

ARCH = "gemma4_assistant"
VOCAB_CHECK_FROM = 5  # the fork's verifier compares token text from id 5 on (specials may differ)
GGML_I32 = 26
NEG = np.float32(-1e30)

LAYER_TENSORS = (
    "attn_norm",
    "attn_q",
    "attn_q_norm",
    "attn_output",
    "post_attention_norm",
    "ffn_norm",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
    "post_ffw_norm",
)


@dataclass
class AssistantConfig:
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    head_dim: int
    n_vocab: int
    n_embd_backbone: int
    eps: float = 1e-6
    rope_base: float = 1e6
    rope_base_swa: float = 1e4
    window: int = 1 << 30
    sliding: list[bool] = field(default_factory=list)
    n_centroids: int = 0  # 0 = dense head
    centroid_top_k: int = 0
    use_ordered_embeddings: bool = False
    use_target_embeddings: bool = False
    k_eq_v: bool = False  # a Gemma 4 option; V is read from the target's V cache either way
    requires_target_arch: str = "gemma3"
    softcap: float = 0.0

    @classmethod
    def from_gguf(cls, g: GGUFFile) -> AssistantConfig:
        name = g.path.name
        if g.arch != ARCH:
            raise UserError(
                f"MTP head {name}: general.architecture is {g.arch or '(none)'!r}, expected {ARCH!r}; "
                "pass an assistant GGUF with --mtp-head (or build one with `turbospec train-assistant`)"
            )
        a = ARCH
        n_layer = int(g.require(f"{a}.block_count"))
        n_embd = int(g.require(f"{a}.embedding_length"))
        n_head = int(g.require(f"{a}.attention.head_count"))
        pattern = g.get(f"{a}.attention.sliding_window_pattern")
        if pattern is None or np.ndim(pattern) != 1 or len(pattern) != n_layer:
            raise UserError(
                f"MTP head {name}: {a}.attention.sliding_window_pattern must list one bool per layer "
                f"({n_layer}); the file is malformed"
            )
        tokens = g.get("tokenizer.ggml.tokens")
        if tokens is None:
            raise UserError(
                f"MTP head {name}: no tokenizer.ggml.tokens, so its vocabulary cannot be checked against "
                "the target's; rebuild it with `turbospec train-assistant`"
            )
        window = int(g.get(f"{a}.attention.sliding_window", 0) or 0)
        return cls(
            n_layer=n_layer,
            n_embd=n_embd,
            n_ff=int(g.require(f"{a}.feed_forward_length")),
            n_head=n_head,
            head_dim=int(g.get(f"{a}.attention.key_length", n_embd // max(n_head, 1))),
            n_vocab=len(tokens),
            n_embd_backbone=int(g.require(f"{a}.n_embd_backbone")),
            eps=float(g.get(f"{a}.attention.layer_norm_rms_epsilon", 1e-6)),
            rope_base=float(g.get(f"{a}.rope.freq_base", 1e6)),
            rope_base_swa=float(g.get(f"{a}.rope.freq_base_swa", 1e4)),
            window=window if window > 0 else 1 << 30,
            sliding=[bool(x) for x in pattern],
            n_centroids=int(g.get(f"{a}.n_centroids", 0) or 0),
            centroid_top_k=int(g.get(f"{a}.centroid_top_k", 0) or 0),
            use_ordered_embeddings=bool(g.get(f"{a}.use_ordered_embeddings", False)),
            use_target_embeddings=bool(g.get(f"{a}.use_target_embeddings", False)),
            k_eq_v=bool(g.get(f"{a}.attention.k_eq_v", False)),
            requires_target_arch=str(g.require(f"{a}.requires_target_arch")),
            softcap=float(g.get(f"{a}.final_logit_softcapping", 0.0) or 0.0),
        )


@dataclass
class AssistantBlock:
    attn_norm: np.ndarray
    attn_q: np.ndarray
    attn_q_norm: np.ndarray
    attn_output: np.ndarray
    post_attention_norm: np.ndarray
    ffn_norm: np.ndarray
    ffn_gate: np.ndarray
    ffn_up: np.ndarray
    ffn_down: np.ndarray
    post_ffw_norm: np.ndarray


def read_i32(g: GGUFFile, name: str) -> np.ndarray:
    """An I32 tensor (GGUFFile.dequantize covers float types only)."""
    t = g.info(name)
    if t.type_id != GGML_I32:
        raise UserError(
            f"MTP head {g.path.name}: {name} is {t.type_name}, expected I32 (token ids are never quantized); "
            "rebuild the file"
        )
    return np.ascontiguousarray(g.raw(name)).view("<i4").reshape(-1).astype(np.int64)


def expected_shapes(c: AssistantConfig) -> dict[str, tuple[int, ...]]:
    """Tensor name -> numpy shape (out, in) the loader requires."""
    e: dict[str, tuple[int, ...]] = {
        "mtp.pre_projection.weight": (c.n_embd, 2 * c.n_embd_backbone),
        "mtp.post_projection.weight": (c.n_embd_backbone, c.n_embd),
        "output_norm.weight": (c.n_embd,),
    }
    if not c.use_target_embeddings:
        e["token_embd.weight"] = (c.n_vocab, c.n_embd)
    if c.n_centroids:
        e["mtp.centroids.weight"] = (c.n_centroids, c.n_embd)
    qd = c.n_head * c.head_dim
    per = {
        "attn_norm": (c.n_embd,),
        "attn_q": (qd, c.n_embd),
        "attn_q_norm": (c.head_dim,),
        "attn_output": (c.n_embd, qd),
        "post_attention_norm": (c.n_embd,),
        "ffn_norm": (c.n_embd,),
        "ffn_gate": (c.n_ff, c.n_embd),
        "ffn_up": (c.n_ff, c.n_embd),
        "ffn_down": (c.n_embd, c.n_ff),
        "post_ffw_norm": (c.n_embd,),
    }
    for i in range(c.n_layer):
        for n, s in per.items():
            e[f"blk.{i}.{n}.weight"] = s
    return e


def _one_vector_product(w: np.ndarray):
    """x -> w @ x for large matrices on the native kernels: block int8 where that holds w
    exactly (the shipped assistant's q8_0 matrices: 1.125 bytes a weight), else row-scaled
    int16; small matrices, or no native kernels, float32. The rows split over the threads in C
    (linear.POOL; when the target holds the pool, in the calling thread): mtp B = 2 / 3 went
    65.2 / 62.8 -> 67.2 / 65.3 tok/s at depth 1 against the calling thread alone (2026-12-05)."""
    from turbospec.engine import native
    from turbospec.engine.linear import BlockInt8, RowInt16, block_int8_exact, quantize_rows_int16
    from turbospec.engine.weights import INT16_MIN_ELEMENTS

    if w.ndim == 2 and w.size >= INT16_MIN_ELEMENTS and native.library() is not None:
        blocks = block_int8_exact(w)
        lin = BlockInt8(*blocks) if blocks is not None else RowInt16(*quantize_rows_int16(w))
        return lambda x: lin.apply(np.asarray(x, np.float32)[None])[0]
    return lambda x: w @ x


class Gemma4Assistant:
    """Weights (float32) and the one-step forward. Validate against a target with ``validate``."""

    arch = ARCH

    def __init__(self, cfg: AssistantConfig, tensors: dict[str, np.ndarray], token_ordering: np.ndarray | None,
                 tokens: list[str] | None = None, path: Path | None = None):
        self.cfg = cfg
        self.path = path
        self.tokens = tokens
        c = cfg
        self.pre_projection = tensors["mtp.pre_projection.weight"]
        self.post_projection = tensors["mtp.post_projection.weight"]
        self.output_norm = tensors["output_norm.weight"]
        self.token_embd = tensors.get("token_embd.weight")  # None with use_target_embeddings
        self.centroids = tensors.get("mtp.centroids.weight")
        self.token_ordering = token_ordering
        self.blk = [
            AssistantBlock(**{n: tensors[f"blk.{i}.{n}.weight"] for n in LAYER_TENSORS}) for i in range(c.n_layer)
        ]
        self.attn_scale = 1.0 / math.sqrt(c.head_dim)
        self.src: list[int] = []  # target layer each assistant layer attends over (set by validate)
        self._mv: dict[int, object] = {}  # id(matrix) -> its one-vector product (see mv)

    def mv(self, w: np.ndarray, x: np.ndarray) -> np.ndarray:
        """w @ x for one vector. Matrices of at least INT16_MIN_ELEMENTS weights (the target's
        ``auto`` storage rule) run as row-scaled int16 through the native kernel in the calling
        thread, when it is built; smaller ones, or without it, float32 BLAS. Napkin math, the
        default model's assistant: 22 products of 0.65-1.3M weights a step = 52 MB of float32,
        which no cache holds once the target's forward has streamed its 538 MB; int16 is 26 MB.
        Measured after a target forward (2 draft steps, median of 14): float32 BLAS 8.8 ms a step,
        int16 split over the crew 6.3-6.6 (each hand-off ~50 µs, 22 a step), int16 in the calling
        thread 4.4. Drafts need not be exact (verification is), and int16 rows are within 2^-16
        of each row's largest weight of the file's q8_0 values; since then the q8_0 matrices run
        as block int8, with int8 activations, split over the threads (``_one_vector_product``).
        The weights are read-only once drafting starts."""
        f = self._mv.get(id(w))
        if f is None:
            f = self._mv[id(w)] = _one_vector_product(w)
        return f(x)

    # -- loading ------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> Gemma4Assistant:
        p = Path(path)
        if not p.exists():
            raise UserError(f"MTP head not found: {p}; pass an existing assistant GGUF with --mtp-head")
        g = GGUFFile.open(p)
        cfg = AssistantConfig.from_gguf(g)
        name = p.name
        tensors: dict[str, np.ndarray] = {}
        for tname, shape in expected_shapes(cfg).items():
            t = g.tensors.get(tname)
            if t is None:
                raise UserError(f"MTP head {name}: missing tensor {tname!r}; the file is incomplete or malformed")
            if tuple(t.shape) != shape:
                raise UserError(
                    f"MTP head {name}: tensor {tname} has shape {list(t.shape)}, expected {list(shape)} from the "
                    "file's own keys; the file is malformed"
                )
            tensors[tname] = dequantize(g.raw(tname), t.type_id, shape).astype(np.float32)
        order = None
        if cfg.n_centroids or cfg.use_ordered_embeddings:
            if "mtp.token_ordering.weight" not in g.tensors:
                raise UserError(f"MTP head {name}: missing tensor 'mtp.token_ordering.weight' (I32, n_vocab)")
            order = read_i32(g, "mtp.token_ordering.weight")
        tokens = list(g.get("tokenizer.ggml.tokens"))
        m = cls(cfg, tensors, order, tokens, p)
        m.check_self()
        return m

    def named_tensors(self) -> dict[str, np.ndarray]:
        """The weights under their GGUF names (float32, as loaded; token_ordering not included)."""
        t = {"mtp.pre_projection.weight": self.pre_projection, "mtp.post_projection.weight": self.post_projection,
             "output_norm.weight": self.output_norm}
        if self.token_embd is not None:
            t["token_embd.weight"] = self.token_embd
        if self.centroids is not None:
            t["mtp.centroids.weight"] = self.centroids
        for i, b in enumerate(self.blk):
            for n in LAYER_TENSORS:
                t[f"blk.{i}.{n}.weight"] = getattr(b, n)
        return t

    def check_self(self) -> None:
        """Checks that need no target: head geometry and token_ordering."""
        c, name = self.cfg, self.path.name if self.path else "(memory)"
        if c.n_centroids:
            if c.n_centroids < 0 or c.n_vocab % c.n_centroids:
                raise UserError(
                    f"MTP head {name}: n_vocab {c.n_vocab} is not divisible by n_centroids {c.n_centroids}; "
                    "the centroid head needs equal clusters"
                )
            if not 1 <= c.centroid_top_k <= c.n_centroids:
                raise UserError(
                    f"MTP head {name}: centroid_top_k {c.centroid_top_k} is outside 1..n_centroids ({c.n_centroids})"
                )
        if self.token_ordering is not None:
            o = self.token_ordering
            if len(o) != c.n_vocab:
                raise UserError(
                    f"MTP head {name}: token_ordering has {len(o)} entries, expected n_vocab {c.n_vocab}; "
                    "the file is malformed"
                )
            if o.min() < 0 or o.max() >= c.n_vocab or np.bincount(o, minlength=c.n_vocab).max() != 1:
                raise UserError(f"MTP head {name}: token_ordering is not a permutation of 0..{c.n_vocab - 1}")

    def validate(self, target, target_tokens: list[str]) -> None:
        """Strict checks against the target (as the fork's verifier); each failure one line.
        Sets ``self.src`` (the target layer each assistant layer reads)."""
        c, tc = self.cfg, target.cfg
        name = self.path.name if self.path else "(memory)"
        t_arch = getattr(target, "arch", "")
        if c.requires_target_arch != t_arch:
            raise UserError(
                f"MTP head {name} was built for target architecture {c.requires_target_arch!r}, the model is "
                f"{t_arch!r}; use an assistant trained for this model"
            )
        if c.n_embd_backbone != tc.n_embd:
            raise UserError(
                f"MTP head {name}: n_embd_backbone {c.n_embd_backbone} != the target's n_embd {tc.n_embd}; "
                "use an assistant trained for this model"
            )
        if c.n_vocab != tc.n_vocab or len(target_tokens) != c.n_vocab:
            raise UserError(
                f"MTP head {name} has a vocabulary of {c.n_vocab} tokens, the target has {tc.n_vocab}; "
                "use an assistant trained for this model"
            )
        mine = self.tokens or []
        for i in range(VOCAB_CHECK_FROM, c.n_vocab):
            if mine[i] != target_tokens[i]:
                raise UserError(
                    f"MTP head {name}: token {i} is {mine[i]!r}, the target's is {target_tokens[i]!r}; "
                    "use an assistant trained with this model's tokenizer"
                )
        if c.head_dim != tc.head_dim or c.n_head % tc.n_head_kv:
            raise UserError(
                f"MTP head {name}: {c.n_head} query heads of {c.head_dim} cannot attend over the target's KV "
                f"({tc.n_head_kv} heads of {tc.head_dim}); head_dim must match and head_count be a multiple"
            )
        if c.use_target_embeddings and c.n_embd != tc.n_embd:
            raise UserError(
                f"MTP head {name}: use_target_embeddings needs n_embd {c.n_embd} == the target's {tc.n_embd}"
            )
        self.src = source_layers(c.sliding, tc.sliding, name)

    # -- forward ------------------------------------------------------------------------------
    def step(self, target, cache, token: int, h_prev: np.ndarray, attn_pos: int,
             k: int) -> tuple[np.ndarray, np.ndarray]:
        """Draft step k: (h_inner (n_embd,), next h_prev (n_embd_backbone,)). Reads only the
        target's cache cells at positions <= attn_pos; writes nothing."""
        c = self.cfg
        pos = np.array([attn_pos + 1 + k], np.int64)
        e = target.embed(np.array([token]))[0]
        x = self.mv(self.pre_projection, np.concatenate([e, np.asarray(h_prev, np.float32)]))
        tables = {b: rope_tables(pos, b, c.head_dim) for b in {c.rope_base, c.rope_base_swa}}
        for i, b in enumerate(self.blk):
            h = rms_norm(x, b.attn_norm, c.eps)
            q = self.mv(b.attn_q, h).reshape(1, c.n_head, c.head_dim)
            q = rms_norm(q, b.attn_q_norm, c.eps)
            base = c.rope_base_swa if c.sliding[i] else c.rope_base
            q = rope_neox(q, pos, base, tables[base])
            o = cache.layers[self.src[i]].attend(q, pos, self.attn_scale, max_pos=attn_pos)
            x = x + rms_norm(self.mv(b.attn_output, o.reshape(-1)), b.post_attention_norm, c.eps)
            h = rms_norm(x, b.ffn_norm, c.eps)
            ff = gelu_tanh(self.mv(b.ffn_gate, h)) * self.mv(b.ffn_up, h)
            x = x + rms_norm(self.mv(b.ffn_down, ff), b.post_ffw_norm, c.eps)
        h_inner = rms_norm(x, self.output_norm, c.eps)
        return h_inner, self.mv(self.post_projection, h_inner)

    # -- heads --------------------------------------------------------------------------------
    def _cap(self, s: np.ndarray) -> np.ndarray:
        if self.cfg.softcap:
            sc = np.float32(self.cfg.softcap)
            return np.tanh(s / sc) * sc
        return s

    def rows(self, ids: np.ndarray, target) -> np.ndarray:
        """The scoring rows of token ids (len(ids), n_embd)."""
        if self.cfg.use_target_embeddings:
            return target.output.rows(ids)
        if self.cfg.use_ordered_embeddings:
            return self.token_embd[self.inverse_ordering[ids]]
        return self.token_embd[ids]

    @property
    def inverse_ordering(self) -> np.ndarray:
        inv = getattr(self, "_inv", None)
        if inv is None:
            inv = np.empty_like(self.token_ordering)
            inv[self.token_ordering] = np.arange(len(self.token_ordering))
            self._inv = inv
        return inv

    def dense_logits(self, h_inner: np.ndarray, target) -> np.ndarray:
        """Logits over the whole vocabulary (n_vocab,), in token-id order."""
        c = self.cfg
        if c.use_target_embeddings:
            s = target.output.apply(h_inner[None].astype(np.float32))[0]
        elif c.use_ordered_embeddings:
            s = np.empty(c.n_vocab, np.float32)
            s[self.token_ordering] = self.token_embd @ h_inner
        else:
            s = self.token_embd @ h_inner
        return self._cap(s)

    def routed_logits(self, h_inner: np.ndarray, target, top_k: int | None = None) -> np.ndarray:
        """The centroid-routed head: a full row, -1e30 outside the top-k clusters' tokens."""
        c = self.cfg
        top, ids = self._route(h_inner, top_k)
        out = np.full(c.n_vocab, NEG, np.float32)
        out[ids] = self._cap(self._routed_scores(ids, top, h_inner, target))
        return out

    def _route(self, h_inner: np.ndarray, top_k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(the top-k clusters by centroid score, the token ids they hold)."""
        c = self.cfg
        k = top_k or c.centroid_top_k
        cl = self.mv(self.centroids, h_inner)
        top = np.argpartition(-cl, k - 1)[:k] if k < c.n_centroids else np.arange(c.n_centroids)
        per = c.n_vocab // c.n_centroids
        return top, self.token_ordering.reshape(c.n_centroids, per)[top].reshape(-1)

    def _routed_scores(self, ids: np.ndarray, top: np.ndarray, h_inner: np.ndarray, target) -> np.ndarray:
        """Raw scores of the routed candidate ids (before the softcap)."""
        c = self.cfg
        if c.use_ordered_embeddings and not c.use_target_embeddings:
            per = c.n_vocab // c.n_centroids
            return self.token_embd.reshape(c.n_centroids, per, c.n_embd)[top].reshape(-1, c.n_embd) @ h_inner
        if c.use_target_embeddings and hasattr(target.output, "score_rows"):
            return target.output.score_rows(ids, h_inner)
        return self.rows(ids, target) @ h_inner

    def logits(self, h_inner: np.ndarray, target) -> np.ndarray:
        return self.routed_logits(h_inner, target) if self.cfg.n_centroids else self.dense_logits(h_inner, target)

    def argmax(self, h_inner: np.ndarray, target) -> int:
        """argmax of logits() (the lowest id among ties) without building the full row."""
        return self.pick(h_inner, target)[0]

    def pick(self, h_inner: np.ndarray, target, with_p: bool = False) -> tuple[int, float]:
        """(argmax of logits(), lowest id among ties; with ``with_p`` its softmax probability over
        the scored tokens — the routed candidates, or the whole vocabulary for a dense head —
        else 1.0)."""
        if not self.cfg.n_centroids:
            s = self.logits(h_inner, target)
            tok = int(np.argmax(s))
        else:
            top, ids = self._route(h_inner)
            s = self._cap(self._routed_scores(ids, top, h_inner, target))
            tok = int(ids[s == s.max()].min())
        return tok, (top_probability(s) if with_p else 1.0)

    def draft(self, target, cache, id_last: int, h_prev: np.ndarray, attn_pos: int, n_steps: int,
              cancelled=None, p_min: float = 0.0) -> list[int]:
        """Greedy drafts: step 0 is fed id_last (position attn_pos+1) and h_prev; step k>0 the
        previous draft and the assistant's own post_projection output. ``p_min`` > 0: stop at the
        first step whose draft has probability < p_min (it is not proposed), as llama.cpp's
        --draft-p-min; verifying a draft costs ~0.3 of a plain step on the CPU whether or not it
        is accepted (benchmarks/bench_verify.py)."""
        out: list[int] = []
        tok, h = int(id_last), h_prev
        for k in range(n_steps):
            if cancelled is not None and cancelled.is_set():
                break
            h_inner, h = self.step(target, cache, tok, h, attn_pos, k)
            tok, p = self.pick(h_inner, target, with_p=p_min > 0)
            if p < p_min:
                break
            out.append(tok)
        return out


def source_layers(sliding: list[bool], target_sliding: list[bool], name: str = "(memory)") -> list[int]:
    """Per assistant layer, the last target layer of the same kind (sliding / global)."""
    last = {}
    for i, s in enumerate(target_sliding):
        last[bool(s)] = i
    src = []
    for i, s in enumerate(sliding):
        if bool(s) not in last:
            kind = "sliding" if s else "global"
            raise UserError(f"MTP head {name}: layer {i} is {kind} but the target has no {kind} layer")
        src.append(last[bool(s)])
    return src


# -- writing (the trainer and the tests) ----------------------------------------------------------


def count_shard_tokens(ids) -> int:
    """Target tokens in a set of shard ids (each ends in :nTOKENS)."""
    return sum(int(i.rsplit(":n", 1)[1]) for i in set(ids))


def read_train_record(path: str | Path) -> tuple[int, int, list[str] | None]:
    """(target tokens, steps, shard ids or None) recorded in an assistant GGUF by train-assistant;
    (0, 0, None) if absent."""
    g = GGUFFile.open(path)
    try:
        ids = g.get("turbospec.train.shards")
        return (int(g.get("turbospec.train.target_tokens", 0)), int(g.get("turbospec.train.steps", 0)),
                [str(i) for i in ids] if ids is not None else None)
    finally:
        g.close()


def write_assistant_gguf(path: str | Path, cfg: AssistantConfig, tensors: dict[str, np.ndarray],
                         token_ordering: np.ndarray | None, tokens: list[str], qtype: str = "f16",
                         extra_keys: dict | None = None) -> Path:
    """Write an assistant GGUF in the fork's schema. Matrices as ``qtype`` (f32 | f16 | q8_0);
    norms F32; token_ordering I32. ``extra_keys``: more string/int/float/array metadata."""
    import gguf
    from gguf import GGMLQuantizationType as Q

    a = ARCH
    w = gguf.GGUFWriter(str(path), a)
    w.add_block_count(cfg.n_layer)
    w.add_embedding_length(cfg.n_embd)
    w.add_feed_forward_length(cfg.n_ff)
    w.add_head_count(cfg.n_head)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_layer_norm_rms_eps(cfg.eps)
    w.add_rope_freq_base(cfg.rope_base)
    w.add_float32(f"{a}.rope.freq_base_swa", cfg.rope_base_swa)
    if cfg.window < 1 << 30:
        w.add_sliding_window(cfg.window)
    w.add_array(f"{a}.attention.sliding_window_pattern", [bool(s) for s in cfg.sliding])
    if cfg.softcap:
        w.add_float32(f"{a}.final_logit_softcapping", cfg.softcap)
    w.add_uint32(f"{a}.n_embd_backbone", cfg.n_embd_backbone)
    w.add_uint32(f"{a}.n_centroids", cfg.n_centroids)
    w.add_uint32(f"{a}.centroid_top_k", cfg.centroid_top_k)
    w.add_bool(f"{a}.use_ordered_embeddings", cfg.use_ordered_embeddings)
    w.add_bool(f"{a}.use_target_embeddings", cfg.use_target_embeddings)
    w.add_bool(f"{a}.attention.k_eq_v", cfg.k_eq_v)
    w.add_string(f"{a}.requires_target_arch", cfg.requires_target_arch)
    for k, v in (extra_keys or {}).items():
        if isinstance(v, str):
            w.add_string(k, v)
        elif isinstance(v, bool):
            w.add_bool(k, v)
        elif isinstance(v, int):
            w.add_uint64(k, v)
        elif isinstance(v, (list, tuple)):
            w.add_array(k, list(v))
        else:
            w.add_float32(k, float(v))
    w.add_token_list(list(tokens))
    qt = {"f32": Q.F32, "f16": Q.F16, "q8_0": Q.Q8_0}.get(qtype)
    if qt is None:
        raise UserError(f"assistant weight type {qtype!r} is not one of f32, f16, q8_0")
    for name, shape in expected_shapes(cfg).items():
        arr = np.asarray(tensors[name], np.float32).reshape(shape)
        if arr.ndim == 1 or qt == Q.F32:
            w.add_tensor(name, arr)
        elif qt == Q.F16:
            w.add_tensor(name, arr.astype(np.float16))
        elif arr.shape[-1] % 32 == 0:
            qd = gguf.quants.quantize(arr, qt)
            w.add_tensor(name, qd, raw_shape=qd.shape, raw_dtype=qt)
        else:
            w.add_tensor(name, arr.astype(np.float16))
    if token_ordering is not None:
        w.add_tensor("mtp.token_ordering.weight", np.asarray(token_ordering, np.int32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path)
