"""The MTP assistant on the tiny target: GGUF round trip, validation lines, the one-step forward
against a float64 reference, the centroid head against the dense head, read-only KV use, and
the drafter inside the speculative loop (greedy output identical to plain decoding)."""

from __future__ import annotations

import math
import threading
from dataclasses import replace
from pathlib import Path

import gguf
import numpy as np
import pytest

from turbospec.engine.generate import GenConfig, Session, generate
from turbospec.engine.kv.cache import KVConfig
from turbospec.engine.loader import load_model, load_tokenizer
from turbospec.engine.models.gemma4_assistant import (
    AssistantConfig,
    Gemma4Assistant,
    expected_shapes,
    write_assistant_gguf,
)
from turbospec.engine.spec.base import Drafter, Proposal, Round
from turbospec.engine.spec.loop import SpecConfig
from turbospec.engine.spec.mtp import MTPDrafter
from turbospec.engine.spec.ngram import LookupFirst, NGramDrafter, lookup_reference
from turbospec.errors import UserError

PROMPT = "the cat is on the mat and the dog is on the mat and the cat"


def tiny_assistant_config(target, **kw) -> AssistantConfig:
    c = target.cfg
    base = dict(
        n_layer=2, n_embd=48, n_ff=80, n_head=2 * c.n_head_kv, head_dim=c.head_dim, n_vocab=c.n_vocab,
        n_embd_backbone=c.n_embd, eps=c.eps, rope_base=c.rope_base, rope_base_swa=c.rope_base_swa,
        window=c.window, sliding=[True, False], n_centroids=8, centroid_top_k=3, requires_target_arch="gemma3",
    )
    base.update(kw)
    return AssistantConfig(**base)


