"""The device MTP drafter (engine/spec/mtp_device.py) in "emu" mode — the .cu kernels through the
host harness — against the NumPy assistant (engine/models/gemma4_assistant.py, engine/spec/mtp.py)
on the tiny target: the routed / dense head's greedy id for every scoring-row layout, the draft
tokens and the last step's h_inner of several rounds for an f16 and a turbo3 (+ K equalization)
cache, read-only use of the target's KV cells <= attn_pos, a whole greedy generate_spec on the
device model (token-identical to plain greedy, the same accepted counts as the NumPy drafter),
and `turbospec run --backend cupy --spec mtp` with the device model in emu mode.
The head, rounds and generate tests also run on CuPy where a GPU is present (skipped here); the
stream / event order is checked with recording stand-ins, the overlap itself needs a GPU."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from test_mtp import PROMPT, write_random

from turbospec.engine.generate import GenConfig, Session, generate
from turbospec.engine.kv.cache import KVConfig
from turbospec.engine.models.gemma4_assistant import Gemma4Assistant
from turbospec.engine.spec.base import Round
from turbospec.engine.spec.loop import SpecConfig
from turbospec.engine.spec.mtp import MTPDrafter
from turbospec.engine.spec.mtp_device import DeviceMTPDrafter
from turbospec.errors import UserError

# the assistant's matrices need rows that are a multiple of 32 for the matvec kernels
SIZES = {"n_embd": 64, "n_ff": 96}
EMB = {"own": {}, "ordered": {"use_ordered_embeddings": True}, "target": {"use_target_embeddings": True},
       "dense": {"n_centroids": 0, "centroid_top_k": 0}}


@pytest.fixture(scope="module")
def models(tiny_gguf):
    from turbospec.engine.backend import set_threads
    from turbospec.engine.cuda_model import load_device_model
    from turbospec.engine.loader import load_model, load_tokenizer

    set_threads(0)
    ref = load_model(tiny_gguf, storage="f32", quiet=True)
    return ref, load_device_model(tiny_gguf, "emu"), load_tokenizer(ref)


@pytest.fixture(scope="module", params=["emu", "cupy"])
def any_dev(request, models, tiny_gguf):
    """(NumPy target, device target, tokenizer) for the emu harness and, where CuPy has a GPU, the GPU."""
    if request.param == "emu":
        return models
    try:
        import cupy

        cupy.cuda.runtime.getDeviceCount()
    except Exception:
        pytest.skip("no CUDA GPU through CuPy here: the emu variant covers the same kernels on the CPU")
    from turbospec.engine.cuda_model import load_device_model

    return models[0], load_device_model(tiny_gguf, "cupy"), models[2]


def _host(a) -> np.ndarray:
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


def _pair(models, path):
    """(NumPy assistant, device drafter) for the same file."""
    ref, dev, tok = models
    a = Gemma4Assistant.load(path)
    a.validate(ref, tok.tokens)
    return a, DeviceMTPDrafter.load(path, dev, tok)


def _rel(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


@pytest.mark.parametrize("emb", list(EMB))
def test_head_equals_numpy_argmax(any_dev, tmp_path, emb):
    """DeviceAssistant.head (centroid logits -> top-k -> candidate ids -> gathered rows -> argmax
    with ids, or the dense head) gives Gemma4Assistant.argmax's id for random h_inner."""
    ref, dev, tok = any_dev
    a, d = _pair(any_dev, write_random(tmp_path / "a.gguf", ref, tok.tokens, seed=9, **SIZES, **EMB[emb]))
    da, xp = d.assistant, dev.runner.xp
    rng = np.random.default_rng()
    out = xp.full((1,), -7, xp.int32)
    for _ in range(12):
        h = rng.standard_normal(a.cfg.n_embd).astype(np.float32)
        da.head(xp.asarray(h), out)
        assert int(_host(out)[0]) == a.argmax(h, ref)


@pytest.mark.parametrize("kv,qtype", [(KVConfig(), "f32"), (KVConfig(type_k="turbo3", type_v="turbo3", equalize=0.5),
                                                            "q8_0")], ids=["f16-f32w", "turbo3eq-q8w"])
