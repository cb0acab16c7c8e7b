"""Weight cache, linear storages, sampling, generation and perplexity on the tiny model."""

import json
import math

import numpy as np
import pytest
from tinymodel import Reference

from turbospec.cli import main
from turbospec.engine import linear
from turbospec.engine.linear import Dense, RowInt16, quantize_rows_int16
from turbospec.engine.loader import load_model
from turbospec.engine.perplexity import perplexity
from turbospec.engine.sampling import Sampler, SamplingConfig


def test_row_int16_matches_reference(monkeypatch):
    rng = np.random.default_rng()
    w = rng.standard_normal((3000, 96)).astype(np.float32)
    q, s = quantize_rows_int16(w)
    err = np.abs(q.astype(np.float64) * s[:, None] - w)
    assert np.all(err <= s[:, None] * 0.5 * (1 + 1e-3))
    lin = RowInt16(q, s)
    monkeypatch.setattr(RowInt16, "TILE_ELEMS", 16 * 96)  # many tiles, several workers
    monkeypatch.setattr(linear, "_N_WORKERS", 3)  # two ranges to the pool, one in the caller
    for rows in (1, 7):
        x = rng.standard_normal((rows, 96)).astype(np.float32)
        want = x.astype(np.float64) @ (q.astype(np.float64) * s[:, None]).T
        np.testing.assert_allclose(lin.apply(x), want, rtol=1e-4, atol=1e-4)
    d = Dense(w)
    x = rng.standard_normal((2, 96)).astype(np.float32)
    np.testing.assert_allclose(d.apply(x), x @ w.T, rtol=1e-5, atol=1e-5)


def test_weight_cache_reused(tiny_gguf, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("TURBOSPEC_CACHE_DIR", str(tmp_path / "wc"))
    m1 = load_model(tiny_gguf, storage="f32")
    first = capsys.readouterr().err
    assert "first start" in first and str(tmp_path / "wc") in first
    m2 = load_model(tiny_gguf, storage="f32")
    assert "first start" not in capsys.readouterr().err
    toks = [2, 20, 30, 40]
    a, _ = m1.forward(toks, m1.new_cache())
    b, _ = m2.forward(toks, m2.new_cache())
    assert np.array_equal(a, b)
    assert any((tmp_path / "wc").rglob("*.npy"))
    assert main(["cache", "clear"]) == 0
    assert not (tmp_path / "wc").exists()


def test_help_shows_cache_folder(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("TURBOSPEC_CACHE_DIR", str(tmp_path / "elsewhere"))
    with pytest.raises(SystemExit):
        main(["--help"])
    assert str(tmp_path / "elsewhere") in capsys.readouterr().out.replace("\n", "")


def test_greedy_and_topk1_agree():
    rng = np.random.default_rng()
    logits = rng.standard_normal(1000).astype(np.float32)
    g = Sampler(SamplingConfig(temp=0))
    k1 = Sampler(SamplingConfig(temp=0.8, top_k=1, seed=1))
    assert g.sample(logits) == int(np.argmax(logits)) == k1.sample(logits)


def test_sampling_distribution_and_seed():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], np.float32))
    cfg = SamplingConfig(temp=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=7)
    p = Sampler(cfg).probs(logits)
    np.testing.assert_allclose(p, [0.5, 0.3, 0.15, 0.05], rtol=1e-6)
    s = Sampler(cfg)
    draws = np.bincount([s.sample(logits) for _ in range(4000)], minlength=4) / 4000
    assert np.all(np.abs(draws - p) < 0.03)
    a = [Sampler(cfg).sample(logits) for _ in range(1)] + [Sampler(cfg).sample(logits)]
    assert a[0] == a[1]
    # top-p keeps the smallest prefix reaching p; min-p drops tokens below min_p * p_max
    pp = Sampler(SamplingConfig(temp=1.0, top_k=0, top_p=0.7, min_p=0.0)).probs(logits)
    np.testing.assert_allclose(pp, [0.625, 0.375, 0, 0], rtol=1e-6)
    pm = Sampler(SamplingConfig(temp=1.0, top_k=0, top_p=1.0, min_p=0.2)).probs(logits)
    np.testing.assert_allclose(pm[3], 0)
    assert pm[2] > 0
    # repetition penalty lowers a seen positive logit
    rp = Sampler(SamplingConfig(temp=0, repeat_penalty=10.0))
    assert rp.sample(np.array([1.0, 0.9, 0.0], np.float32), history=[0]) == 1


