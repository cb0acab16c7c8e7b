"""The KV cache: per-layer packed K and V blocks, one codec for K and one for V.

Every cell holds the packed bytes of one token's K (and V) for each KV head, laid out as the
codec's blocks (DESIGN.md's table); there is no float copy of the cache anywhere. Attention
decodes the cells it needs for the current step, tile by tile, and the tokens of the current
batch are encoded first and read back through the codec too (as llama.cpp does), so the
cache type shapes every number — prefill, decode, verification and perplexity alike.

Global layers grow by doubling (amortised O(1) per token). Sliding-window layers are a ring
of ``window + slack`` cells: the window, plus room to roll back rejected draft tokens
(``slack`` = the longest draft, 32). Cells carry their position; a cell is visible to a query
at position p when ``pos <= p`` and, on sliding layers, ``p - pos < window``
(llama.cpp's standard SWA mask).

Turbo types work in the rotated domain: Q is rotated once per step (scores <Rq, Rk> = <q, k>),
attention runs over rotated V, and the output is rotated back. K channel equalization
(``equalize``) stores K ⊙ s and scores with Q ⊙ (1/s) (engine/kv/equalize.compute_scales).

Beyond one codec pair (engine/kv/recipes.py builds these): ``KVConfig.layer_types`` gives
some layers another (K, V) pair (the fork protects the first and last layers), and
``k_outliers`` keeps the top-k rms channels of K (chosen per layer from the first tokens,
like the equalization scales) beside the quantized K as f16; they are zeroed before the K
codec and scored exactly (the query's outlier channels are zeroed in the codec part, so the
codec's noise on them does not count). Every byte of them is in ``bytes_per_token``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cache

import numpy as np

from turbospec.errors import UserError

EXACT_BATCH_MAX = 32  # batches up to this size (verification) attend token by token; see attend()
STEP_FAST_PATH = True  # one-token steps take LayerKV._attend_step (tests switch it off to compare)
NATIVE_STEP = True  # ... and on an f16 cache its native kernel (engine/native/attn.c) when built
# ... and a verification batch on an f16 cache that loop in one native call (same bits either way;
# ``TURBOSPEC_ATTN_BATCH=0`` keeps one call per token, for A/B benchmarks)
NATIVE_BATCH = os.environ.get("TURBOSPEC_ATTN_BATCH", "1").strip().lower() not in ("0", "off", "no", "false")
ATTN_TILE = 2048  # cells per attention tile (decoded K+V tile: 2 x 2048 x 256 x 4 B = 4 MB)


class _F16Codec:
    """Fallback f16 codec (used only if the codec registry is unavailable)."""

    name = "f16"
    block = 1
    type_size = 2
    bits_per_value = 16.0
    rotated = False

    def encode(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x, dtype=np.float16).view(np.uint8)

    def decode(self, packed: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(packed).view(np.float16).astype(np.float32)


SMALL_ROTATE = 256  # up to this many 128-groups, rotate by a 128x128 matmul instead of the butterfly


@cache
def _rotation_matrix() -> np.ndarray:
    from turbospec.engine.kv.rotation import rotation_matrix

    return np.ascontiguousarray(rotation_matrix(), dtype=np.float32)


def rotate_small(x: np.ndarray, codec, inverse: bool = False) -> np.ndarray:
    """codec.rotate / codec.unrotate along the last axis; a few rows (a decode step's queries
    and outputs: 4 heads x 2 groups) by one matmul with the orthonormal R (rotate = x @ R.T,
    unrotate = y @ R), ~50x cheaper than the butterfly's per-call overhead there. Many rows use
    the codec's butterfly (the reference; the test compares the two)."""
    g = x.size // 128
    if g > SMALL_ROTATE:
        return codec.unrotate(x) if inverse else codec.rotate(x)
    r = _rotation_matrix()
    y = x.reshape(g, 128) @ (r if inverse else r.T)
    return y.reshape(x.shape)


def get_codec(name: str):
    try:
        from turbospec.engine.kv.codecs import get_codec as registry
    except ImportError:
        if name != "f16":
            raise UserError(f"cache type {name!r} is not available in this build; use f16") from None
        return _F16Codec()
    return registry(name)