def test_rounds_equal_numpy_drafter(any_dev, tmp_path, kv, qtype):
    """Rounds at several attn_pos (later cells play rejected drafts): the device drafter's tokens
    are the NumPy MTPDrafter's over the NumPy target's cache, and the last step's h_inner agrees
    (assistant weights F32, or Q8_0 kept quantized on the device)."""
    ref, dev, tok = any_dev
    a, d = _pair(any_dev, write_random(tmp_path / "a.gguf", ref, tok.tokens, seed=4, qtype=qtype, **SIZES,
                                       **EMB["target"]))
    assert d.assistant.pre.wtype == qtype and d.assistant.blk[0].gu.wtype == qtype
    ids = tok.encode(PROMPT, add_bos=True)
    rs, ds = Session(ref, kv), Session(dev, kv)
    rs.prefill(ids)
    ds.prefill(ids)
    assert len(ids) > 2 * ref.cfg.window  # the sliding layer's window matters
    if kv.equalize:
        assert ds.cache.eq[a.src[0]] is not None and ds.cache.eq_set[a.src[0]]
    nd = MTPDrafter(a, ref)
    nd.begin(rs, ids)
    d.begin(ds, ids)
    for back, id_last in ((1, 300), (3, 281), (5, ids[-1])):
        ap = rs.n_past - back
        rnd = Round(0, id_last, ap, -1, rs.hidden[ap], 3, list(ids[: ap + 1]) + [id_last])
        exp = nd.propose(rnd, threading.Event()).tokens
        got = d.propose(rnd, threading.Event())
        assert got.tokens == exp, back
        assert got.extra["h_l2"] == pytest.approx(rnd.h_l2)
        tok_in, h = id_last, rs.hidden[ap]
        for k in range(3):
            h_inner, h = a.step(ref, rs.cache, tok_in, h, ap, k)
            tok_in = exp[k]
        assert _rel(_host(d.assistant.h), h_inner) < 1e-3, back
    # a long round: the buffers grow past their first size, and steps k >= window - 1 see no cell of
    # the sliding source layer (LayerKV.attend gives zeros there)
    ap = rs.n_past - 1
    rnd = Round(0, 300, ap, -1, rs.hidden[ap], ref.cfg.window + 2, [])
    assert d.propose(rnd, threading.Event()).tokens == a.draft(ref, rs.cache, 300, rs.hidden[ap], ap, rnd.n_steps)
    # cancelled before the first step: nothing drafted, nothing left running
    stop = threading.Event()
    stop.set()
    assert d.propose(rnd, stop).tokens == []
    d.close()


def test_p_min_on_the_device_cuts_like_the_host(any_dev, tmp_path):
    """--draft-p-min on the device: each step's draft probability (computed on the device,
    fetched with the ids) agrees with the NumPy assistant's, and the cut drafts are the NumPy
    MTPDrafter's for thresholds between the probabilities."""
    ref, dev, tok = any_dev
    a, d = _pair(any_dev, write_random(tmp_path / "a.gguf", ref, tok.tokens, seed=5, **SIZES, **EMB["target"]))
    ids = tok.encode(PROMPT, add_bos=True)
    rs, ds = Session(ref), Session(dev)
    rs.prefill(ids)
    ds.prefill(ids)
    nd = MTPDrafter(a, ref)
    nd.begin(rs, ids)
    d.begin(ds, ids)
    cut_mid = False
    for back, id_last in ((1, 300), (4, 281)):
        ap = rs.n_past - back
        rnd = Round(0, id_last, ap, -1, rs.hidden[ap], 5, list(ids[: ap + 1]) + [id_last])
        d.p_min = 1e-12
        full = d.propose(rnd, threading.Event()).tokens
        probs = _host(d.assistant.pk[:5]).astype(np.float64)
        tok_in, h, want = id_last, rs.hidden[ap], []
        for k in range(5):
            h_inner, h = a.step(ref, rs.cache, tok_in, h, ap, k)
            tok_in, p = a.pick(h_inner, ref, with_p=True)
            want.append(p)
        np.testing.assert_allclose(probs, want, rtol=1e-3)
        srt = np.sort(probs)
        for thr in (srt[:-1] + srt[1:]) / 2:  # midway between probabilities: no rounding decides
            nd.p_min = d.p_min = float(thr)
            got = d.propose(rnd, threading.Event()).tokens
            assert got == nd.propose(rnd, threading.Event()).tokens
            assert got == full[: len(got)]
            cut_mid |= 0 < len(got) < 5
    assert cut_mid
    d.close()


def test_unfused_gate_up_equals_fused(models, tmp_path):
    """ffn_gate and ffn_up of different types run as two matvecs: the same drafts and states."""
    from turbospec.engine.spec.mtp_device import DeviceAssistant, read_raw_tensors

    ref, dev, tok = models
    path = write_random(tmp_path / "a.gguf", ref, tok.tokens, seed=3, qtype="f16", **SIZES)
    a, d = _pair(models, path)
    raw = read_raw_tensors(path)
    for i in range(a.cfg.n_layer):  # the same values as F32 rows
        name = f"blk.{i}.ffn_up.weight"
        raw[name] = (np.asarray(raw[name][0]).view(np.float16).astype(np.float32).view(np.uint8), "f32")
    split = DeviceMTPDrafter(DeviceAssistant(a, raw, dev.runner))
    assert d.assistant.blk[0].gu is not None and split.assistant.blk[0].gu is None
    ids = tok.encode(PROMPT, add_bos=True)
    s = Session(dev, KVConfig())
    s.prefill(ids)
    rnd = Round(0, 300, s.n_past - 2, -1, s.hidden[-2], 3, [])
    toks = []
    for dr in (d, split):
        dr.begin(s, ids)
        toks.append(dr.propose(rnd, threading.Event()).tokens)
    assert toks[0] == toks[1]
    np.testing.assert_allclose(_host(split.assistant.h), _host(d.assistant.h), rtol=1e-5, atol=1e-5)


