"""A tiny random Gemma-3-shaped GGUF, written with gguf.GGUFWriter, and a float64 reference
forward written plainly (no cache, whole sequence at once) from gguf.quants' dequantization —
independent of the engine's own parser, dequantizers, cache and attention code."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q


@dataclass
class TinySpec:
    n_layer: int = 3
    n_embd: int = 64
    n_head: int = 4
    n_head_kv: int = 2
    head_dim: int = 32
    n_ff: int = 96
    n_vocab: int = 384
    window: int = 8
    period: int = 3  # layers (i+1) % period == 0 are global
    rope_base: float = 1e6
    rope_base_swa: float = 1e4
    eps: float = 1e-6


def tiny_vocab(n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    toks = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
    types = [3, 3, 3, 2, 3, 3, 3]
    for b in range(256):
        toks.append(f"<0x{b:02X}>")
        types.append(6)
    words = ["▁the", "▁a", "▁cat", "▁dog", "▁is", "▁on", "▁mat", "▁and", "th", "he", "▁t", "at", "▁c", "▁d", "og"]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["▁", ".", ","]
    for w in words + letters:
        if len(toks) >= n_vocab:
            break
        toks.append(w)
        types.append(1)
    i = 0
    while len(toks) < n_vocab:
        toks.append(f"<unused{i}>")
        types.append(5)
        i += 1
    scores = [0.0] * 7 + [0.0] * 256 + [-float(i) for i in range(n_vocab - 263)]
    return toks, scores, types


def write_tiny_gguf(path: Path, spec: TinySpec | None = None, seed: int = 0, arch: str = "gemma3",
                    drop: tuple[str, ...] = ()) -> Path:
    s = spec or TinySpec()
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(s.n_layer)
    w.add_embedding_length(s.n_embd)
    w.add_feed_forward_length(s.n_ff)
    w.add_head_count(s.n_head)
    w.add_head_count_kv(s.n_head_kv)
    w.add_key_length(s.head_dim)
    w.add_value_length(s.head_dim)
    w.add_layer_norm_rms_eps(s.eps)
    w.add_rope_freq_base(s.rope_base)
    w.add_sliding_window(s.window)
    w.add_uint32(f"{arch}.attention.sliding_window_pattern", s.period)
    w.add_context_length(2048)
    toks, scores, types = tiny_vocab(s.n_vocab)
    w.add_tokenizer_model("llama")
    w.add_token_list(toks)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_unk_token_id(3)
    w.add_pad_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_space_prefix(False)

    def add(name: str, arr: np.ndarray, qtype: Q = Q.F32) -> None:
        if name in drop:
            return
        arr = arr.astype(np.float32)
        if qtype == Q.F32:
            w.add_tensor(name, arr)
        elif qtype == Q.F16:
            w.add_tensor(name, arr.astype(np.float16))
        else:
            qd = gguf.quants.quantize(arr, qtype)
            w.add_tensor(name, qd, raw_shape=qd.shape, raw_dtype=qtype)

    def norm_w(n: int) -> np.ndarray:
        return (1.0 + 0.3 * rng.standard_normal(n)).astype(np.float32)

    def mat(o: int, i: int, scale: float = 1.0) -> np.ndarray:
        return (rng.standard_normal((o, i)) * scale / math.sqrt(i)).astype(np.float32)

    add("token_embd.weight", rng.standard_normal((s.n_vocab, s.n_embd)).astype(np.float32) * 0.5, Q.Q8_0)
    add("output_norm.weight", norm_w(s.n_embd))
    for i in range(s.n_layer):
        p = f"blk.{i}."
        add(p + "attn_norm.weight", norm_w(s.n_embd))
        add(p + "attn_q.weight", mat(s.n_head * s.head_dim, s.n_embd), Q.F16)
        add(p + "attn_k.weight", mat(s.n_head_kv * s.head_dim, s.n_embd), Q.Q8_0)
        add(p + "attn_v.weight", mat(s.n_head_kv * s.head_dim, s.n_embd))
        add(p + "attn_q_norm.weight", norm_w(s.head_dim))
        add(p + "attn_k_norm.weight", norm_w(s.head_dim))
        add(p + "attn_output.weight", mat(s.n_embd, s.n_head * s.head_dim), Q.F16)
        add(p + "post_attention_norm.weight", norm_w(s.n_embd))
        add(p + "ffn_norm.weight", norm_w(s.n_embd))
        add(p + "ffn_gate.weight", mat(s.n_ff, s.n_embd), Q.Q8_0)
        add(p + "ffn_up.weight", mat(s.n_ff, s.n_embd))
        add(p + "ffn_down.weight", mat(s.n_embd, s.n_ff), Q.F16)
        add(p + "post_ffw_norm.weight", norm_w(s.n_embd))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


class Reference:
    """Float64 Gemma 3 forward over the whole sequence (no cache): the test oracle.

    K and V are rounded to float16 where the engine's f16 cache stores them (after K's norm
    and RoPE), since that rounding is part of what an f16 cache computes.
    """

    def __init__(self, path: Path, spec: TinySpec | None = None, round_kv_f16: bool = True):
        self.s = spec or TinySpec()
        r = gguf.GGUFReader(str(path))
        self.t: dict[str, np.ndarray] = {}
        for t in r.tensors:
            shape = tuple(int(x) for x in reversed(t.shape))
            self.t[t.name] = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64).reshape(shape)
        self.round = round_kv_f16

    def rms(self, x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.s.eps) * w

    def rope(self, x, pos, base):
        d = x.shape[-1]
        out = np.empty_like(x)
        for t, p in enumerate(pos):
            for i in range(d // 2):
                th = p * base ** (-2.0 * i / d)
                a, b = x[t, ..., i], x[t, ..., i + d // 2]
                out[t, ..., i] = a * math.cos(th) - b * math.sin(th)
                out[t, ..., i + d // 2] = b * math.cos(th) + a * math.sin(th)
        return out

    def forward(self, tokens: list[int]) -> tuple[np.ndarray, np.ndarray]:
        s, t = self.s, self.t
        T = len(tokens)
        pos = np.arange(T)
        x = t["token_embd.weight"][tokens] * math.sqrt(s.n_embd)
        for i in range(s.n_layer):
            p = f"blk.{i}."
            sliding = (i + 1) % s.period != 0
            h = self.rms(x, t[p + "attn_norm.weight"])
            q = (h @ t[p + "attn_q.weight"].T).reshape(T, s.n_head, s.head_dim)
            k = (h @ t[p + "attn_k.weight"].T).reshape(T, s.n_head_kv, s.head_dim)
            v = (h @ t[p + "attn_v.weight"].T).reshape(T, s.n_head_kv, s.head_dim)
            q = self.rms(q, t[p + "attn_q_norm.weight"])
            k = self.rms(k, t[p + "attn_k_norm.weight"])
            base = s.rope_base_swa if sliding else s.rope_base
            q, k = self.rope(q, pos, base), self.rope(k, pos, base)
            if self.round:
                k = k.astype(np.float16).astype(np.float64)
                v = v.astype(np.float16).astype(np.float64)
            o = np.zeros((T, s.n_head, s.head_dim))
            g = s.n_head // s.n_head_kv
            for tq in range(T):
                for hh in range(s.n_head):
                    kv = hh // g
                    sc = []
                    for tk in range(T):
                        ok = tk <= tq and (not sliding or tq - tk < s.window)
                        sc.append(q[tq, hh] @ k[tk, kv] / math.sqrt(s.head_dim) if ok else -np.inf)
                    sc = np.array(sc)
                    pr = np.exp(sc - sc.max())
                    pr /= pr.sum()
                    o[tq, hh] = pr @ v[:, kv]
            a = o.reshape(T, -1) @ t[p + "attn_output.weight"].T
            x = x + self.rms(a, t[p + "post_attention_norm.weight"])
            h = self.rms(x, t[p + "ffn_norm.weight"])
            gt = h @ t[p + "ffn_gate.weight"].T
            up = h @ t[p + "ffn_up.weight"].T
            gelu = 0.5 * gt * (1 + np.tanh(math.sqrt(2 / math.pi) * (gt + 0.044715 * gt**3)))
            x = x + self.rms((gelu * up) @ t[p + "ffn_down.weight"].T, t[p + "post_ffw_norm.weight"])
        hidden = self.rms(x, t["output_norm.weight"])
        return hidden @ t["token_embd.weight"].T, hidden
