"""Window/peak/sparkline numbers against a brute-force computation on random buckets."""

from __future__ import annotations

import random

import pytest

from turbospec.trace import B_ACC, B_DRAFTED, B_KEY, B_ROUNDS, new_bucket
from turbospec.tui.model import WINDOWS_ROUNDS, WINDOWS_S, next_window, rolling, view_of, window_sums


def _buckets(rng: random.Random, n: int) -> list[list]:
    out, key = [], rng.randint(0, 100)
    for _ in range(n):
        key += rng.choice([1, 1, 1, 2, 5])
        b = new_bucket(key)
        b[B_ROUNDS] = rng.randint(0, 5)
        b[B_DRAFTED] = b[B_ROUNDS] * 3
        b[B_ACC] = rng.randint(0, b[B_DRAFTED])
        out.append(b)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_rolling_and_window_equal_brute_force(seed):
    rng = random.Random(seed)
    bs = _buckets(rng, rng.randint(1, 200))
    width = rng.choice([1, 3, 10, 50])
    since = rng.choice([None, bs[len(bs) // 2][B_KEY]])
    roll = rolling(bs, width, since)
    start = 0 if since is None else next((i for i, b in enumerate(bs) if b[B_KEY] > since), len(bs))
    assert len(roll) == len(bs) - start
    for r, end in zip(roll, bs[start:], strict=True):
        sel = [b for b in bs if end[B_KEY] - width < b[B_KEY] <= end[B_KEY] and (since is None or b[B_KEY] > since)]
        assert r[B_ACC] == sum(b[B_ACC] for b in sel) and r[B_ROUNDS] == sum(b[B_ROUNDS] for b in sel)
    w = window_sums(bs, width, since)
    assert w == (roll[-1] if roll else [0.0] * 11) or (not roll and w[B_ROUNDS] == 0)


def test_view_peak_is_max_window_value():
    rng = random.Random(9)
    bs = _buckets(rng, 100)
    metrics = {"draft_acceptance_rate": 0.5, "tau": 2.0, "decode_tok_s": None, "prefill_tok_s": None}
    v = view_of(metrics, bs, True, 10)
    vals = [r[B_ACC] / r[B_DRAFTED] for r in rolling(bs, 10) if r[B_DRAFTED]]
    assert v.acceptance.peak == max(vals) and v.acceptance.run == 0.5
    assert v.acceptance.window == pytest.approx(vals[-1]) or window_sums(bs, 10)[B_DRAFTED] == 0
    assert v.decode.window is None and len(v.spark_acceptance) <= 100


def test_next_window_ladder():
    assert next_window(10, True, True) == 30 and next_window(10, True, False) == 5
    assert next_window(WINDOWS_S[-1], True, True) == WINDOWS_S[-1]
    assert next_window(WINDOWS_ROUNDS[0], False, False) == WINDOWS_ROUNDS[0]