def test_draft_reads_only_cells_up_to_attn_pos(models, tmp_path):
    ref, dev, tok = models
    _, d = _pair(models, write_random(tmp_path / "a.gguf", ref, tok.tokens, seed=2, **SIZES))
    ids = tok.encode(PROMPT, add_bos=True)
    s = Session(dev, KVConfig(type_k="q8_0", type_v="turbo3"))
    s.prefill(ids)
    d.begin(s, ids)
    ap = s.n_past - 4  # the last 3 cells play rejected drafts, not yet truncated
    rnd = Round(0, 300, ap, -1, s.hidden[ap], 4, [])
    before = d.propose(rnd, threading.Event()).tokens
    h_before = np.array(d.assistant.h)
    rng = np.random.default_rng(1)
    for k, v in zip(s.cache.k, s.cache.v, strict=True):
        k[ap + 1:] = rng.integers(0, 255, k[ap + 1:].shape, dtype=np.uint8) & 0x3B
        v[ap + 1:] = rng.integers(0, 255, v[ap + 1:].shape, dtype=np.uint8) & 0x3B
    assert d.propose(rnd, threading.Event()).tokens == before
    np.testing.assert_array_equal(d.assistant.h, h_before)
    # the control: a cell <= attn_pos of a source layer does change the state
    src = d.assistant.src[0]
    s.cache.v[src][ap] = rng.integers(0, 255, s.cache.v[src][ap].shape, dtype=np.uint8) & 0x3B
    d.propose(rnd, threading.Event())
    assert not np.array_equal(d.assistant.h, h_before)


def test_generate_spec_on_device_equals_greedy(any_dev, tmp_path):
    """Greedy speculative decoding on the device model with the device drafter (pipeline depth 2):
    the tokens of plain greedy decoding, and round by round the NumPy drafter's acceptance."""
    ref, dev, tok = any_dev
    head = write_random(tmp_path / "a.gguf", ref, tok.tokens, seed=4, **SIZES, **EMB["target"])
    ids = tok.encode(PROMPT, add_bos=True)
    cfg = GenConfig(n_predict=12, ignore_eos=True, kv=KVConfig())
    plain = generate(dev, tok, ids, cfg)
    d = DeviceMTPDrafter.load(head, dev, tok)
    nd = MTPDrafter.load(head, ref, tok)
    spec = SpecConfig(block_size=4, pipeline_depth=2)
    try:
        res = generate(dev, tok, ids, cfg, drafter=d, spec=spec)
        nres = generate(ref, tok, ids, cfg, drafter=nd, spec=spec)
    finally:
        d.close()
        nd.close()
    assert res.tokens == plain.tokens == nres.tokens
    assert res.spec["lazy_rounds"] > 0  # depth 2: prepared on the worker thread and awaited
    assert res.spec["pair_counts"] == nres.spec["pair_counts"]


def test_make_drafter_picks_device_and_validates(models, tmp_path):
    import argparse

    from turbospec.engine.cmd_run import make_drafter

    ref, dev, tok = models
    ns = argparse.Namespace(spec="mtp", draft_block_size=3, draft_max=16, pipeline_depth=1,
                            mtp_head=str(write_random(tmp_path / "a.gguf", ref, tok.tokens, seed=1, **SIZES)))
    d, spec = make_drafter(ns, dev, tok, KVConfig(), 256)
    assert isinstance(d, DeviceMTPDrafter) and spec.pipeline_depth == 1
    assert type(make_drafter(ns, ref, tok, KVConfig(), 256)[0]) is MTPDrafter  # the NumPy model keeps its own
    ns.mtp_head = str(write_random(tmp_path / "b.gguf", ref, tok.tokens, seed=1, requires_target_arch="gemma4",
                                   **SIZES))
    with pytest.raises(UserError, match="built for target architecture 'gemma4'"):
        make_drafter(ns, dev, tok, KVConfig(), 256)
    ns.mtp_head = str(write_random(tmp_path / "c.gguf", ref, tok.tokens, seed=1))  # n_embd 48: rows not x32
    with pytest.raises(UserError, match="no CUDA matvec.*--backend numpy"):
        make_drafter(ns, dev, tok, KVConfig(), 256)