def cache_type_names() -> list[str]:
    try:
        from turbospec.engine.kv.codecs import CODECS
    except ImportError:
        return ["f16"]
    return list(CODECS)


@dataclass
class KVConfig:
    type_k: str = "f16"
    type_v: str = "f16"
    equalize: float = 0.0  # K channel equalization strength; 0 = off
    # calibration tokens (equalization scales, outlier channels): the first batch's first N. 64
    # (DESIGN.md's example) misleads on the default model — RoPE has not yet moved the slow
    # pairs' energy, so q4_0+eq got worse than q4_0 — 512 matches the float64 reference
    equalize_tokens: int = 512
    slack: int = 32  # extra ring cells on sliding layers for rolling back drafts
    # per-layer (K type, V type) overrides; a negative key counts from the last layer (-1 = last)
    layer_types: dict[int, tuple[str, str]] = field(default_factory=dict)
    # calibrate on NEOX RoPE pairs (c, c + head_dim/2) pooled: RoPE moves a pair's energy between
    # its two channels with position, so the first tokens alone mislead per-channel statistics
    # (measured on the default model: helps q4_0 with 64 tokens, hurts turbo; off by default)
    rope_pairs: bool = False
    k_outliers: int = 0  # top-rms K channels per layer kept in f16 beside a quantized K; 0 = off
    recipe: str = ""  # the recipe this config was built from (display only)

    def types_for(self, layer: int, n_layer: int) -> tuple[str, str]:
        """The (K, V) cache types of one layer."""
        for key, pair in self.layer_types.items():
            if key == layer or (key < 0 and key + n_layer == layer):
                return pair
        return self.type_k, self.type_v

    def describe(self) -> str:
        """A short label: 'q8_0/turbo3', plus equalization, outliers and per-layer overrides."""
        s = self.recipe or f"{self.type_k}/{self.type_v}"
        if self.recipe:
            return s
        if self.equalize:
            s += f" eq{self.equalize:g}"
        if self.k_outliers:
            s += f" +{self.k_outliers}ch f16"
        for key, (tk, tv) in sorted(self.layer_types.items()):
            s += f" L{key}:{tk}/{tv}"
        return s