def random_tensors(cfg: AssistantConfig, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    t = {}
    for name, shape in expected_shapes(cfg).items():
        if len(shape) == 1:
            t[name] = (1.0 + 0.2 * rng.standard_normal(shape)).astype(np.float32)
        else:
            t[name] = (rng.standard_normal(shape) / math.sqrt(shape[1])).astype(np.float32)
    if "token_embd.weight" in t:
        t["token_embd.weight"] *= 3.0
    return t, rng.permutation(cfg.n_vocab).astype(np.int32)


def write_random(path: Path, target, tokens: list[str], seed: int = 0, qtype: str = "f32", **kw) -> Path:
    cfg = tiny_assistant_config(target, **kw)
    t, order = random_tensors(cfg, seed)
    return write_assistant_gguf(path, cfg, t, order, tokens, qtype=qtype)


@pytest.fixture(scope="module")
def target(tiny_gguf):
    from turbospec.engine.backend import set_threads

    set_threads(0)
    m = load_model(tiny_gguf, storage="f32", quiet=True)
    return m, load_tokenizer(m)


def prefilled(model, tok, kv: KVConfig | None = None, text: str = PROMPT) -> Session:
    s = Session(model, kv)
    s.prefill(tok.encode(text, add_bos=True))
    return s


# -- the file --------------------------------------------------------------------------------------


@pytest.mark.parametrize("qtype", ["f32", "f16", "q8_0"])
def test_gguf_round_trip(target, tmp_path, qtype):
    model, tok = target
    cfg = tiny_assistant_config(model, n_embd=64)  # rows of 64: q8_0 applies to every matrix
    t, order = random_tensors(cfg, 3)
    p = write_assistant_gguf(tmp_path / "a.gguf", cfg, t, order, tok.tokens, qtype=qtype)
    a = Gemma4Assistant.load(p)
    a.validate(model, tok.tokens)
    assert a.cfg == cfg
    assert a.src == [1, 2]  # the tiny target: layers 0, 1 sliding, 2 global
    np.testing.assert_array_equal(a.token_ordering, order)
    tol = {"f32": 0, "f16": 1e-3, "q8_0": 2e-2}[qtype]
    for name in expected_shapes(cfg):
        got = {"token_embd.weight": a.token_embd, "mtp.pre_projection.weight": a.pre_projection}.get(name)
        if got is not None:
            np.testing.assert_allclose(got, t[name], atol=tol * np.abs(t[name]).max() + 1e-7)
    np.testing.assert_allclose(a.blk[1].ffn_down, t["blk.1.ffn_down.weight"],
                               atol=tol * np.abs(t["blk.1.ffn_down.weight"]).max() + 1e-7)
    r = gguf.GGUFReader(str(p))
    assert r.get_tensor(len(r.tensors) - 1).name == "mtp.token_ordering.weight"
    assert r.get_tensor(len(r.tensors) - 1).tensor_type == gguf.GGMLQuantizationType.I32


def _raw_writer(path: Path, target, tokens, cfg: AssistantConfig, *, arch="gemma4_assistant",
                order=None, order_dtype=np.int32, drop=(), keys=None) -> Path:
    """A hand-written assistant GGUF, to break one thing at a time."""
    t, default_order = random_tensors(cfg, 1)
    w = gguf.GGUFWriter(str(path), arch)
    a = arch
    kv = {
        "block_count": cfg.n_layer, "embedding_length": cfg.n_embd, "feed_forward_length": cfg.n_ff,
        "attention.head_count": cfg.n_head, "attention.key_length": cfg.head_dim,
        "n_embd_backbone": cfg.n_embd_backbone, "n_centroids": cfg.n_centroids,
        "centroid_top_k": cfg.centroid_top_k,
    }
    kv.update(keys or {})
    for k, v in kv.items():
        w.add_uint32(f"{a}.{k}", v)
    w.add_string(f"{a}.requires_target_arch", cfg.requires_target_arch)
    w.add_array(f"{a}.attention.sliding_window_pattern", cfg.sliding)
    w.add_token_list(tokens)
    for name, arr in t.items():
        if name not in drop:
            w.add_tensor(name, arr)
    if "mtp.token_ordering.weight" not in drop:
        w.add_tensor("mtp.token_ordering.weight", np.asarray(default_order if order is None else order, order_dtype))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _load_line(p: Path, model, tokens) -> str:
    with pytest.raises(UserError) as ei:
        a = Gemma4Assistant.load(p)
        a.validate(model, tokens)
    msg = str(ei.value)
    assert "\n" not in msg
    return msg


def test_validation_failures_one_line_each(target, tmp_path):
    model, tok = target
    toks = list(tok.tokens)
    cfg = tiny_assistant_config(model)
    ok = _raw_writer(tmp_path / "ok.gguf", model, toks, cfg)
    Gemma4Assistant.load(ok).validate(model, toks)  # the control: the same writer, nothing broken

    cases = {
        "architecture": (dict(arch="llama"), "general.architecture is 'llama'"),
        "backbone": (dict(cfg=replace(cfg, n_embd_backbone=32)), "n_embd_backbone 32 != the target's n_embd 64"),
        "arch_target": (dict(cfg=replace(cfg, requires_target_arch="gemma4")),
                        "built for target architecture 'gemma4'"),
        "divisible": (dict(cfg=replace(cfg, n_centroids=7, centroid_top_k=2)), "not divisible by n_centroids 7"),
        "ordering_len": (dict(order=np.arange(cfg.n_vocab - 1)), "token_ordering has 383 entries"),
        "ordering_type": (dict(order_dtype=np.float32), "expected I32"),
        "ordering_perm": (dict(order=np.zeros(cfg.n_vocab)), "not a permutation"),
        "missing": (dict(drop=("blk.1.ffn_up.weight",)), "missing tensor 'blk.1.ffn_up.weight'"),
        "heads": (dict(cfg=replace(cfg, head_dim=16)), "cannot attend over the target's KV"),
    }
    for key, (kw, want) in cases.items():
        c = kw.pop("cfg", cfg)
        p = _raw_writer(tmp_path / f"{key}.gguf", model, toks, c, **kw)
        msg = _load_line(p, model, toks)
        assert want in msg, (key, msg)
    # vocabulary: size, then text from id 5 on (ids < 5 may differ)
    p = _raw_writer(tmp_path / "vsize.gguf", model, toks[:-8], replace(cfg, n_vocab=cfg.n_vocab - 8, n_centroids=8))
    assert "vocabulary of 376 tokens, the target has 384" in _load_line(p, model, toks)
    bad = list(toks)
    bad[300] = "▁zebra"
    p = _raw_writer(tmp_path / "vtext.gguf", model, bad, cfg)
    assert "token 300 is '▁zebra'" in _load_line(p, model, toks)
    specials = list(toks)
    specials[3] = "<other>"
    p = _raw_writer(tmp_path / "vspecial.gguf", model, specials, cfg)
    Gemma4Assistant.load(p).validate(model, toks)
    assert "MTP head not found" in _load_line(tmp_path / "nope.gguf", model, toks)


# -- the forward -------------------------------------------------------------------------------------


class Ref64:
    """Float64 one-step reference from gguf-py's dequantization and the cache's raw f16 cells."""

    def __init__(self, path: Path, target_path: Path, cfg: AssistantConfig):
        self.c = cfg
        r = gguf.GGUFReader(str(path))
        self.t = {}
        for t in r.tensors:
            shape = tuple(int(x) for x in reversed(t.shape))
            if t.tensor_type == gguf.GGMLQuantizationType.I32:
                self.t[t.name] = np.asarray(t.data).reshape(-1).astype(np.int64)
            else:
                self.t[t.name] = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64).reshape(shape)
        rt = gguf.GGUFReader(str(target_path))
        e = [t for t in rt.tensors if t.name == "token_embd.weight"][0]
        self.E = gguf.quants.dequantize(e.data, e.tensor_type).astype(np.float64).reshape(-1, cfg.n_embd_backbone)

    def rms(self, x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.c.eps) * w

    def rope(self, x, p, base):
        d = x.shape[-1]
        out = x.copy()
        for i in range(d // 2):
            th = p * base ** (-2.0 * i / d)
            out[..., i] = x[..., i] * math.cos(th) - x[..., i + d // 2] * math.sin(th)
            out[..., i + d // 2] = x[..., i + d // 2] * math.cos(th) + x[..., i] * math.sin(th)
        return out

    def step(self, layers, token, h_prev, attn_pos, k, src):
        c, t = self.c, self.t
        pos = attn_pos + 1 + k
        x = t["mtp.pre_projection.weight"] @ np.concatenate([self.E[token] * math.sqrt(c.n_embd_backbone), h_prev])
        for i in range(c.n_layer):
            p = f"blk.{i}."
            lay = layers[src[i]]
            h = self.rms(x, t[p + "attn_norm.weight"])
            q = self.rms((t[p + "attn_q.weight"] @ h).reshape(c.n_head, c.head_dim), t[p + "attn_q_norm.weight"])
            q = self.rope(q, pos, c.rope_base_swa if c.sliding[i] else c.rope_base)
            cells = [j for j in range(lay.cap) if 0 <= lay.pos[j] <= attn_pos
                     and (not lay.sliding or pos - lay.pos[j] < lay.window)]
            K = lay.k[cells].view(np.float16).astype(np.float64)  # (n, n_kv, hd)
            V = lay.v[cells].view(np.float16).astype(np.float64)
            g = c.n_head // K.shape[1]
            o = np.zeros((c.n_head, c.head_dim))
            for hh in range(c.n_head):
                s = K[:, hh // g] @ q[hh] / math.sqrt(c.head_dim)
                pr = np.exp(s - s.max())
                o[hh] = (pr / pr.sum()) @ V[:, hh // g]
            x = x + self.rms(t[p + "attn_output.weight"] @ o.reshape(-1), t[p + "post_attention_norm.weight"])
            h = self.rms(x, t[p + "ffn_norm.weight"])
            gt = t[p + "ffn_gate.weight"] @ h
            gelu = 0.5 * gt * (1 + np.tanh(math.sqrt(2 / math.pi) * (gt + 0.044715 * gt**3)))
            x = x + self.rms(t[p + "ffn_down.weight"] @ (gelu * (t[p + "ffn_up.weight"] @ h)),
                             t[p + "post_ffw_norm.weight"])
        h_inner = self.rms(x, t["output_norm.weight"])
        return h_inner, t["mtp.post_projection.weight"] @ h_inner


@pytest.mark.parametrize("k", [0, 2])
def test_one_step_matches_float64_reference(target, tiny_gguf, tmp_path, k):
    model, tok = target
    p = write_random(tmp_path / "a.gguf", model, tok.tokens, seed=5)
    a = Gemma4Assistant.load(p)
    a.validate(model, tok.tokens)
    ref = Ref64(p, tiny_gguf, a.cfg)
    s = prefilled(model, tok)  # 14+ tokens: longer than the window (8), so the sliding mask matters
    attn_pos = s.n_past - 3
    rng = np.random.default_rng(k)
    h_prev = s.hidden[attn_pos] if k == 0 else rng.standard_normal(model.cfg.n_embd).astype(np.float32)
    token = 300 + k
    h_in, h_next = a.step(model, s.cache, token, h_prev, attn_pos, k)
    r_in, r_next = ref.step(s.cache.layers, token, h_prev.astype(np.float64), attn_pos, k, a.src)
    np.testing.assert_allclose(h_in, r_in, rtol=1e-4, atol=1e-4 * np.abs(r_in).max())
    np.testing.assert_allclose(h_next, r_next, rtol=1e-4, atol=1e-4 * np.abs(r_next).max())
    dense = a.dense_logits(h_in, model)
    np.testing.assert_allclose(dense, ref.t["token_embd.weight"] @ r_in, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("emb", ["own", "ordered", "target"])
def test_centroid_head_equals_dense_when_top_k_covers_all(target, tmp_path, emb):
    model, tok = target
    kw = {"own": {}, "ordered": {"use_ordered_embeddings": True},
          "target": {"use_target_embeddings": True, "n_embd": model.cfg.n_embd}}[emb]
    a = Gemma4Assistant.load(write_random(tmp_path / "a.gguf", model, tok.tokens, seed=9, **kw))
    a.validate(model, tok.tokens)
    rng = np.random.default_rng(0)
    agree_partial = 0
    for _ in range(20):
        h = rng.standard_normal(a.cfg.n_embd).astype(np.float32)
        d = a.dense_logits(h, model)
        full = a.routed_logits(h, model, top_k=a.cfg.n_centroids)
        np.testing.assert_allclose(full, d, rtol=1e-5, atol=1e-4)
        assert int(np.argmax(full)) == int(np.argmax(d))
        part = a.routed_logits(h, model)  # top 3 of 8 clusters: only 3 x 48 tokens scored
        assert np.count_nonzero(part > -1e29) == 3 * (a.cfg.n_vocab // 8)
        agree_partial += int(np.argmax(part)) == int(np.argmax(d))
        assert a.argmax(h, model) == int(np.argmax(part))  # the fast argmax (no full row) is the same
    assert agree_partial < 20  # random centroids route elsewhere sometimes: the routed head is really routed


def test_int16_score_rows_equals_rows_product():
    """RowInt16.score_rows (the routed head's fast path) against the plain rows(idx) @ h."""
    from turbospec.engine.linear import RowInt16, quantize_rows_int16

    rng = np.random.default_rng()
    w = rng.standard_normal((3000, 40)).astype(np.float32)
    lin = RowInt16(*quantize_rows_int16(w))
    for n in (1, 511, 512, 1300):
        idx = rng.choice(3000, n, replace=False)
        h = rng.standard_normal(40).astype(np.float32)
        np.testing.assert_allclose(lin.score_rows(idx, h), lin.rows(idx) @ h, rtol=1e-5, atol=1e-4)


def test_draft_reads_only_cells_up_to_attn_pos(target, tmp_path):
    model, tok = target
    a = Gemma4Assistant.load(write_random(tmp_path / "a.gguf", model, tok.tokens, seed=2))
    a.validate(model, tok.tokens)
    s = prefilled(model, tok)
    attn_pos = s.n_past - 4  # the last 3 cells play rejected drafts, not yet truncated
    h_prev = s.hidden[attn_pos]
    rng = np.random.default_rng(1)
    before = a.draft(model, s.cache, 300, h_prev, attn_pos, 4)
    h_before = a.step(model, s.cache, 300, h_prev, attn_pos, 1)[0]
    for lay in s.cache.layers:
        later = lay.pos > attn_pos
        assert later.any()
        lay.k[later] = rng.integers(0, 255, lay.k[later].shape, dtype=np.uint8) & 0x3B  # finite f16
        lay.v[later] = rng.integers(0, 255, lay.v[later].shape, dtype=np.uint8) & 0x3B
    assert a.draft(model, s.cache, 300, h_prev, attn_pos, 4) == before
    np.testing.assert_array_equal(a.step(model, s.cache, 300, h_prev, attn_pos, 1)[0], h_before)
    # the control: changing a cell <= attn_pos does change the state
    lay = s.cache.layers[a.src[1]]
    j = int(np.nonzero(lay.pos == attn_pos)[0][0])
    lay.v[j] = rng.integers(0, 255, lay.v[j].shape, dtype=np.uint8) & 0x3B
    assert not np.array_equal(a.step(model, s.cache, 300, h_prev, attn_pos, 1)[0], h_before)


@pytest.mark.parametrize("kv", [KVConfig(), KVConfig(type_k="q8_0", type_v="turbo3")], ids=["f16", "q8_0-turbo3"])
def test_drafter_in_the_loop_is_exact_and_lazy(target, tmp_path, kv):
    model, tok = target
    d = MTPDrafter.load(write_random(tmp_path / "a.gguf", model, tok.tokens, seed=4), model, tok)
    ids = tok.encode(PROMPT, add_bos=True)
    cfg = GenConfig(n_predict=24, ignore_eos=True, kv=kv)
    plain = generate(model, tok, ids, cfg)
    try:
        res = generate(model, tok, ids, cfg, drafter=d, spec=SpecConfig(block_size=4, pipeline_depth=2))
    finally:
        d.close()
    assert res.tokens == plain.tokens
    assert res.spec["lazy_rounds"] > 0  # depth 2: the next round's draft was prepared and awaited
    # propose() straight: a Round built by hand drafts n_steps tokens and is reproducible
    s = prefilled(model, tok, kv)
    d.begin(s, ids)
    rnd = Round(0, 300, s.n_past - 1, -1, s.hidden[-1], 3, list(ids) + [300])
    p1 = d.propose(rnd, threading.Event())
    assert len(p1.tokens) == 3 and p1.tokens == d.propose(rnd, threading.Event()).tokens
    assert p1.extra["h_l2"] == pytest.approx(float(np.linalg.norm(s.hidden[-1].astype(np.float64))))


def test_p_min_cuts_the_drafts_at_the_first_low_probability(target, tmp_path):
    """--draft-p-min: the drafts are the p_min=0 drafts cut before the first step whose draft has
    probability < p_min; the probability is the softmax over the scored (routed) candidates."""
    from turbospec.engine.sampling import top_probability

    model, tok = target
    a = Gemma4Assistant.load(write_random(tmp_path / "a.gguf", model, tok.tokens, seed=5))
    a.validate(model, tok.tokens)
    s = prefilled(model, tok)
    rng = np.random.default_rng()
    s_ = rng.standard_normal(50) * 3
    s_[7] = -1e30  # a masked entry counts as probability 0
    want = np.exp(s_[s_ > -1e29] - s_.max()).max() / np.exp(s_[s_ > -1e29] - s_.max()).sum()
    assert top_probability(s_.astype(np.float32)) == pytest.approx(want, rel=1e-6)
    seen_cut = False
    for attn_pos in range(s.n_past - 6, s.n_past):
        id_last = int(rng.integers(5, model.cfg.n_vocab))
        full = a.draft(model, s.cache, id_last, s.hidden[attn_pos], attn_pos, 5)
        probs, tok_, h = [], id_last, s.hidden[attn_pos]
        for k in range(5):  # the same steps by hand, with each draft's probability
            h_inner, h = a.step(model, s.cache, tok_, h, attn_pos, k)
            top, ids = a._route(h_inner)
            sc = a._cap(a._routed_scores(ids, top, h_inner, model)).astype(np.float64)
            tok_, p = a.pick(h_inner, model, with_p=True)
            assert tok_ == full[k]
            assert p == pytest.approx(1.0 / np.exp(sc - sc.max()).sum(), rel=1e-6)
            probs.append(p)
        for thr in sorted(probs):
            cut = a.draft(model, s.cache, id_last, s.hidden[attn_pos], attn_pos, 5, p_min=float(thr) + 1e-9)
            n = next(i for i, p in enumerate(probs) if p < thr + 1e-9)
            assert cut == full[:n]
            seen_cut |= 0 < n < 5
        assert a.draft(model, s.cache, id_last, s.hidden[attn_pos], attn_pos, 5, p_min=1e-12) == full
    assert seen_cut  # some threshold cut a round in the middle


def test_p_min_in_the_loop_is_exact_and_drafts_less(target, tmp_path):
    model, tok = target
    path = write_random(tmp_path / "a.gguf", model, tok.tokens, seed=4)
    ids = tok.encode(PROMPT, add_bos=True)
    cfg = GenConfig(n_predict=24, ignore_eos=True)
    plain = generate(model, tok, ids, cfg)
    got = {}
    for p_min in (0.0, 0.5):
        d = MTPDrafter.load(path, model, tok)
        d.p_min = p_min
        try:
            got[p_min] = generate(model, tok, ids, cfg, drafter=d, spec=SpecConfig(block_size=5, pipeline_depth=2))
        finally:
            d.close()
        assert got[p_min].tokens == plain.tokens
    assert got[0.5].spec["n_drafted"] < got[0.0].spec["n_drafted"]


def test_shipped_head_missing_is_one_line(target, monkeypatch):
    import turbospec.engine.spec.mtp as mtp

    model, tok = target
    monkeypatch.setattr(mtp, "shipped_head_path", lambda: None)
    with pytest.raises(UserError, match="train-assistant"):
        MTPDrafter.load(None, model, tok)


def test_cli_run_spec_mtp_trace_and_errors(target, tiny_gguf, tmp_path, capsys):
    """`turbospec run --spec mtp --mtp-head PATH --trace`: the fork's draft lines (h_l2 = ||h_prev||),
    output equal to plain greedy; a head for another target is refused in one line."""
    import json

    from turbospec.cli import main

    model, tok = target
    head = write_random(tmp_path / "a.gguf", model, tok.tokens, seed=6)
    base = ["run", "-m", str(tiny_gguf), "-p", PROMPT, "-n", "20", "--ignore-eos", "--backend", "numpy", "--json"]
    assert main(base) == 0
    plain = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    tr = tmp_path / "t.ndjson"
    assert main(base + ["--spec", "mtp", "--mtp-head", str(head), "--draft-block-size", "3", "--trace", str(tr)]) == 0
    d = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert d["tokens"] == plain["tokens"] and d["rounds"] > 0
    drafts = [json.loads(ln) for ln in tr.read_text().splitlines() if '"mtp_draft"' in ln]
    assert drafts and all(o["drafter"] == "mtp" for o in drafts)
    assert {o["path"] for o in drafts} <= {"sync", "lazy", "skip-nsteps", "skip-streak"}
    assert all(o["h_l2"] > 0 and len(o["drafts"]) <= 2 for o in drafts)
    other = write_random(tmp_path / "b.gguf", model, tok.tokens, seed=6, requires_target_arch="gemma4")
    assert main(base + ["--spec", "mtp", "--mtp-head", str(other)]) == 2
    err = capsys.readouterr().err
    assert "built for target architecture 'gemma4'" in err and "Traceback" not in err
    assert main(base + ["--spec", "mtp", "--mtp-head", str(tmp_path / "none.gguf")]) == 2
    assert "MTP head not found" in capsys.readouterr().err


class _Fixed(Drafter):
    """An inner drafter that always proposes the same tokens (and counts its calls)."""

    name = "mtp"

    def __init__(self, toks):
        super().__init__()
        self.toks, self.calls, self.accepted = toks, 0, []

    def propose(self, rnd, cancelled):
        self.calls += 1
        return Proposal(tokens=list(self.toks[: rnd.n_steps]))

    def accept(self, n):
        self.accepted.append(n)


def test_lookup_first_prefers_a_long_enough_match():
    """--draft-lookup N: a suffix of >= N tokens seen before drafts what followed it (the inner
    drafter is not called); a shorter or no match goes to the inner drafter; each proposal says
    which part made it; p_min and accept reach the inner drafter."""
    inner = _Fixed([7, 7, 7])
    d = LookupFirst(inner, n_min=2)
    d.begin(None, [])
    h = np.zeros(4, np.float32)
    # "5 6" occurred before, followed by 9 1 2: a 2-token match
    p = d.propose(Round(0, 6, 7, -1, h, 3, [1, 5, 6, 9, 1, 2, 4, 5, 6]), threading.Event())
    assert p.tokens == [9, 1, 2] and p.extra["source"] == "ngram" and inner.calls == 0
    # only "6" recurs (a 1-token match): too short for N = 2, the inner drafter drafts
    p = d.propose(Round(1, 6, 7, -1, h, 2, [1, 6, 9, 3, 4, 5, 8, 6]), threading.Event())
    assert p.tokens == [7, 7] and p.extra["source"] == "mtp" and inner.calls == 1
    assert d.served == {"ngram": 1, "mtp": 1} and d.name == "mtp"
    d.p_min = 0.4
    d.accept(1)
    assert inner.p_min == 0.4 and inner.accepted == [1]
    # --mtp-draft-max 1: the inner drafter's rounds are cut to one draft, lookup's are not
    capped = LookupFirst(inner, n_min=2, inner_max=1)
    capped.begin(None, [])
    assert capped.propose(Round(2, 6, 7, -1, h, 3, [1, 6, 9, 3, 4, 5, 8, 6]), threading.Event()).tokens == [7]
    assert capped.propose(Round(3, 6, 7, -1, h, 3, [1, 5, 6, 9, 1, 2, 4, 5, 6]), threading.Event()).tokens == [9, 1, 2]
    for bad in ({"n_min": 0}, {"n_min": 2, "inner_max": -1}):
        with pytest.raises(ValueError):
            LookupFirst(inner, **bad)
    # and against the reference scan: whenever lookup serves, it is the n_min-restricted lookup
    rng = np.random.default_rng()
    for _ in range(200):
        toks = [int(t) for t in rng.integers(0, 4, rng.integers(2, 30))]
        d = LookupFirst(_Fixed([99, 99]), n_min=2)
        d.begin(None, [])
        p = d.propose(Round(0, toks[-1], len(toks) - 1, -1, h, 2, toks), threading.Event())
        want = lookup_reference(toks, 2, n_max=3, n_min=2)
        assert p.tokens == (want or [99, 99])


def _loop_case(target, tmp_path):
    """(random assistant file, prompt ids, 40-token greedy GenConfig, plain greedy result, its
    loaded assistant) for the in-the-loop lookup tests."""
    model, tok = target
    head = write_random(tmp_path / "a.gguf", model, tok.tokens, seed=4)
    ids = tok.encode(PROMPT, add_bos=True)
    cfg = GenConfig(n_predict=40, ignore_eos=True)
    return head, ids, cfg, generate(model, tok, ids, cfg), MTPDrafter.load(head, model, tok).assistant


def test_lookup_first_in_the_loop_is_exact_and_traces_each_rounds_drafter(target, tiny_gguf, tmp_path, capsys):
    """`run --spec mtp --draft-lookup 2`: greedy output equal to plain at B = 2..5, depth 1 and 2;
    the trace's draft lines name the part that drafted (both appear on this repetitive prompt);
    --draft-lookup without --spec mtp, or negative, is one line."""
    import json

    from turbospec.cli import main

    model, tok = target
    head, ids, cfg, plain, assistant = _loop_case(target, tmp_path)
    for b in (2, 3, 5):
        for depth in (1, 2):
            d = LookupFirst(MTPDrafter(assistant, model), n_min=2)
            try:
                res = generate(model, tok, ids, cfg, drafter=d, spec=SpecConfig(block_size=b, pipeline_depth=depth))
            finally:
                d.close()
            assert res.tokens == plain.tokens, (b, depth)
            assert res.spec["drafter"] == "mtp"
    base = ["run", "-m", str(tiny_gguf), "-p", PROMPT, "-n", "40", "--ignore-eos", "--backend", "numpy", "--json"]
    tr = tmp_path / "t.ndjson"
    assert main(base + ["--spec", "mtp", "--mtp-head", str(head), "--draft-lookup", "2", "--trace", str(tr)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["tokens"] == plain.tokens
    drafts = [json.loads(ln) for ln in tr.read_text().splitlines() if '"mtp_draft"' in ln]
    assert {o["drafter"] for o in drafts if o["drafts"]} == {"ngram", "mtp"}
    start = next(json.loads(ln) for ln in tr.read_text().splitlines() if '"run_start"' in ln)
    assert start["spec"] == "mtp"
    assert main(base + ["--spec", "ngram", "--draft-lookup", "2"]) == 2
    assert "--draft-lookup 2 combines prompt lookup with the assistant" in capsys.readouterr().err
    assert main(base + ["--spec", "mtp", "--mtp-head", str(head), "--draft-lookup", "-1"]) == 2
    assert "--draft-lookup -1 is negative" in capsys.readouterr().err
    assert main(base + ["--spec", "mtp", "--mtp-head", str(head), "--mtp-draft-max", "1"]) == 2
    assert "--mtp-draft-max 1 caps the assistant's rounds beside prompt lookup's: add --draft-lookup N" in \
        capsys.readouterr().err
    assert main(base + ["--spec", "mtp", "--mtp-head", str(head), "--draft-lookup", "2", "--mtp-draft-max", "-2"]) == 2
    assert "--mtp-draft-max -2 is negative" in capsys.readouterr().err
    assert main(base + ["--spec", "mtp", "--mtp-head", str(head), "--draft-lookup", "2", "--mtp-draft-max", "1",
                        "--draft-block-size", "5"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["tokens"] == plain.tokens


def test_lookup_adapt_caps_after_a_miss_and_doubles_back(target, tiny_gguf, tmp_path, capsys):
    """--lookup-adapt: after a lookup round that lost drafts the next lookup rounds draft at most
    (accepted + 1); each fully accepted round doubles the cap until it is lifted; rounds the
    inner drafter served leave it alone. In the loop the output stays plain greedy's, for
    --spec ngram and --draft-lookup, depth 1 and 2; without a lookup it is one line."""
    import json

    from turbospec.cli import main

    hist = [1, 5, 6, 9, 1, 2, 3, 4, 8, 8, 8, 4, 5, 6]  # "5 6" matched, continuation 9 1 2 3 4 8 8 8 ...
    h = np.zeros(4, np.float32)
    d = NGramDrafter(adapt=True)
    d.begin(None, [])

    def rnd(n_steps, toks=hist):
        return Round(0, toks[-1], len(toks) - 1, -1, h, n_steps, toks)

    assert d.propose(rnd(7), threading.Event()).tokens == [9, 1, 2, 3, 4, 8, 8]
    d.accept(2)  # lost from the third draft on: cap 3
    assert d.cap == 3 and d.propose(rnd(7), threading.Event()).tokens == [9, 1, 2]
    d.accept(3)  # all of them: 6
    assert d.cap == 6 and len(d.propose(rnd(7), threading.Event()).tokens) == 6
    d.accept(6)  # 12
    d.propose(rnd(7), threading.Event())
    d.accept(7)  # 24
    d.propose(rnd(7), threading.Event())
    d.accept(7)  # 48 > the largest block: lifted
    assert d.cap is None
    d.propose(rnd(7), threading.Event())
    d.accept(0)
    assert d.cap == 1 and d.propose(rnd(7), threading.Event()).tokens == [9]
    assert d.propose(rnd(7, [1, 2, 3, 4]), threading.Event()).tokens == []  # no match
    d.accept(0)  # a round lookup did not draft does not count
    assert d.cap == 1
    plain_d = NGramDrafter()
    plain_d.begin(None, [])
    plain_d.propose(rnd(7), threading.Event())
    plain_d.accept(0)
    assert plain_d.cap is None  # off by default
    # LookupFirst: the cap follows lookup's rounds only
    lf = LookupFirst(_Fixed([7, 7, 7]), n_min=2, adapt=True)
    lf.begin(None, [])
    assert lf.propose(rnd(5), threading.Event()).tokens == [9, 1, 2, 3, 4]
    lf.accept(1)
    assert lf.lookup.cap == 2
    assert lf.propose(rnd(5, [1, 6, 9, 3, 4, 5, 8, 6]), threading.Event()).tokens == [7, 7, 7][:5]
    lf.accept(0)  # the inner drafter's miss
    assert lf.lookup.cap == 2 and lf.propose(rnd(5), threading.Event()).tokens == [9, 1]
    # exact in the loop
    model, tok = target
    head, ids, cfg, plain, assistant = _loop_case(target, tmp_path)
    for b in (3, 6):
        for depth in (1, 2):
            for d in (NGramDrafter(adapt=True), LookupFirst(MTPDrafter(assistant, model), n_min=2, adapt=True)):
                try:
                    res = generate(model, tok, ids, cfg, drafter=d,
                                   spec=SpecConfig(block_size=b, pipeline_depth=depth))
                finally:
                    d.close()
                assert res.tokens == plain.tokens, (b, depth, d)
    base = ["run", "-m", str(tiny_gguf), "-p", PROMPT, "-n", "40", "--ignore-eos", "--backend", "numpy", "--json"]
    for extra in (["--spec", "ngram"], ["--spec", "mtp", "--mtp-head", str(head), "--draft-lookup", "2"]):
        assert main(base + extra + ["--lookup-adapt", "--draft-block-size", "6"]) == 0
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["tokens"] == plain.tokens
    assert main(base + ["--spec", "mtp", "--mtp-head", str(head), "--lookup-adapt"]) == 2
    assert "--lookup-adapt caps prompt lookup's rounds: use it with --spec ngram or with --draft-lookup N" in \
        capsys.readouterr().err


def test_step_accuracy_bench_matches_the_greedy_loop(target, tmp_path):
    """benchmarks/bench_assistant_steps.py: for every anchor, its chained row is exactly "the
    loop's drafts (Gemma4Assistant.draft, fed its own tokens) equal the text so far", and an
    anchor whose continuation IS the assistant's draft scores all steps right."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_assistant_steps", Path(__file__).resolve().parents[2] / "benchmarks" / "bench_assistant_steps.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    model, tok = target
    a = Gemma4Assistant.load(write_random(tmp_path / "a.gguf", model, tok.tokens, seed=11))
    a.validate(model, tok.tokens)
    rng = np.random.default_rng()
    S = 4
    prefix = tok.encode(PROMPT, add_bos=True)
    s0 = Session(model)
    _, h0 = model.forward(prefix, s0.cache, logits_rows=None)
    t0 = len(prefix) - 2
    own = a.draft(model, s0.cache, prefix[-1], h0[t0], t0, S)
    text = prefix + own + [int(x) for x in rng.integers(5, model.cfg.n_vocab, 8)]
    s = Session(model)
    _, H = model.forward(text, s.cache, logits_rows=None)
    right, chained = bench.step_accuracy(model, a, s.cache, text, H, 0, S)
    assert right.shape == chained.shape == (len(text) - S - 1, S)
    assert chained[t0].all() and right[t0].all()
    for t in range(len(chained)):
        d = a.draft(model, s.cache, text[t + 1], H[t], t, S)
        want = np.logical_and.accumulate([d[k] == text[t + 2 + k] for k in range(S)])
        np.testing.assert_array_equal(chained[t], want)
        assert right[t][0] == want[0]
