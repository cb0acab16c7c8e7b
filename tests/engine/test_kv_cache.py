"""The packed KV cache: real bytes per type, sliding rings, per-layer recipes, equalization,
outlier channels, errors, and attention against a plain reference."""

import argparse

import numpy as np
import pytest

from turbospec.engine.kv import cache as kvcache
from turbospec.engine.kv.cache import KVCache, KVConfig, LayerKV
from turbospec.engine.kv.codecs import get_codec
from turbospec.engine.kv.equalize import compute_scales
from turbospec.engine.kv.recipes import RECIPES, add_kv_recipe_args, apply_recipe_args, parse_spec
from turbospec.errors import UserError

# bytes of one 256-value K (or V) row per KV head, from DESIGN.md's table (block, bytes)
ROW_BYTES_256 = {
    "f16": 512,
    "q8_0": 8 * 34,
    "q4_0": 8 * 18,
    "turbo4": 2 * 68,
    "turbo4lm": 2 * 68,
    "turbo3": 2 * 50,  # 50 B per 128 values -> 100 B per token per KV head
    "turbo2": 2 * 34,
}


def _layer(tk="f16", tv="f16", hd=256, hkv=1, sliding=False, window=1 << 30, **kw) -> LayerKV:
    return LayerKV(3, hkv, hd, sliding, window, KVConfig(type_k=tk, type_v=tv, **kw))


def _kv(rng, t, hkv=1, hd=256, outlier=0.0):
    k = rng.standard_normal((t, hkv, hd)).astype(np.float32)
    k[..., :4] *= 1 + outlier  # a few strong channels, as the default model has
    v = rng.standard_normal((t, hkv, hd)).astype(np.float32)
    return k, v