class LayerKV:
    def __init__(self, layer: int, n_head_kv: int, head_dim: int, sliding: bool, window: int, cfg: KVConfig,
                 type_k: str | None = None, type_v: str | None = None):
        self.layer = layer
        self.n_head_kv = n_head_kv
        self.head_dim = head_dim
        self.sliding = sliding
        self.window = window
        self.ck = get_codec(type_k or cfg.type_k)
        self.cv = get_codec(type_v or cfg.type_v)
        self.dk = -(-head_dim // self.ck.block) * self.ck.block
        self.dv = -(-head_dim // self.cv.block) * self.cv.block
        self.kbytes = self.dk // self.ck.block * self.ck.type_size
        self.vbytes = self.dv // self.cv.block * self.cv.type_size
        self.cap = window + cfg.slack if sliding else 256
        self.k = np.zeros((self.cap, n_head_kv, self.kbytes), np.uint8)
        self.v = np.zeros((self.cap, n_head_kv, self.vbytes), np.uint8)
        self.pos = np.full(self.cap, -1, np.int64)
        self.n = 0  # cells in use (global: slots 0..n-1; sliding: filled slots of the ring)
        quantized = self.ck.name != "f16"
        self.eq_strength = cfg.equalize if quantized else 0.0
        self.eq_tokens = cfg.equalize_tokens
        self.rope_pairs = cfg.rope_pairs and head_dim % 2 == 0
        self.eq_scale: np.ndarray | None = None  # s (head_dim,), K is stored as K * s
        self.n_out = min(int(cfg.k_outliers), head_dim) if quantized else 0
        if cfg.k_outliers < 0:
            raise UserError(f"k_outliers {cfg.k_outliers} is negative; use 0 (off) or a channel count")
        self.out_idx: np.ndarray | None = None  # the outlier channels (n_out,), chosen from the first tokens
        self.ko = np.zeros((self.cap, n_head_kv, self.n_out), np.float16)  # their K values (equalized)
        # plain f16 cells (no rotation, equalization or outlier channels): one check to encode a
        # token, and _attend_step's native kernel
        self.plain_f16 = self.ck.name == self.cv.name == "f16" and self.dk == self.dv == head_dim \
            and head_dim % 16 == 0
        self._ptrs: tuple | None = None  # (k, v, pos, their addresses) for the native kernel

    # -- bookkeeping ------------------------------------------------------------------------
    @property
    def bytes_per_token(self) -> int:
        return self.n_head_kv * (self.kbytes + self.vbytes + 2 * self.n_out)

    @property
    def nbytes(self) -> int:
        """Bytes of the cells in use (what the cache holds for the current context)."""
        return int(np.count_nonzero(self.pos >= 0)) * self.bytes_per_token

    @property
    def nbytes_allocated(self) -> int:
        return int(self.k.nbytes + self.v.nbytes + self.ko.nbytes)

    def clear(self) -> None:
        self.pos[:] = -1
        self.n = 0
        self.eq_scale = None
        self.out_idx = None

    def truncate(self, n_past: int) -> None:
        """Forget every cell at position >= n_past (rejected drafts, a new prompt)."""
        drop = self.pos >= n_past
        self.pos[drop] = -1
        if not self.sliding:
            self.n = min(self.n, max(n_past, 0))
        if n_past <= 0:
            self.clear()

    def _grow(self, need: int) -> None:
        if need <= self.cap:
            return
        cap = self.cap
        while cap < need:
            cap *= 2
        k = np.zeros((cap, self.n_head_kv, self.kbytes), np.uint8)
        v = np.zeros((cap, self.n_head_kv, self.vbytes), np.uint8)
        pos = np.full(cap, -1, np.int64)
        ko = np.zeros((cap, self.n_head_kv, self.n_out), np.float16)
        k[: self.cap], v[: self.cap], pos[: self.cap], ko[: self.cap] = self.k, self.v, self.pos, self.ko
        self.k, self.v, self.pos, self.ko, self.cap = k, v, pos, ko, cap

    # -- codec helpers ----------------------------------------------------------------------
    def _pad(self, x: np.ndarray, d: int) -> np.ndarray:
        if x.shape[-1] == d:
            return x
        out = np.zeros(x.shape[:-1] + (d,), np.float32)
        out[..., : x.shape[-1]] = x
        return out

    def _check_finite(self, x: np.ndarray, what: str, qpos: np.ndarray) -> None:
        if np.isfinite(np.add.reduce(x, axis=None)):  # one reduction when all is finite
            return
        ok = np.isfinite(x).reshape(x.shape[0], -1).all(axis=1)
        if not ok.all():  # (all finite: the sum overflowed)
            t = int(np.argmin(ok))
            raise UserError(
                f"non-finite {what} (NaN or inf) at layer {self.layer}, position {int(qpos[t])}: "
                "the model produced garbage; check the model file and the input tokens"
            )

    def _calibrate(self, k: np.ndarray) -> None:
        """Equalization scales and outlier channels from the first batch's K (DESIGN.md):
        its first ``equalize_tokens`` tokens (engine/kv/equalize.compute_scales)."""
        from turbospec.engine.kv.equalize import compute_scales

        x = k.reshape(-1, k.shape[-1])[: self.eq_tokens * self.n_head_kv]
        if self.rope_pairs:
            x = np.concatenate([x, np.roll(x, self.head_dim // 2, axis=-1)])
        if self.eq_strength:
            self.eq_scale = compute_scales(x, self.eq_strength)
        if self.n_out:
            rms = np.sqrt(np.mean(x.astype(np.float64) ** 2, axis=0))
            self.out_idx = np.sort(np.argsort(-rms, kind="stable")[: self.n_out])

    def encode(self, k: np.ndarray, v: np.ndarray, qpos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """float K, V (T, n_head_kv, head_dim) -> packed K, packed V (T, n_head_kv, bytes), outliers."""
        from turbospec.engine.kv.codecs import F16_MAX_FINITE, CodecInputError

        if (self.plain_f16 and k.size and k.dtype == v.dtype == np.float32
                and np.abs(k).max() < F16_MAX_FINITE and np.abs(v).max() < F16_MAX_FINITE):
            # every value finite and inside f16's range (a NaN fails the comparison): the codec's
            # bytes without its checks; anything else takes the checks below, which name it
            return (k.astype("<f2").view(np.uint8), v.astype("<f2").view(np.uint8),
                    np.zeros(k.shape[:-1] + (0,), np.float16))
        self._check_finite(k, "K", qpos)
        self._check_finite(v, "V", qpos)
        if (self.eq_strength and self.eq_scale is None) or (self.n_out and self.out_idx is None):
            self._calibrate(k)
        if self.eq_scale is not None:
            k = k * self.eq_scale
        ko = np.zeros(k.shape[:-1] + (0,), np.float16)
        if self.out_idx is not None:
            ko = k[..., self.out_idx].astype(np.float16)
            k = k.copy()
            k[..., self.out_idx] = 0
        out = []
        for what, codec, x, d in (("K", self.ck, k, self.dk), ("V", self.cv, v, self.dv)):
            try:
                out.append(codec.encode(self._pad(x, d)))
            except CodecInputError as e:
                fix = "check the model" if codec.name == "f16" else f"use -ct{what.lower()} f16 or check the model"
                raise UserError(
                    f"{what} at layer {self.layer}, position {int(qpos[e.index[0]])} does not fit cache type "
                    f"{codec.name} ({e}); {fix}"
                ) from None
        return out[0], out[1], ko

    def roundtrip(self, k: np.ndarray, v: np.ndarray, qpos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """K, V (T, n_head_kv, head_dim) as this layer's cells hand them back to a reader: encoded
        (calibrating on them if the layer has not, as a first batch does), decoded, unrotated, the
        outlier channels put back and the equalization undone. Attention over these equals
        attention over the cells (tests/engine/test_kv_cache.py). Writes nothing; train-assistant
        uses it to show the assistant the K/V a quantized cache gives it."""
        kp, vp, ko = self.encode(k, v, qpos)
        out = []
        for codec, packed in ((self.ck, kp), (self.cv, vp)):
            x = codec.decode(packed)
            if codec.rotated:
                x = codec.unrotate(x)
            out.append(np.array(x[..., : self.head_dim], np.float32))
        kh, vh = out
        if self.out_idx is not None:
            kh[..., self.out_idx] = ko.astype(np.float32)
        if self.eq_scale is not None:
            kh = kh / self.eq_scale
        return kh, vh

    def write(self, kp: np.ndarray, vp: np.ndarray, qpos: np.ndarray, ko: np.ndarray | None = None) -> None:
        if ko is None:
            ko = np.zeros(kp.shape[:2] + (self.n_out,), np.float16)
        if self.sliding:
            if len(qpos) > self.cap:  # only the last `cap` positions can stay in the ring
                kp, vp, ko, qpos = kp[-self.cap :], vp[-self.cap :], ko[-self.cap :], qpos[-self.cap :]
            slots = qpos % self.cap
        else:
            end = int(qpos[-1]) + 1
            self._grow(end)
            slots = qpos
            self.n = max(self.n, end)
        self.k[slots] = kp
        self.v[slots] = vp
        self.ko[slots] = ko
        self.pos[slots] = qpos

    # -- attention --------------------------------------------------------------------------
    def _visible_slots(self, p_lo: int, p_hi: int) -> np.ndarray | slice:
        """Slots holding positions in [p_lo, p_hi] (a slice when contiguous)."""
        if not self.sliding:
            lo = max(p_lo, 0)
            hi = min(p_hi + 1, self.n)
            return slice(lo, max(lo, hi))
        sel = np.nonzero((self.pos >= max(p_lo, 0)) & (self.pos <= p_hi))[0]
        return sel

    def attend(
        self,
        q: np.ndarray,
        qpos: np.ndarray,
        scale: float,
        k_new: np.ndarray | None = None,
        v_new: np.ndarray | None = None,
        max_pos: int | None = None,
    ) -> np.ndarray:
        """Attention of queries q (T, n_head, head_dim) at positions qpos over this layer.

        With k_new/v_new (T, n_head_kv, head_dim) the batch's own K/V are encoded, attended
        (read back through the codec) and written into the cache. Without them the call is
        read-only (the MTP drafter reading the target's cache): cells at positions <= max_pos.
        """
        T, n_head, hd = q.shape
        if k_new is not None and 1 < T <= EXACT_BATCH_MAX:
            self._check_finite(k_new, "K", qpos)  # before any token of the batch is written
            self._check_finite(v_new, "V", qpos)
            if (self.eq_strength and self.eq_scale is None) or (self.n_out and self.out_idx is None):
                self._calibrate(k_new)  # on the whole first batch, not on its first token
            # A verification batch attends token by token, exactly as plain decoding does one
            # token per step: same cells, same order, same tiles, same shapes. With the
            # linear products done token by token too (engine/linear.py), verification and
            # plain decoding agree bit for bit, so greedy speculative decoding stays
            # token-identical even where a quantized cache turns last-bit differences into
            # different codes. On a plain f16 layer the native kernel does that token-by-token
            # loop in one call (_attend_native_batch: the same cells, order and arithmetic).
            if STEP_FAST_PATH and NATIVE_STEP and NATIVE_BATCH and self.plain_f16:
                out = self._attend_native_batch(q, qpos, scale, k_new, v_new)
                if out is not None:
                    return out
            return np.concatenate(
                [self.attend(q[t : t + 1], qpos[t : t + 1], scale, k_new[t : t + 1], v_new[t : t + 1])
                 for t in range(T)]
            )
        g = n_head // self.n_head_kv
        q = q.astype(np.float32, copy=False)
        new_k = new_v = new_o = None
        if k_new is not None:
            new_k, new_v, new_o = self.encode(k_new, v_new, qpos)
            if T == 1 and STEP_FAST_PATH:
                out = self._attend_step(q, int(qpos[0]), scale, g, new_k, new_v, new_o)
                if out is not None:
                    return out
        elif T == 1 and STEP_FAST_PATH and NATIVE_STEP and self.plain_f16:
            out = self._attend_native_read(q, int(qpos[0]), scale, max_pos)
            if out is not None:
                return out
        qd, qo = self._query(q)
        p_max = int(qpos.max())
        p_min = int(qpos.min())
        if k_new is not None:
            hi = p_min - 1  # old cells strictly before the batch; the batch itself comes from new_k
        else:
            hi = min(p_max, max_pos if max_pos is not None else p_max)
        lo = p_min - self.window + 1 if self.sliding else 0
        sl = self._visible_slots(lo, hi)
        kc = self.k[sl]
        vc = self.v[sl]
        oc = self.ko[sl] if qo is not None else None
        kpos = self.pos[sl]
        if new_k is not None:
            kc = np.concatenate([kc, new_k], axis=0) if len(kc) else new_k
            vc = np.concatenate([vc, new_v], axis=0) if len(vc) else new_v
            if oc is not None:
                oc = np.concatenate([oc, new_o], axis=0) if len(oc) else new_o
            kpos = np.concatenate([kpos, qpos.astype(np.int64)])
        out = self._attend_cells(qd, qpos, kc, vc, kpos, scale, g, max_pos if k_new is None else None, qo, oc)
        if self.cv.rotated:
            out = rotate_small(np.ascontiguousarray(out), self.cv, inverse=True)
        out = out[..., :hd]
        if new_k is not None:
            self.write(new_k, new_v, qpos, new_o)
        return out

    def _query(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The query as the codec part scores it (equalized, outlier channels zeroed, padded,
        rotated) and the outlier channels' own query (or None)."""
        if self.eq_scale is not None:
            q = q / self.eq_scale
        qo = None
        if self.out_idx is not None:
            qo = q[..., self.out_idx]
            q = q.copy()
            q[..., self.out_idx] = 0
        qd = self._pad(q, self.dk)
        if self.ck.rotated:
            qd = rotate_small(qd, self.ck)
        return qd, qo

    def _attend_step(self, q, p, scale, g, new_k, new_v, new_o) -> np.ndarray | None:
        """One decode token at position p (the hot path: 18 calls a token on the default model).

        The same arithmetic as ``_attend_cells`` on a single tile, minus what is a no-op for one
        query whose visible cells were already selected by position (the all-zero mask bias, the
        online-softmax corrections against an empty running state), and with the new token
        written first so that one gather and one decode read it with the old cells (no
        concatenation of packed bytes). Same products on the same shapes, so the result is
        bit-identical to the tiled path (tests/engine/test_kv_cache.py compares them). Returns
        None (use the tiled path) when the cells span more than one tile.
        """
        if NATIVE_STEP and self.plain_f16:
            out = self._attend_native(q, p, scale, new_k, new_v, new_o)
            if out is not None:
                return out
        hkv = self.n_head_kv
        lo = p - self.window + 1 if self.sliding else 0
        sl = self._visible_slots(lo, p - 1)
        n = (sl.stop - sl.start if isinstance(sl, slice) else len(sl)) + 1
        if n > ATTN_TILE:
            return None
        # write the token first, then read the old cells and it in one gather and one decode per
        # K and V, in the tiled path's order (old cells by slot, the new one last)
        self.write(new_k, new_v, np.array([p], np.int64), new_o)
        if isinstance(sl, slice) and sl.stop == p:
            cells: slice | np.ndarray = slice(sl.start, p + 1)  # a global layer: slot = position
        else:
            old = np.arange(sl.start, sl.stop) if isinstance(sl, slice) else sl
            cells = np.append(old, p % self.cap if self.sliding else p)
        qd, qo = self._query(q)
        kt = self.ck.decode(self.k[cells])  # (n, hkv, dk)
        vt = self.cv.decode(self.v[cells])
        qg = qd.reshape(1, hkv, g, self.dk).transpose(1, 0, 2, 3).reshape(hkv, g, self.dk) * np.float32(scale)
        s = np.matmul(qg, kt.transpose(1, 2, 0))  # (hkv, g, n)
        if qo is not None:
            no = qo.shape[-1]
            qog = qo.reshape(1, hkv, g, no).transpose(1, 0, 2, 3).reshape(hkv, g, no) * np.float32(scale)
            oc = self.ko[cells]
            s += np.matmul(qog, oc.astype(np.float32).transpose(1, 2, 0))
        m = s.max(axis=-1, keepdims=True)
        if not np.isfinite(m).all():
            return None  # a non-finite score: the tiled path's guards handle it (rewriting the cell is harmless)
        w = np.exp(s - m)
        out = np.matmul(w, vt.transpose(1, 0, 2)) / w.sum(axis=-1, keepdims=True)
        out = out.reshape(hkv, 1, g, self.dv).transpose(1, 0, 2, 3).reshape(1, hkv * g, self.dv)
        if self.cv.rotated:
            out = rotate_small(np.ascontiguousarray(out), self.cv, inverse=True)
        return out[..., : q.shape[-1]]

    def _native_ptrs(self) -> tuple:
        """(k, v, pos, their addresses) for the native kernels, refreshed when _grow replaced them."""
        ptrs = self._ptrs
        if ptrs is None or ptrs[0] is not self.k or ptrs[1] is not self.v or ptrs[2] is not self.pos:
            ptrs = self._ptrs = (self.k, self.v, self.pos, self.k.ctypes.data, self.v.ctypes.data,
                                 self.pos.ctypes.data)
        return ptrs

    def _attend_native(self, q, p, scale, new_k, new_v, new_o) -> np.ndarray | None:
        """_attend_step on a plain f16 layer through engine/native/attn.c: the same cells in the
        same order (the old ones by slot, the token itself last), one call for the selection, the
        scores, the softmax and the weighted sum. Not bit-identical to the NumPy step (other
        summation orders), but every decoded and every verified token of a process takes it
        (tests/engine/test_native_attn.py compares it with the NumPy step). None: no library,
        or a non-finite score (the NumPy paths then decide)."""
        from turbospec.engine import native

        lib = native.library()
        if lib is None:
            return None
        self.write(new_k, new_v, np.array([p], np.int64), new_o)
        ptrs = self._native_ptrs()
        q = np.ascontiguousarray(q, np.float32)
        out = np.empty(q.shape, np.float32)
        if self.sliding:
            args = (ptrs[5], self.cap, max(p - self.window + 1, 0), p - 1, p % self.cap)
        else:
            args = (None, self.cap, 0, p, -1)
        hkv, hd = self.n_head_kv, self.head_dim
        rc = lib.ts_attn_f16(ptrs[3], ptrs[4], hkv * hd, *args, q.ctypes.data, q.shape[1], hkv, hd, scale,
                             out.ctypes.data)
        if rc < 0:
            raise RuntimeError(f"ts_attn_f16 refused layer {self.layer} at position {p} (rc {rc})")
        return out if rc == 0 else None

    def _attend_native_read(self, q, p, scale, max_pos) -> np.ndarray | None:
        """A read-only query at position p over the cells at positions <= max_pos (the MTP
        drafter reading the target's cache: 4 calls a draft step on the default model) through
        ts_attn_f16: the cells the tiled path selects (a sliding layer's positions p - window + 1
        .. max_pos, by slot; a global layer's 0 .. max_pos), one call instead of its ~25 NumPy
        calls. Not bit-identical to the tiled path (other summation orders; drafts need not be
        exact: verification is), and every draft of a process takes it. None: no library, no
        visible cell, or a non-finite score (the tiled path decides)."""
        from turbospec.engine import native

        lib = native.library()
        if lib is None:
            return None
        hi = p if max_pos is None else min(p, max_pos)
        ptrs = self._native_ptrs()
        if self.sliding:
            lo, pos_ptr = max(p - self.window + 1, 0), ptrs[5]
        else:
            lo, hi, pos_ptr = 0, min(hi, self.n - 1), None
        if hi < lo or (self.sliding and not np.any((self.pos >= lo) & (self.pos <= hi))):
            return None
        q = np.ascontiguousarray(q, np.float32)
        out = np.empty(q.shape, np.float32)
        hkv, hd = self.n_head_kv, self.head_dim
        rc = lib.ts_attn_f16(ptrs[3], ptrs[4], hkv * hd, pos_ptr, self.cap, lo, hi, -1,
                             q.ctypes.data, q.shape[1], hkv, hd, scale, out.ctypes.data)
        if rc < 0:
            raise RuntimeError(f"ts_attn_f16 refused a read of layer {self.layer} at position {p} (rc {rc})")
        return out if rc == 0 else None

    def _attend_native_batch(self, q, qpos, scale, k_new, v_new) -> np.ndarray | None:
        """A verification batch on a plain f16 layer in one native call (ts_attn_f16_batch): each
        token's attention exactly as _attend_native computes it for that token decoded alone, so
        verified and decoded tokens agree bit for bit (tests/engine/test_native_attn.py). All T
        cells are written first; none is visible to an earlier token of the batch (attn.c says
        why). None (take the token-by-token path, whose guards and errors apply): no library,
        positions not consecutive, a batch longer than the ring's slack allows, a value outside
        f16's range, or a non-finite score."""
        from turbospec.engine import native
        from turbospec.engine.kv.codecs import F16_MAX_FINITE

        lib = native.library()
        T = len(qpos)
        if lib is None or k_new.dtype != np.float32 or v_new.dtype != np.float32:
            return None
        p0 = int(qpos[0])
        if not np.array_equal(qpos, np.arange(p0, p0 + T)) or (self.sliding and T > self.cap - self.window + 1):
            return None
        if not (np.abs(k_new).max() < F16_MAX_FINITE and np.abs(v_new).max() < F16_MAX_FINITE):
            return None
        kp, vp, ko = self.encode(k_new, v_new, qpos)
        self.write(kp, vp, np.asarray(qpos, np.int64), ko)
        ptrs = self._native_ptrs()
        q = np.ascontiguousarray(q, np.float32)
        out = np.empty(q.shape, np.float32)
        qp = np.ascontiguousarray(qpos, np.int64)
        hkv, hd = self.n_head_kv, self.head_dim
        rc = lib.ts_attn_f16_batch(ptrs[3], ptrs[4], hkv * hd, ptrs[5] if self.sliding else None, self.cap,
                                   self.window if self.sliding else 0, qp.ctypes.data, T, q.ctypes.data,
                                   q.shape[1], hkv, hd, scale, out.ctypes.data)
        if rc < 0:
            raise RuntimeError(f"ts_attn_f16_batch refused layer {self.layer} at positions {p0}..{p0 + T - 1} "
                               f"(rc {rc})")
        return out if rc == 0 else None

    def _attend_cells(self, qd, qpos, kc, vc, kpos, scale, g, max_pos, qo=None, oc=None) -> np.ndarray:
        """Masked softmax attention over packed cells, tile by tile (online softmax).

        qo (T, n_head, n_out) / oc (cells, n_head_kv, n_out): the outlier channels' queries and
        f16 keys, scored exactly and added to the codec part's scores.
        """
        T = qd.shape[0]
        hkv = self.n_head_kv
        n = kc.shape[0]
        # queries grouped by KV head: (hkv, T*g, dk)
        qg = qd.reshape(T, hkv, g, self.dk).transpose(1, 0, 2, 3).reshape(hkv, T * g, self.dk) * np.float32(scale)
        m = np.full((hkv, T * g, 1), -np.inf, np.float32)
        s_sum = np.zeros((hkv, T * g, 1), np.float32)
        acc = np.zeros((hkv, T * g, self.dv), np.float32)
        if qo is not None:
            no = qo.shape[-1]
            qog = qo.reshape(T, hkv, g, no).transpose(1, 0, 2, 3).reshape(hkv, T * g, no) * np.float32(scale)
        qp = qpos.astype(np.int64)[:, None]
        if max_pos is not None:
            qp = np.minimum(qp, max_pos)
        for a in range(0, n, ATTN_TILE):
            b = min(a + ATTN_TILE, n)
            kt = self.ck.decode(kc[a:b].reshape(-1, self.kbytes)).reshape(b - a, hkv, self.dk)
            vt = self.cv.decode(vc[a:b].reshape(-1, self.vbytes)).reshape(b - a, hkv, self.dv)
            kp = kpos[a:b][None, :]
            vis = kp <= qp
            if self.sliding:
                vis &= (qp - kp) < self.window
            bias = np.where(vis, np.float32(0), np.float32(-np.inf))  # (T, tile)
            bias = np.repeat(bias, g, axis=0)[None]  # (1, T*g, tile)
            s = np.matmul(qg, kt.transpose(1, 2, 0)) + bias  # (hkv, T*g, tile)
            if qo is not None:
                s += np.matmul(qog, oc[a:b].astype(np.float32).transpose(1, 2, 0))
            m_new = np.maximum(m, s.max(axis=-1, keepdims=True))
            m_safe = np.where(np.isfinite(m_new), m_new, 0)
            p = np.exp(s - m_safe)
            corr = np.exp(np.where(np.isfinite(m), m - m_safe, -np.inf))
            s_sum = s_sum * corr + p.sum(axis=-1, keepdims=True)
            acc = acc * corr + np.matmul(p, vt.transpose(1, 0, 2))
            m = m_new
        out = acc / np.where(s_sum > 0, s_sum, 1)
        return out.reshape(hkv, T, g, self.dv).transpose(1, 0, 2, 3).reshape(T, hkv * g, self.dv)


class KVCache:
    """All layers' caches; ``n_past`` is the number of positions the cache covers."""

    def __init__(self, n_layer: int, n_head_kv: int, head_dim: int, sliding: list[bool], window: int,
                 cfg: KVConfig | None = None):
        self.cfg = cfg or KVConfig()
        for key in self.cfg.layer_types:
            if not -n_layer <= key < n_layer:
                raise UserError(f"per-layer cache type for layer {key}, but the model has {n_layer} layers")
        self.layers = [
            LayerKV(i, n_head_kv, head_dim, sliding[i], window, self.cfg, *self.cfg.types_for(i, n_layer))
            for i in range(n_layer)
        ]
        self.n_past = 0

    def clear(self) -> None:
        for lay in self.layers:
            lay.clear()
        self.n_past = 0

    def truncate(self, n_past: int) -> None:
        for lay in self.layers:
            lay.truncate(n_past)
        self.n_past = min(self.n_past, n_past)

    @property
    def nbytes(self) -> int:
        return sum(lay.nbytes for lay in self.layers)

    def bytes_per_token(self, sliding: bool | None = None) -> int:
        return sum(lay.bytes_per_token for lay in self.layers if sliding is None or lay.sliding == sliding)
