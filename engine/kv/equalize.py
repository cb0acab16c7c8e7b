"""K channel equalization before quantization (the fork's "InnerQ", DESIGN.md).

Per layer, from the first N tokens' K (e.g. 64; all KV heads pooled, they share the channel
layout of head_dim):

    rms_c = sqrt(mean over tokens of K[:, c]^2)
    s_c   = (mean_c(rms_c) / rms_c) ** strength          strength 0.5 by default

(mean_c over the live channels, rms_c > 0: a dead or zero-padded channel would only rescale
every s_c by the same factor.)

The cache stores K ⊙ s (encoded by any K codec: q8_0, q4_0, turbo*) and attention scores with
Q ⊙ (1/s), so <Q / s, K ⊙ s> = <Q, K> up to rounding. Apply both on the real head_dim BEFORE
zero padding and, for turbo types, before the rotation (rotate(Q / s) against the rotated
K ⊙ s). V is not equalized. Channels with rms 0 (dead or padding) get s = 1. Compute the scales
once (the first prefill chunk, or the first N tokens) and keep them fixed for the layer: the
cells already written depend on them. Strength 1.0 flattens the channels fully and is worse
than 0.5 on the default model (DESIGN.md); 0 disables (s = 1).
"""

from __future__ import annotations

import numpy as np

from turbospec.errors import UserError

DEFAULT_STRENGTH = 0.5
DEFAULT_TOKENS = 64


def compute_scales(k_first_tokens: np.ndarray, strength: float = DEFAULT_STRENGTH) -> np.ndarray:
    """Per-channel scales s (float32[D]) from K of the first tokens (float32[..., D])."""
    if not 0.0 <= strength <= 4.0 or not np.isfinite(strength):
        raise UserError(f"equalization strength {strength} is out of range; use a value in [0, 4] (0.5 default)")
    k = np.asarray(k_first_tokens, dtype=np.float64)
    if k.ndim == 0 or k.size == 0:
        raise ValueError("compute_scales needs at least one K row")
    k = k.reshape(-1, k.shape[-1])
    if not np.isfinite(k).all():
        raise ValueError("compute_scales: K contains NaN or inf")
    rms = np.sqrt(np.mean(k * k, axis=0))
    live = rms > 0
    if strength == 0 or not live.any():
        return np.ones(k.shape[-1], np.float32)
    s = np.ones_like(rms)
    s[live] = (rms[live].mean() / rms[live]) ** strength
    return s.astype(np.float32)


def equalize_k(k: np.ndarray, s: np.ndarray) -> np.ndarray:
    """K ⊙ s: what the cache encodes (float32[..., D] with s float32[D])."""
    return np.asarray(k, np.float32) * s


def equalize_q(q: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Q ⊙ (1/s): the query that scores against the equalized K (before turbo's rotate)."""
    return np.asarray(q, np.float32) / s