def test_perplexity_matches_reference(tiny_gguf):
    m = load_model(tiny_gguf, storage="f32", quiet=True)
    ref = Reference(tiny_gguf)
    rng = np.random.default_rng()
    toks = [2] + rng.integers(5, m.cfg.n_vocab, 47).tolist()
    ctx = 16
    res = perplexity(m, toks, bos_id=2, ctx=ctx, batch=5)
    nll, n = 0.0, 0
    for c in range(len(toks) // ctx):
        chunk = list(toks[c * ctx : (c + 1) * ctx])
        chunk[0] = 2
        lg, _ = ref.forward(chunk)
        for j in range(ctx // 2, ctx - 1):
            x = lg[j] - lg[j].max()
            nll -= x[chunk[j + 1]] - math.log(np.exp(x).sum())
            n += 1
    assert res.n_tokens == n == 3 * (ctx - 1 - ctx // 2)
    assert abs(res.ppl - math.exp(nll / n)) / res.ppl < 1e-4


def test_kl_divergence_roundtrip(tiny_gguf, tmp_path):
    m = load_model(tiny_gguf, storage="f32", quiet=True)
    toks = [2] + list(range(10, 74))
    base = tmp_path / "base.kld"
    r0 = perplexity(m, toks, bos_id=2, ctx=32, kl_base=str(base))
    r1 = perplexity(m, toks, bos_id=2, ctx=32, kl_base=str(base), kl_compare=True)
    assert r1.kld["kld_mean"] < 1e-3 and r1.kld["top1_agreement"] == 1.0
    assert abs(r1.kld["ppl_ratio"] - 1) < 1e-3 and abs(r0.ppl - r1.ppl) < 1e-6
    m2 = load_model(tiny_gguf, storage="i16", quiet=True)
    from turbospec.engine.kv.cache import KVConfig, cache_type_names

    kv = KVConfig("q4_0", "q4_0") if "q4_0" in cache_type_names() else None
    r2 = perplexity(m2, toks, bos_id=2, ctx=32, kl_base=str(base), kl_compare=True, kv=kv)
    assert r2.kld["kld_mean"] > 0


def test_run_json_on_tiny_model(tiny_gguf, capsys):
    rc = main(["run", "-m", str(tiny_gguf), "-p", "the cat", "-n", "6", "--json", "--backend", "numpy",
               "--ignore-eos"])
    assert rc == 0
    out = capsys.readouterr().out.strip().splitlines()
    d = json.loads(out[-1])
    assert len(d["tokens"]) == 6 and d["n_prompt"] >= 2
    assert {"text", "prefill_tok_s", "decode_tok_s"} <= set(d)
    m = load_model(tiny_gguf, quiet=True)
    from turbospec.engine.loader import load_tokenizer

    tok = load_tokenizer(m)
    assert d["text"] == tok.decode(d["tokens"])
    # greedy continuation equals argmax decoding by hand
    ids = tok.encode("the cat", add_bos=True)
    s_logits, _ = m.forward(ids, c := m.new_cache())
    want = []
    for _ in range(6):
        t = int(np.argmax(s_logits[-1]))
        want.append(t)
        s_logits, _ = m.forward([t], c)
    assert d["tokens"] == want


def test_tq_weights_run_without_float_copy(tiny_gguf, tmp_path):
    from turbospec.engine.quant.linear import TQLinear

    out = tmp_path / "tq4.gguf"
    assert main(["quantize", str(tiny_gguf), str(out), "--type", "tq4_1s"]) == 0
    m = load_model(out, quiet=True)
    blk = m.blk[0]
    assert isinstance(blk.attn_qkv, TQLinear) and isinstance(blk.ffn_down, TQLinear)
    toks = [2, 30, 40, 50, 60, 70]
    got, _ = m.forward(toks, m.new_cache(), logits_rows="all")
    for b in m.blk:  # the same weights, dequantized to float32 once
        for name in ("attn_qkv", "attn_output", "ffn_gate_up", "ffn_down"):
            setattr(b, name, Dense(getattr(b, name).dequantize()))
    want, _ = m.forward(toks, m.new_cache(), logits_rows="all")
    assert np.max(np.abs(got - want)) / np.max(np.abs(want)) < 1e-4


def test_run_ranges_covers_every_range_raises_and_allows_two_callers(monkeypatch):
    """The crew: every range once, a helper's exception reaches the caller (and the crew still
    works after it), and two threads calling at once (target and drafter) both get their own
    results."""
    import threading

    monkeypatch.setattr(linear, "_N_WORKERS", 3)
    seen = []
    linear.run_ranges(lambda a, b: seen.append((a, b)), 10, 3)
    assert sorted(seen) == [(0, 3), (3, 6), (6, 9), (9, 10)]

    def boom(a, b):
        if a == 0:  # a range the crew hands to a helper
            raise ValueError("range 0 failed")

    with pytest.raises(ValueError, match="range 0 failed"):
        linear.run_ranges(boom, 9, 3)
    rng = np.random.default_rng()
    w = rng.standard_normal((5000, 64)).astype(np.float32)
    lin = RowInt16(*quantize_rows_int16(w))
    xs = [rng.standard_normal((1, 64)).astype(np.float32) for _ in range(2)]
    want = [lin.apply(x) for x in xs]
    got: dict[int, list] = {0: [], 1: []}

    def caller(i):
        for _ in range(50):
            got[i].append(lin.apply(xs[i]))

    ts = [threading.Thread(target=caller, args=(i,)) for i in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for i in range(2):
        assert len(got[i]) == 50
        for y in got[i]:
            np.testing.assert_array_equal(y, want[i])


def test_crew_waits_for_its_helpers_through_an_interrupt(monkeypatch):
    """Ctrl-C while the caller waits on a helper: the caller still waits for the helper's range
    to finish (it writes into the shared output), then raises; the crew works afterwards."""
    import time

    monkeypatch.setattr(linear, "_N_WORKERS", 2)
    finished = []

    def slow(a, b):
        if a == 0:  # the helper's range
            time.sleep(0.05)
            finished.append((a, b))

    real_wait = linear._Helper.wait
    calls = {"n": 0}

    def interrupted_once(self):
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt
        return real_wait(self)

    monkeypatch.setattr(linear._Helper, "wait", interrupted_once)
    with pytest.raises(KeyboardInterrupt):
        linear.run_ranges(slow, 20, 10)
    assert finished == [(0, 10)]  # the helper's range was done before the interrupt surfaced
    monkeypatch.setattr(linear._Helper, "wait", real_wait)
    seen = []
    linear.run_ranges(lambda a, b: seen.append((a, b)), 20, 10)
    assert sorted(seen) == [(0, 10), (10, 20)]


@pytest.mark.parametrize("n", [262144, 5000, 1000, 300, 37])
def test_fast_candidates_equal_the_reference(n):
    """Sampler.candidates (block-maxima threshold for top-k) against probs_reference (argpartition
    over the whole row) on fresh random rows, with top-p / min-p / temperature / the repetition
    penalty: the same dense distribution bit for bit; rows with ties keep the lowest ids (the full
    sort's order); draw_sparse picks what draw picks from the same generator state."""
    rng = np.random.default_rng()
    for trial in range(12):
        lg = (rng.standard_normal(n) * rng.uniform(0.5, 6)).astype(np.float32)
        if trial % 4 == 3:
            lg = np.round(lg * 2) / 2  # many exact ties
        cfg = SamplingConfig(temp=float(rng.uniform(0.3, 1.5)), top_k=int(rng.choice([1, 5, 40, 200])),
                             top_p=float(rng.choice([1.0, 0.95, 0.6])), min_p=float(rng.choice([0.0, 0.05, 0.3])),
                             repeat_penalty=float(rng.choice([1.0, 1.3])), seed=int(rng.integers(1 << 30)))
        hist = [int(t) for t in rng.integers(0, n, 20)]
        s = Sampler(cfg)
        fast = s.probs(lg, hist)
        if trial % 4 == 3:  # ties: the reference's argpartition may keep any of them; the full sort's lowest ids
            lp = s.penalize(lg, hist)
            keep = np.arange(n)
            order = keep[np.lexsort((keep, -lp))][: min(cfg.top_k, n)]
            ids, q = s.candidates(lg, hist)
            assert set(ids) <= set(order) and list(ids) == list(order[: len(ids)])
        else:
            np.testing.assert_array_equal(fast, s.probs_reference(lg, hist))
        a, b = Sampler(cfg), Sampler(cfg)
        for _ in range(5):
            assert a.draw(fast) == b.draw_sparse(*b.candidates(lg, hist))
        assert a.rng.random() == b.rng.random()  # both generators advanced alike


def test_fast_candidates_with_non_finite_logits():
    """-inf entries (masked tokens) are never kept while finite ones remain; a NaN row takes the
    reference's path instead of losing every candidate."""
    rng = np.random.default_rng()
    lg = rng.standard_normal(262144).astype(np.float32)
    lg[:200000] = -np.inf
    s = Sampler(SamplingConfig(temp=0.8, top_k=40, top_p=1.0, min_p=0.0))
    ids, q = s.candidates(lg)
    assert len(ids) == 40 and ids.min() >= 200000 and abs(q.sum() - 1) < 1e-12
    np.testing.assert_array_equal(s.probs(lg), s.probs_reference(lg))
    lg[5] = np.nan
    ids, q = s.candidates(lg)
    assert len(ids) >= 1