def _ref_attention(q, k, v, qpos, kpos, scale, window=None):
    """Plain per-head masked softmax (float64)."""
    T, nh, _ = q.shape
    hkv = k.shape[1]
    g = nh // hkv
    out = np.zeros((T, nh, v.shape[-1]))
    for t in range(T):
        for h in range(nh):
            s = k[:, h // g].astype(np.float64) @ q[t, h].astype(np.float64) * scale
            vis = kpos <= qpos[t]
            if window is not None:
                vis &= qpos[t] - kpos < window
            s = np.where(vis, s, -np.inf)
            p = np.exp(s - s.max())
            out[t, h] = p @ v[:, h // g] / p.sum()
    return out


@pytest.mark.parametrize("t", list(ROW_BYTES_256))
def test_bytes_per_token_match_design_table(t):
    lay = _layer(t, t, hd=256, hkv=2)
    assert lay.bytes_per_token == 2 * 2 * ROW_BYTES_256[t]
    codec = get_codec(t)
    assert lay.kbytes == codec.row_bytes(256)


def test_asymmetric_and_padded_bytes():
    lay = _layer("q8_0", "turbo3", hd=256)
    assert lay.bytes_per_token == 272 + 100
    small = _layer("turbo3", "q8_0", hd=32)  # 32 -> one zero-padded 128-group for turbo
    assert small.kbytes == 50 and small.vbytes == 34


def test_nbytes_counts_cells_in_use():
    rng = np.random.default_rng()
    lay = _layer("turbo3", "turbo3")
    k, v = _kv(rng, 40)
    lay.attend(rng.standard_normal((40, 4, 256)).astype(np.float32), np.arange(40), 0.1, k, v)
    assert lay.nbytes == 40 * 200
    lay.truncate(30)
    assert lay.nbytes == 30 * 200


@pytest.mark.parametrize("types", [("f16", "f16"), ("q4_0", "turbo3"), ("turbo2", "turbo4")])
def test_sliding_layer_never_holds_more_than_window_plus_slack(types):
    rng = np.random.default_rng()
    window, slack = 16, 4
    lay = LayerKV(0, 1, 128, True, window, KVConfig(*types, slack=slack))
    pos = 0
    for n in (7, 1, 1, 25, 3, 1, 40, 1, 1):
        k, v = _kv(rng, n, hd=128)
        q = rng.standard_normal((n, 2, 128)).astype(np.float32)
        lay.attend(q, np.arange(pos, pos + n), 0.1, k, v)
        pos += n
        assert np.count_nonzero(lay.pos >= 0) <= window + slack
        assert lay.cap == window + slack and lay.k.shape[0] == window + slack
        held = np.sort(lay.pos[lay.pos >= 0])
        assert held[-1] == pos - 1 and held[0] >= pos - window - slack


def test_attention_matches_reference_any_tile(monkeypatch):
    """Tiled online softmax over packed cells = plain softmax over the decoded cells."""
    rng = np.random.default_rng()
    for tk, tv in (("q8_0", "turbo3"), ("turbo4", "q4_0"), ("f16", "turbo2")):
        lay = _layer(tk, tv, hd=256, hkv=1, sliding=True, window=24)
        k, v = _kv(rng, 30)
        q = rng.standard_normal((30, 2, 256)).astype(np.float32)
        qpos = np.arange(30)
        got = {}
        for tile in (7, 4096):
            monkeypatch.setattr(kvcache, "ATTN_TILE", tile)
            lay.clear()
            got[tile] = lay.attend(q, qpos, 0.0625, k, v)
        np.testing.assert_allclose(got[7], got[4096], rtol=1e-4, atol=1e-5)
        kd = get_codec(tk).decode(get_codec(tk).encode(k))
        vd = get_codec(tv).decode(get_codec(tv).encode(v))
        if get_codec(tk).rotated:
            kd = get_codec(tk).unrotate(kd)
        if get_codec(tv).rotated:
            vd = get_codec(tv).unrotate(vd)
        want = _ref_attention(q, kd, vd, qpos, qpos, 0.0625, window=24)
        np.testing.assert_allclose(got[7], want, rtol=1e-3, atol=1e-4)


def test_per_layer_recipe_bytes():
    cfg = parse_spec("turbo3/turbo3+eq+out8+protect")
    c = KVCache(6, 1, 256, [True, True, False, True, True, False], 512, cfg)
    types = [(lay.ck.name, lay.cv.name) for lay in c.layers]
    assert types[0] == types[5] == ("q8_0", "q8_0")
    assert all(t == ("turbo3", "turbo3") for t in types[1:5])
    # q8_0 layers: 272 + 272 + 16 B of 8 f16 outliers; turbo3 layers: 100 + 100 + 16
    assert [lay.bytes_per_token for lay in c.layers] == [560] + [216] * 4 + [560]
    assert c.bytes_per_token() == 2 * 560 + 4 * 216
    assert c.bytes_per_token(sliding=False) == 216 + 560
    rng = np.random.default_rng()
    for lay in c.layers:
        k, v = _kv(rng, 20)
        lay.attend(rng.standard_normal((20, 4, 256)).astype(np.float32), np.arange(20), 0.1, k, v)
    assert c.nbytes == 20 * c.bytes_per_token()
    assert all(lay.ko.nbytes == lay.cap * 16 for lay in c.layers)  # the outliers really are stored


def test_layer_index_out_of_range_is_a_user_error():
    with pytest.raises(UserError, match="layer 9"):
        KVCache(4, 1, 128, [False] * 4, 8, KVConfig(layer_types={9: ("q8_0", "q8_0")}))


@pytest.mark.parametrize("tk", ["q8_0", "q4_0", "turbo4", "turbo3", "turbo2", "turbo4lm", "f16"])
def test_equalization_applies_to_quantized_k_only(tk):
    rng = np.random.default_rng()
    lay = _layer(tk, "f16", equalize=0.5)
    k, v = _kv(rng, 80, outlier=9.0)
    lay.attend(rng.standard_normal((80, 4, 256)).astype(np.float32), np.arange(80), 0.1, k, v)
    if tk == "f16":
        assert lay.eq_scale is None
        np.testing.assert_array_equal(lay.k[:80].view(np.float16).reshape(80, 1, 256), k.astype(np.float16))
        return
    np.testing.assert_allclose(lay.eq_scale, compute_scales(k, 0.5), rtol=1e-6)
    assert lay.eq_scale[0] < 0.5 < lay.eq_scale[100]  # strong channels shrink, weak ones grow
    c = get_codec(tk)
    stored = c.decode(lay.k[:80])
    if c.rotated:
        stored = c.unrotate(stored)
    err_eq = np.linalg.norm(stored - k * lay.eq_scale) / np.linalg.norm(k * lay.eq_scale)
    err_raw = np.linalg.norm(stored - k) / np.linalg.norm(k)
    assert err_eq < 0.5 and err_eq < err_raw  # the cache holds K ⊙ s


def test_equalized_scores_stay_unbiased():
    """<Q/s, K⊙s> = <Q, K>: with q8_0 K the output stays close to f16's."""
    rng = np.random.default_rng()
    k, v = _kv(rng, 64, outlier=20.0)
    q = rng.standard_normal((64, 2, 256)).astype(np.float32) * 0.2
    outs = []
    for cfg in (dict(tk="f16"), dict(tk="q8_0", equalize=0.5)):
        lay = _layer(cfg.pop("tk"), "f16", **cfg)
        outs.append(lay.attend(q, np.arange(64), 0.0625, k, v))
    np.testing.assert_allclose(outs[1], outs[0], atol=2e-2)


def test_outlier_channels_are_top_rms_and_exact():
    rng = np.random.default_rng()
    k, v = _kv(rng, 50)
    k[..., [7, 99, 200]] *= 30
    lay = _layer("turbo2", "f16", k_outliers=3)
    q = rng.standard_normal((50, 2, 256)).astype(np.float32)
    out = lay.attend(q, np.arange(50), 0.0625, k, v)
    assert lay.out_idx.tolist() == [7, 99, 200]
    np.testing.assert_array_equal(lay.ko[:50], k[..., [7, 99, 200]].astype(np.float16))
    # reference: codec part with the outlier channels zeroed (in K and in Q), plus exact outliers
    kz = k.copy()
    kz[..., [7, 99, 200]] = 0
    c = get_codec("turbo2")
    kd = c.unrotate(c.decode(c.encode(kz)))
    kd[..., [7, 99, 200]] = k[..., [7, 99, 200]].astype(np.float16)
    want = _ref_attention(q, kd, v.astype(np.float16).astype(np.float32), np.arange(50), np.arange(50), 0.0625)
    np.testing.assert_allclose(out, want, rtol=1e-3, atol=1e-3)


def test_all_channels_as_outliers_equal_f16_attention():
    rng = np.random.default_rng()
    k, v = _kv(rng, 33, hkv=2)
    q = rng.standard_normal((33, 4, 256)).astype(np.float32)
    a = _layer("turbo3", "f16", hkv=2, k_outliers=256).attend(q, np.arange(33), 0.0625, k, v)
    b = _layer("f16", "f16", hkv=2).attend(q, np.arange(33), 0.0625, k, v)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("what", ["K", "V"])
def test_non_finite_names_layer_and_position(what):
    rng = np.random.default_rng()
    lay = _layer("turbo3", "q8_0")
    k, v = _kv(rng, 10)
    (k if what == "K" else v)[6, 0, 17] = np.nan
    with pytest.raises(UserError, match=rf"non-finite {what}.*layer 3, position 106"):
        lay.attend(rng.standard_normal((10, 4, 256)).astype(np.float32), np.arange(100, 110), 0.1, k, v)
    assert lay.nbytes == 0  # nothing written


def test_scale_overflow_is_a_user_error():
    rng = np.random.default_rng()
    lay = _layer("q4_0", "f16")
    k, v = _kv(rng, 4)
    k[2, 0, :] = 1e7
    with pytest.raises(UserError, match="layer 3, position 2"):
        lay.attend(rng.standard_normal((4, 4, 256)).astype(np.float32), np.arange(4), 0.1, k, v)


def test_tiny_model_head_dim_32_turbo3_close_to_f16(tiny_gguf):
    """head_dim 32: turbo3 zero-pads each head to one 128-group, end to end through the model."""
    from turbospec.engine.loader import load_model

    m = load_model(tiny_gguf, storage="f32", quiet=True)
    assert m.cfg.head_dim == 32
    toks = [2] + np.random.default_rng().integers(5, m.cfg.n_vocab, 30).tolist()
    ref, _ = m.forward(toks, m.new_cache(), logits_rows="all")
    for spec in ("turbo3/turbo3", "turbo3/turbo3+eq+out4+protect", "q8_0/turbo3"):
        cache = m.new_cache(parse_spec(spec))
        got, _ = m.forward(toks, cache, logits_rows="all")
        assert np.isfinite(got).all()
        rel = np.linalg.norm(got - ref) / np.linalg.norm(ref)
        assert 1e-3 < rel < 0.15, (spec, rel)  # measured ~0.05-0.10: the codec is really in the loop
        assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] > 0.99
        assert cache.layers[1].kbytes in (50, 34)


def test_parse_spec_and_recipes():
    c = parse_spec("q8_0/turbo3+eq0.25+out16+protect=0,2,-1+ptype=turbo4")
    assert (c.type_k, c.type_v, c.equalize, c.k_outliers) == ("q8_0", "turbo3", 0.25, 16)
    assert c.layer_types == {0: ("turbo4", "turbo4"), 2: ("turbo4", "turbo4"), -1: ("turbo4", "turbo4")}
    assert parse_spec("turbo4/turbo4+eq").equalize == 0.5
    for name in RECIPES:
        assert parse_spec(name).recipe == name
    for bad in ("turbo3", "turbo3/turbo9", "turbo3/turbo3+wat", "turbo3/turbo3+outx"):
        with pytest.raises(UserError):
            parse_spec(bad)


def test_recipe_args_apply():
    p = argparse.ArgumentParser()
    add_kv_recipe_args(p)
    base = KVConfig(type_k="f16", type_v="f16")
    cfg = apply_recipe_args(p.parse_args(["--kv-recipe", "turbo3-k"]), base)
    assert cfg.type_k == "turbo3" and cfg.k_outliers == 8 and cfg.layer_types[-1] == ("q8_0", "q8_0")
    cfg = apply_recipe_args(p.parse_args(["--kv-protect-layers", "0,-1", "--kv-k-outliers", "4"]),
                            KVConfig("turbo3", "turbo3"))
    assert cfg.layer_types == {0: ("q8_0", "q8_0"), -1: ("q8_0", "q8_0")} and cfg.k_outliers == 4
    assert apply_recipe_args(p.parse_args([]), base) is base
    for argv in (["--kv-recipe", "nope"], ["--kv-protect-layers", "a,b"], ["--kv-k-outliers", "-1"],
                 ["--kv-protect-layers", "0", "--kv-protect-type", "q9"]):
        with pytest.raises(UserError):
            apply_recipe_args(p.parse_args(argv), KVConfig())


@pytest.mark.parametrize("rows", [1, 8, 300])
def test_rotate_small_matches_butterfly(rows):
    """The matmul rotation used for decode-sized inputs = the codec's butterfly (the reference)."""
    rng = np.random.default_rng()
    c = get_codec("turbo3")
    x = rng.standard_normal((rows, 256)).astype(np.float32)
    np.testing.assert_allclose(kvcache.rotate_small(x, c), c.rotate(x), atol=2e-6)
    np.testing.assert_allclose(kvcache.rotate_small(x, c, inverse=True), c.unrotate(x), atol=2e-6)
    np.testing.assert_allclose(kvcache.rotate_small(kvcache.rotate_small(x, c), c, inverse=True), x, atol=2e-6)


@pytest.mark.parametrize(
    "tk,tv,kw",
    [
        ("f16", "f16", {}),
        ("q8_0", "turbo3", {}),
        ("turbo4", "turbo2", {"equalize": 0.5}),
        ("turbo3", "q4_0", {"k_outliers": 4}),
        ("turbo4lm", "f16", {"equalize": 0.5, "k_outliers": 2}),
    ],
)
@pytest.mark.parametrize("sliding", [False, True])
def test_step_fast_path_is_bit_identical_to_tiled_path(monkeypatch, tk, tv, kw, sliding):
    """LayerKV._attend_step (one decode token) against the general tiled path on the same
    cache: same outputs bit for bit, and the same bytes written, through a sliding ring that
    wraps and a rollback of drafts in between."""
    rng = np.random.default_rng()
    monkeypatch.setattr(kvcache, "NATIVE_STEP", False)  # f16's native step: tests/engine/test_native_attn.py
    window = 24 if sliding else 1 << 30
    fast = _layer(tk, tv, hkv=2, sliding=sliding, window=window, **kw)
    slow = _layer(tk, tv, hkv=2, sliding=sliding, window=window, **kw)
    k, v = _kv(rng, 20, hkv=2, outlier=4.0)
    q = rng.standard_normal((20, 4, 256)).astype(np.float32)
    for lay in (fast, slow):  # the same prefill (batched path) on both
        lay.attend(q, np.arange(20), 0.0625, k, v)
    pos = 20
    for step in range(60):
        if step == 30:  # reject some drafts: both roll back to the same position
            pos -= 3
            fast.truncate(pos)
            slow.truncate(pos)
        k, v = _kv(rng, 1, hkv=2, outlier=4.0)
        q = rng.standard_normal((1, 4, 256)).astype(np.float32)
        monkeypatch.setattr(kvcache, "STEP_FAST_PATH", True)
        a = fast.attend(q, np.array([pos]), 0.0625, k, v)
        monkeypatch.setattr(kvcache, "STEP_FAST_PATH", False)
        b = slow.attend(q, np.array([pos]), 0.0625, k, v)
        assert a.shape == b.shape == (1, 4, 256)
        np.testing.assert_array_equal(a, b)
        pos += 1
    np.testing.assert_array_equal(fast.k, slow.k)
    np.testing.assert_array_equal(fast.v, slow.v)
    np.testing.assert_array_equal(fast.pos, slow.pos)
    # and both agree with the plain float64 reference over the decoded cells
    sel = slow.pos >= 0
    kd = slow.ck.decode(slow.k[sel]).astype(np.float64)
    vd = slow.cv.decode(slow.v[sel])
    if slow.eq_scale is not None or slow.out_idx is not None:
        return  # the reference below has no equalization / outlier channels
    if slow.ck.rotated:
        kd = slow.ck.unrotate(kd.astype(np.float32))
    if slow.cv.rotated:
        vd = slow.cv.unrotate(vd)
    ref = _ref_attention(q, kd, vd, np.array([pos - 1]), slow.pos[sel], 0.0625, window if sliding else None)
    np.testing.assert_allclose(a, ref, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("tk,tv,kw", [("q8_0", "turbo3", {}), ("turbo4", "q4_0", {"equalize": 0.5}),
                                      ("turbo3", "turbo2", {"k_outliers": 8}), ("f16", "f16", {})])
def test_roundtrip_is_what_a_reader_attends_over(tk, tv, kw):
    """LayerKV.roundtrip hands back the K/V a read-only attention (the assistant's) sees: attention
    over the cells = the plain reference over the round-tripped values, and a quantized type moves them."""
    rng = np.random.default_rng()
    lay = _layer(tk, tv, hd=256, hkv=1, **kw)
    k, v = _kv(rng, 40, outlier=4.0)
    pos = np.arange(40)
    kh, vh = lay.roundtrip(k, v, pos)
    assert kh.shape == vh.shape == k.shape and kh.dtype == vh.dtype == np.float32
    assert lay.n == 0 and (lay.pos < 0).all()  # writes no cell
    kp, vp, ko = lay.encode(k, v, pos)
    lay.write(kp, vp, pos, ko)
    q = rng.standard_normal((3, 4, 256)).astype(np.float32)
    qpos = np.array([39, 39, 39])
    got = lay.attend(q, qpos, 0.0625, max_pos=39)
    want = _ref_attention(q, kh, vh, qpos, pos, 0.0625)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
    err = np.abs(kh - k).mean() + np.abs(vh - v).mean()  # f16 rounds at ~2^-11 of |x|; 8-bit and fewer far more
    assert (err < 2e-3) == (tk == tv == "f16"), err
