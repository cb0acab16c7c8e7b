"""TurboQuant's 128-point rotation: sign flip, Walsh-Hadamard butterfly, sign flip (DESIGN.md).

    forward  r = s2 ⊙ H128(s1 ⊙ u) / sqrt(128)
    inverse  u = s1 ⊙ H128(s2 ⊙ r) / sqrt(128)      (H128 H128 = 128 I)

H128 is the unnormalised Sylvester Walsh-Hadamard transform computed as the butterfly of the
design notes: for h = 1, 2, 4, ..., 64, (a, b) -> (a + b, a - b) on the pairs (j, j + h) with
bit h of j clear. The vectorised butterfly below performs exactly these float32 additions in
exactly this order, so it is bit-identical to a per-element loop (the codecs rely on that:
the fast and the reference encoders pick the same centroid even next to a midpoint).

Arrays are rotated along their last axis, which must be a multiple of 128; each 128-element
group is rotated on its own. Cost: 7 stages x 128 adds per group, 2 flops per element per stage.
"""

from __future__ import annotations

import numpy as np

GROUP = 128

# Sign tables, index 0 first, 32 per row (DESIGN.md, "Sign tables").
_S1_ROWS = (
    "-++--+-+--+++++++-+-+--+++-++---",
    "-++-++-+-++--+-++++-----+-++++-+",
    "--+---+---+---+++--+++--++-++-+-",
    "-++-+-+-++++-+-++-++-----++-++-+",
)
_S2_ROWS = (
    "++++-++-+---+---++--+-+-+--+-+++",
    "++---+------+++-+-+++--+------++",
    "+-+----+-+-+--++-+-++-+----+--+-",
    "+-+++--+-+-++--+-+-++-+-+-----+-",
)


def _signs(rows: tuple[str, ...]) -> np.ndarray:
    s = "".join(rows)
    assert len(s) == GROUP and set(s) <= {"+", "-"}
    return np.array([1.0 if ch == "+" else -1.0 for ch in s], dtype=np.float32)


S1 = _signs(_S1_ROWS)
S2 = _signs(_S2_ROWS)
SQRT128 = np.float32(np.sqrt(np.float32(GROUP)))  # the divisor; 11.313708 in float32


def _groups(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 0 or x.shape[-1] % GROUP:
        raise ValueError(f"rotation needs a last axis that is a multiple of {GROUP}, got shape {x.shape}")
    return x.reshape(-1, GROUP)


def butterfly_columns(a: np.ndarray) -> np.ndarray:
    """Unnormalised WHT H128 of every COLUMN of a (float32[128, M]), computed in place.

    Works on the transposed layout so every stage is two long contiguous ufunc calls
    (the row layout has inner loops of length h = 1, 2, 4 ... and is ~4x slower).
    """
    m = a.shape[1]
    b = np.empty_like(a)
    src, dst = a, b
    h = 1
    while h < GROUP:
        s = src.reshape(GROUP // (2 * h), 2, h, m)
        d = dst.reshape(GROUP // (2 * h), 2, h, m)
        np.add(s[:, 0], s[:, 1], out=d[:, 0])
        np.subtract(s[:, 0], s[:, 1], out=d[:, 1])
        src, dst = dst, src
        h *= 2
    if src is not a:  # 7 stages: the result sits in the scratch buffer
        a[...] = src
    return a


def butterfly(g: np.ndarray) -> np.ndarray:
    """Unnormalised WHT H128 of every row of g (float32[M, 128]); returns a new array."""
    cols = np.array(np.asarray(g, dtype=np.float32).T, copy=True, order="C")
    return butterfly_columns(cols).T.copy()


def rotate_columns(u: np.ndarray) -> np.ndarray:
    """Forward rotation of the columns of float32[128, M], in place: s2 ⊙ H(s1 ⊙ u) / sqrt(128)."""
    u *= S1[:, None]
    butterfly_columns(u)
    u /= SQRT128
    u *= S2[:, None]
    return u


def unrotate_columns(r: np.ndarray) -> np.ndarray:
    """Inverse rotation of the columns of float32[128, M], in place: s2, butterfly, / sqrt(128), s1."""
    r *= S2[:, None]
    butterfly_columns(r)
    r /= SQRT128
    r *= S1[:, None]
    return r


def rotate_groups(u: np.ndarray) -> np.ndarray:
    """Forward rotation of float32[M, 128] rows: s2 ⊙ H(s1 ⊙ u) / sqrt(128)."""
    cols = np.array(np.asarray(u, dtype=np.float32).T, copy=True, order="C")
    return rotate_columns(cols).T.copy()


def unrotate_groups(r: np.ndarray) -> np.ndarray:
    """Inverse rotation of float32[M, 128] rows: s2 first, butterfly, / sqrt(128), s1."""
    cols = np.array(np.asarray(r, dtype=np.float32).T, copy=True, order="C")
    return unrotate_columns(cols).T.copy()


def rotate(x: np.ndarray) -> np.ndarray:
    """Forward rotation along the last axis (a multiple of 128), group by group; float32."""
    x = np.asarray(x)
    return rotate_groups(_groups(x)).reshape(x.shape)


def unrotate(y: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rotate` (exact up to float32 rounding, ~1e-7 relative)."""
    y = np.asarray(y)
    return unrotate_groups(_groups(y)).reshape(y.shape)


def rotation_matrix() -> np.ndarray:
    """The 128x128 orthonormal matrix R with rotate(u) = u @ R.T (float64, for tests and stats)."""
    h = np.array([[1.0]])
    while h.shape[0] < GROUP:
        h = np.block([[h, h], [h, -h]])
    return (S2[:, None].astype(np.float64) * h * S1[None, :].astype(np.float64)) / np.sqrt(GROUP)
