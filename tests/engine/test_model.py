"""Gemma 3 forward on a tiny random model against the float64 reference, cache semantics."""

import numpy as np
import pytest
from tinymodel import Reference, TinySpec

from turbospec.engine.generate import Session
from turbospec.engine.loader import load_model


@pytest.fixture(scope="module")
def models(tiny_gguf, tmp_path_factory):
    import os

    os.environ["TURBOSPEC_CACHE_DIR"] = str(tmp_path_factory.mktemp("c"))
    exact = load_model(tiny_gguf, storage="f32", quiet=True)
    i16 = load_model(tiny_gguf, storage="i16", quiet=True)
    return exact, i16, Reference(tiny_gguf)


def _rel(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def test_logits_match_float64_reference(models):
    m, _, ref = models
    rng = np.random.default_rng()
    toks = [2] + rng.integers(5, m.cfg.n_vocab, 20).tolist()  # 21 tokens > window 8: masking matters
    want, hidden_want = ref.forward(toks)
    got, hidden = m.forward(toks, m.new_cache(), logits_rows="all")
    assert _rel(got, want) < 1e-4
    assert _rel(hidden, hidden_want) < 1e-4


def test_int16_weights_close_to_reference(models):
    _, m, ref = models
    toks = [2, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110]
    want, _ = ref.forward(toks)
    got, _ = m.forward(toks, m.new_cache(), logits_rows="all")
    assert _rel(got, want) < 2e-3


def test_decode_with_cache_equals_recompute(models):
    m, _, _ = models
    rng = np.random.default_rng()
    toks = [2] + rng.integers(5, m.cfg.n_vocab, 18).tolist()
    full, _ = m.forward(toks, m.new_cache(), logits_rows="all")
    s = Session(m)
    s.prefill(toks[:5])
    rows = []
    for t in toks[5:]:
        rows.append(s.step([t])[0])
    np.testing.assert_allclose(np.array(rows), full[5:], rtol=0, atol=1e-4 * np.abs(full).max())


def test_verify_k_tokens_equals_k_steps(models):
    m, _, _ = models
    rng = np.random.default_rng()
    toks = [2] + rng.integers(5, m.cfg.n_vocab, 14).tolist()
    a = Session(m)
    a.prefill(toks[:6])
    batch = a.step(toks[6:11])  # five tokens verified at once
    b = Session(m)
    b.prefill(toks[:6])
    singles = np.array([b.step([t])[0] for t in toks[6:11]])
    np.testing.assert_allclose(batch, singles, rtol=0, atol=1e-4 * np.abs(singles).max())


def test_rollback_then_continue_equals_fresh(models):
    m, _, _ = models
    toks = [2, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22]
    s = Session(m)
    s.prefill(toks[:8])
    s.step([99, 98, 97, 96, 95, 94])  # drafts that get rejected (crosses the window on sliding layers)
    s.rollback(8)
    got = np.array([s.step([t])[0] for t in toks[8:]])
    f = Session(m)
    f.prefill(toks[:8])
    want = np.array([f.step([t])[0] for t in toks[8:]])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_sliding_window_masks_old_positions(tmp_path):
    spec = TinySpec(n_layer=1, period=1000)  # one sliding layer only: information cannot hop
    from tinymodel import write_tiny_gguf

    p = write_tiny_gguf(tmp_path / "one.gguf", spec)
    m = load_model(p, storage="f32", quiet=True)
    base = [2] + list(range(10, 30))
    changed = list(base)
    changed[3] = 200  # position 3: outside the window of position 20 (window 8)
    a, _ = m.forward(base, m.new_cache(), logits_rows="all")
    b, _ = m.forward(changed, m.new_cache(), logits_rows="all")
    assert np.array_equal(a[11:], b[11:])  # positions >= 3 + 8 never see position 3
    assert not np.allclose(a[3:11], b[3:11])  # positions inside the window do


def test_sliding_layers_hold_at_most_window_plus_slack(models):
    m, _, _ = models
    s = Session(m)
    s.prefill([2] + list(range(10, 60)))
    for t in range(5):
        s.step([100 + t])
    for lay in s.cache.layers:
        held = int(np.count_nonzero(lay.pos >= 0))
        if lay.sliding:
            assert held <= m.cfg.window + s.cache.cfg.slack
            assert lay.cap == m.cfg.window + s.cache.cfg.slack
        else:
            assert held == s.n_past
    assert s.cache.nbytes == sum(int(np.count_nonzero(lay.pos >= 0)) * lay.bytes_per_token for lay in s.cache.layers)