def test_cli_run_backend_cupy_spec_mtp(models, tiny_gguf, tmp_path, capsys, monkeypatch):
    """`turbospec run --backend cupy --spec mtp` is no longer refused: with the device model in emu
    mode standing in for the GPU, the output equals plain greedy and the trace has the draft lines."""
    import turbospec.engine.backend as backend
    import turbospec.engine.cuda_model as cm
    from turbospec.cli import main

    ref, dev, tok = models
    real_load = cm.load_device_model
    monkeypatch.setattr(backend, "choose_backend", lambda *a, **k: backend.BackendChoice("cupy", "emu", "test"))
    monkeypatch.setattr(cm, "load_device_model", lambda path, b="cupy", **k: real_load(path, "emu", **k))
    head = write_random(tmp_path / "a.gguf", ref, tok.tokens, seed=6, **SIZES, **EMB["target"])
    base = ["run", "-m", str(tiny_gguf), "-p", PROMPT, "-n", "12", "--ignore-eos", "--backend", "cupy", "--json"]
    assert main(base) == 0
    plain = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    tr = tmp_path / "t.ndjson"
    assert main(base + ["--spec", "mtp", "--mtp-head", str(head), "--trace", str(tr)]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert got["tokens"] == plain["tokens"] and got["backend"] == "cupy" and got["rounds"] > 0
    drafts = [json.loads(ln) for ln in tr.read_text().splitlines() if '"mtp_draft"' in ln]
    assert drafts and all(o["drafter"] == "mtp" and o["h_l2"] > 0 for o in drafts)
    bad = write_random(tmp_path / "b.gguf", ref, tok.tokens, seed=6, requires_target_arch="gemma4", **SIZES)
    assert main(base + ["--spec", "mtp", "--mtp-head", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "built for target architecture 'gemma4'" in err and "Traceback" not in err


def test_stream_protocol_with_a_recording_stream(models, tmp_path, monkeypatch):
    """The GPU path's ordering, with recording stand-ins for CuPy's stream and event (the arrays stay
    NumPy): every draft first makes its stream wait for an event recorded on the target's stream
    after the latest target forward (the verify), launches only after that, and synchronizes its
    stream before the target runs again. (The real overlap can only be seen on a GPU.)"""
    import contextlib
    from types import SimpleNamespace

    ref, dev, tok = models
    head = write_random(tmp_path / "a.gguf", ref, tok.tokens, seed=4, **SIZES, **EMB["target"])
    d = DeviceMTPDrafter.load(head, dev, tok)
    log: list[tuple] = []

    class Stream(contextlib.nullcontext):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def wait_event(self, ev):
            log.append(("wait", self.name, ev))

        def synchronize(self):
            log.append(("sync", self.name))

    class Event:
        def __init__(self, **_):
            pass

        def record(self, stream):
            log.append(("record", stream.name, self))

    d.gpu, d.stream = True, Stream("draft")
    d.xp = SimpleNamespace(cuda=SimpleNamespace(Event=Event))
    monkeypatch.setattr(dev.runner, "stream", Stream("target"), raising=False)
    monkeypatch.setattr(d, "_put", lambda dst, host: dst.__setitem__(Ellipsis, host))
    monkeypatch.setattr(d, "_fetch", lambda a: (log.append(("sync", "draft")), np.array(a))[1])
    real_step, real_forward = d.assistant.step, dev.runner.forward
    monkeypatch.setattr(d.assistant, "step", lambda *a, **k: (log.append(("step",)), real_step(*a, **k))[1])
    monkeypatch.setattr(dev.runner, "forward", lambda *a, **k: (log.append(("forward",)), real_forward(*a, **k))[1])
    ids = tok.encode(PROMPT, add_bos=True)
    try:
        res = generate(dev, tok, ids, GenConfig(n_predict=10, ignore_eos=True), drafter=d,
                       spec=SpecConfig(block_size=3, pipeline_depth=2))
    finally:
        d.close()
    assert res.spec["lazy_rounds"] > 0
    last_forward, recorded, drafting, waits = -1, {}, False, 0
    for i, e in enumerate(log):
        if e[0] == "forward":
            assert not drafting, "the target ran while a draft was in flight"
            last_forward = i
        elif e[0] == "record":
            assert e[1] == "target"
            recorded[id(e[2])] = i
        elif e[0] == "wait":
            assert e[1] == "draft" and recorded.get(id(e[2]), -1) > last_forward  # after the latest verify
            drafting, waits = True, waits + 1
        elif e[0] == "step":
            assert drafting
        elif e[0] == "sync":
            drafting = False
    assert waits == res.spec["rounds"] and not drafting
