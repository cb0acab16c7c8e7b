"""The CUDA device model (engine/cuda_model.py) run through the host harness (NumPy arrays, the
very .cu kernels compiled with g++) against the NumPy model (engine/models/gemma3.py) on the tiny
random Gemma 3 (head_dim 32, zero-padded to the kernels' 256; 2 KV heads; window 8): logits of a
prefill and of each decode step, and the greedy tokens, for several cache types. Also the
kernels this model added (get_rows, the device-position decode path of kv_append/attn_decode)
against their references."""

from __future__ import annotations

import numpy as np
import pytest

from turbospec.cuda import loader
from turbospec.cuda import reference as R

PROMPT = [2, 270, 300, 281, 5, 290]  # 6 tokens; 6 + 8 steps run past the tiny window of 8
STEPS = 8


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def models(tiny_gguf):
    from turbospec.engine.cuda_model import load_device_model
    from turbospec.engine.loader import load_model

    return load_model(tiny_gguf, storage="f32", quiet=True), load_device_model(tiny_gguf, "emu")


# -- kernels the device model added ------------------------------------------------------------
@pytest.mark.parametrize("wtype", loader.WEIGHT_KERNEL_TYPES)
def test_get_rows_matches_dequant(wtype):
    rng = np.random.default_rng()
    rows, k = 9, 512 if wtype in ("q4_k", "q6_k") else 96
    w = R.random_weight(rng, wtype, rows, k)
    ids = rng.integers(0, rows, 6).astype(np.int32)
    out = np.full((6, k), np.nan, np.float32)  # poisoned: every element must be written
    loader.get_rows(w, wtype, ids, k, 1.5, out=out)
    exp = R.dequant_rows(w, wtype, rows, k)[ids] * 1.5
    np.testing.assert_allclose(out, exp, rtol=1e-5, atol=1e-6 * np.abs(exp).max())


@pytest.mark.parametrize("kt,vt,window", [("q8_0", "turbo3", 5), ("turbo4", "f16", 0)])
def test_device_position_path_equals_host_ints(kt, vt, window):
    """kv_append(pos_dev) and attn_decode(end_dev, fixed n_split, work buffers) — what a CUDA
    graph replays — give the bytes and outputs of the host-int path."""
    rng = np.random.default_rng()
    n_ctx, pos, d = 24, 13, 256
    kc = np.zeros((n_ctx, 1, R.kv_row_bytes(kt, d)), np.uint8)
    vc = np.zeros((n_ctx, 1, R.kv_row_bytes(vt, d)), np.uint8)
    kc[:pos] = R.kv_encode(rng.standard_normal((pos, d)).astype(np.float32), kt).reshape(pos, 1, -1)
    vc[:pos] = R.kv_encode(rng.standard_normal((pos, d)).astype(np.float32), vt).reshape(pos, 1, -1)
    k1, v1 = (rng.standard_normal((1, 1, d)).astype(np.float32) for _ in range(2))
    q = rng.standard_normal((4, d)).astype(np.float32)
    kc2, vc2 = kc.copy(), vc.copy()
    loader.kv_append(k1, kc, kt, pos)
    loader.kv_append(v1, vc, vt, pos)
    exp = loader.attn_decode(q, kc, vc, kt, vt, 0, pos + 1, 0.0625, window=window)
    io = np.array([pos, pos + 1], np.int32)
    loader.kv_append(k1, kc2, kt, 0, pos_dev=io[0:1])  # the host pos0 is ignored
    loader.kv_append(v1, vc2, vt, 0, pos_dev=io[0:1])
    assert np.array_equal(kc, kc2) and np.array_equal(vc, vc2)
    work = (np.full(8 * 4 * 256, np.nan, np.float32), np.full(8 * 4 * 2, np.nan, np.float32))
    for n_split in (1, 4, 8):  # 8 splits over 14 cells: some splits are empty
        got = loader.attn_decode(q, kc2, vc2, kt, vt, 0, 1, 0.0625, n_split=n_split, window=window,
                                 end_dev=io[1:2], work=work)
        np.testing.assert_allclose(got, exp, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(exp, R.attn_decode(q, kc, vc, kt, vt, 1, max(0, pos + 1 - window) if window else 0,
                                                  pos + 1, 0.0625), rtol=2e-4, atol=2e-5)


def test_split_bucket():
    from turbospec.engine.cuda_model import split_bucket

    assert [split_bucket(n) for n in (1, 128, 129, 512, 513, 10**6)] == [1, 1, 2, 4, 8, 512]


# -- the model -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kt,vt", [("f16", "f16"), ("q8_0", "q8_0"), ("turbo3", "turbo3")])
def test_device_model_equals_numpy_model(models, kt, vt):
    from turbospec.engine.kv.cache import KVConfig

    ref, dev = models
    kv = KVConfig(type_k=kt, type_v=vt)
    rc, dc = ref.new_cache(kv), dev.new_cache(kv)
    exp, exp_h = ref.forward(PROMPT, rc, logits_rows="all")
    got, got_h = dev.forward(PROMPT, dc, logits_rows="all")
    assert got.shape == exp.shape and got_h.shape == exp_h.shape
    assert _rel(got, exp) < 1e-3 and _rel(got_h, exp_h) < 1e-3
    tok = int(np.argmax(exp[-1]))
    for step in range(STEPS):
        exp, _ = ref.forward([tok], rc, logits_rows="all")
        got, _ = dev.forward([tok], dc, logits_rows="all")
        assert _rel(got, exp) < 1e-3, (step, _rel(got, exp))
        nxt = int(np.argmax(exp[-1]))
        assert int(dev.runner.dec.next_id[0]) == int(np.argmax(got[-1])) == nxt, step  # the on-device argmax
        tok = nxt
    assert dc.n_past == rc.n_past == len(PROMPT) + STEPS


@pytest.mark.parametrize("kt", ["q8_0", "turbo3"])
def test_k_equalization_equals_numpy_cache(models, kt):
    """--kv-equalize: scales from the first forward's first 512 tokens of K
    (engine/kv/equalize.compute_scales), K * s stored, Q / s scored — as engine/kv/cache.py;
    recalibrated after clear()."""
    from turbospec.engine.kv.cache import KVConfig

    ref, dev = models
    kv = KVConfig(type_k=kt, type_v="q8_0", equalize=0.5, layer_types={0: ("f16", "f16")})
    rc, dc = ref.new_cache(kv), dev.new_cache(kv)
    assert dc.eq[0] is None and dc.eq[1] is not None
    # prompts over 32 tokens: engine/kv/cache.py attends batches of <= 32 token by token (and would
    # calibrate on the first token alone); the second context gets its own scales
    for prompt in ([2, *range(263, 302)], [2, *range(300, 339)]):
        exp, _ = ref.forward(prompt, rc, logits_rows="all")
        got, _ = dev.forward(prompt, dc, logits_rows="all")
        assert _rel(got, exp) < 1e-3
        for t in (300, 270):
            exp, _ = ref.forward([t], rc)
            got, _ = dev.forward([t], dc)
            assert _rel(got, exp) < 1e-3
        s = np.array(dc.eq[1][:32])
        assert not np.allclose(s, 1) and np.allclose(s, rc.layers[1].eq_scale, rtol=1e-5)
        rc.clear()
        dc.clear()
        assert dc.needs_calibration


def test_greedy_next_rollback_and_generate(models):
    """greedy_next returns only ids (prefill and decode), truncate() rolls back like the NumPy
    cache, and generate() runs unchanged on the device model."""
    from turbospec.engine.generate import GenConfig, generate
    from turbospec.engine.kv.cache import KVConfig
    from turbospec.engine.loader import load_tokenizer

    ref, dev = models
    kv = KVConfig(type_k="q8_0", type_v="turbo3")
    rc, dc = ref.new_cache(kv), dev.new_cache(kv)
    exp_ids, got_ids = [], []
    logits, _ = ref.forward(PROMPT, rc)
    tok = dev.greedy_next(PROMPT, dc)
    for _ in range(4):
        exp_ids.append(int(np.argmax(logits[-1])))
        got_ids.append(tok)
        logits, _ = ref.forward([exp_ids[-1]], rc)
        tok = dev.greedy_next([got_ids[-1]], dc)
    assert got_ids == exp_ids
    # roll back two positions and redo them: the same logits as the first time
    before, _ = dev.forward([7], dc, logits_rows="all")
    dc.truncate(dc.n_past - 2)
    dev.forward([exp_ids[-1]], dc, logits_rows=None)
    again, _ = dev.forward([7], dc, logits_rows="all")
    np.testing.assert_allclose(again, before, rtol=0, atol=0)
    assert dc.nbytes == dc.n_past * dc.bytes_per_token
    dc.clear()
    assert dc.n_past == 0

    tok_ = load_tokenizer(ref)
    cfg = GenConfig(n_predict=4, kv=KVConfig(), ignore_eos=True)
    exp = generate(ref, tok_, PROMPT, cfg).tokens
    got = generate(dev, tok_, PROMPT, cfg).tokens
    assert got == exp


def test_cache_grows_and_unknown_types_fail(models):
    from turbospec.engine.kv.cache import KVConfig
    from turbospec.errors import UserError

    ref, dev = models
    kv = KVConfig(type_k="turbo2", type_v="q4_0", layer_types={-1: ("f16", "turbo4lm")})
    dc = dev.new_cache(kv)
    assert dc.types[-1] == ("f16", "turbo4lm") and dc.types[0] == ("turbo2", "q4_0")
    dc = dev.runner.new_cache(dc.types, cap=4)  # start tiny: the prompt forces doublings that keep the cells
    rc = ref.new_cache(kv)
    dev.forward(PROMPT[:3], dc, logits_rows=None)
    got, _ = dev.forward(PROMPT[3:], dc)
    exp, _ = ref.forward(PROMPT, rc)
    assert dc.cap == 8 and _rel(got, exp) < 1e-3
    with pytest.raises(UserError, match="outlier"):
        dev.new_cache(KVConfig(type_k="q8_0", type_v="q8_0", k_outliers=4))
    with pytest.raises(UserError, match="outside the vocabulary"):
        dev.forward([10**6], dev.new_cache(KVConfig()))


def test_decode_step_replays_like_a_cuda_graph(tmp_path, monkeypatch):
    """What a CUDA graph does — replay the first step's launches with their arguments frozen,
    only the device array [token, position, position + 1] rewritten — gives, step after step,
    the logits of running every step afresh: nothing position-dependent is baked into the step.
    head_dim 256 (no pad copies outside the kernels), so the launches are the whole step."""
    from tinymodel import TinySpec, write_tiny_gguf

    from turbospec.engine.cuda_model import load_device_model
    from turbospec.engine.kv.cache import KVConfig
    from turbospec.engine.loader import load_model

    spec = TinySpec(n_layer=2, n_embd=64, n_head=2, n_head_kv=1, head_dim=256, n_ff=64, n_vocab=300, window=4,
                    period=2)
    path = write_tiny_gguf(tmp_path / "hd256.gguf", spec)
    dev, ref = load_device_model(path, "emu"), load_model(path, storage="f32", quiet=True)
    r, kv = dev.runner, KVConfig(type_k="turbo3", type_v="q8_0")
    prompt, seq = [2, 270, 281], [290, 275, 299, 264, 280, 271]  # positions 3..8: past the window of 4
    c1, rc = dev.new_cache(kv), ref.new_cache(kv)
    dev.forward(prompt, c1, logits_rows=None)
    ref.forward(prompt, rc, logits_rows=None)
    fresh = []
    for t in seq:
        fresh.append(dev.forward([t], c1, logits_rows="all")[0][0])
        assert _rel(fresh[-1], ref.forward([t], rc, logits_rows="all")[0][0]) < 1e-3
    c2 = dev.new_cache(kv)
    dev.forward(prompt, c2, logits_rows=None)
    recorded, real = [], loader.launch

    def record(*a, **k):
        recorded.append((a, k))
        real(*a, **k)

    monkeypatch.setattr(loader, "launch", record)
    first = dev.forward([seq[0]], c2, logits_rows="all")[0][0]
    monkeypatch.setattr(loader, "launch", real)
    np.testing.assert_array_equal(first, fresh[0])
    for j, t in enumerate(seq[1:], 1):
        pos = c2.n_past
        r.dec.io[:] = [t, pos, pos + 1]
        for a, k in recorded:
            real(*a, **k)
        c2.n_past = pos + 1
        np.testing.assert_array_equal(r.dec.logits, fresh[j])
        assert int(r.dec.next_id[0]) == int(np.argmax(fresh[j]))


# -- the CuPy branch (streams, uploads, graph capture) over a stand-in CuPy ------------------------
class _DevArray(np.ndarray):
    """A NumPy array with CuPy's host-transfer methods (the kernels still run in the harness)."""

    def set(self, host, stream=None):
        self[...] = host

    def get(self, stream=None):
        return np.array(self)


class _FakeGraph:
    def __init__(self, launches):
        self.launches, self.replays = launches, 0

    def launch(self, stream=None):
        self.replays += 1
        for a, k in self.launches:
            _REAL_LAUNCH(*a, **k)


_REAL_LAUNCH = loader.launch
_CAPTURING: list = []


class _FakeStream:
    def __init__(self, non_blocking=False):
        self.rec = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def synchronize(self):
        assert self.rec is None, "a capturing stream cannot synchronize"

    def begin_capture(self):
        self.rec = []
        _CAPTURING.append(self.rec)

    def end_capture(self):
        rec, self.rec = self.rec, None
        _CAPTURING.clear()
        return _FakeGraph(rec)


class _FakeCuda:
    Stream = _FakeStream

    class MemoryPool:
        malloc = None

    @staticmethod
    def using_allocator(malloc):
        import contextlib

        return contextlib.nullcontext()


class _FakeCupy:
    """Stands in for the cupy module: array constructors give _DevArray, kernels run in the harness,
    and a capturing stream records launches instead of running them (as CUDA stream capture does)."""

    __name__ = "cupy"
    cuda = _FakeCuda

    def __getattr__(self, name):
        f = getattr(np, name)
        if not callable(f) or isinstance(f, type):
            return f

        def wrapped(*a, **k):
            r = f(*a, **k)
            return r.view(_DevArray) if isinstance(r, np.ndarray) and not isinstance(r, _DevArray) else r

        return wrapped


def _capturing_launch(*a, **k):
    if _CAPTURING:
        _CAPTURING[-1].append((a, k))
        return
    _REAL_LAUNCH(*a, **k)


def test_cupy_branch_captures_once_and_replays(tmp_path, monkeypatch):
    """The CuPy code path of the runner — its stream, uploads, host copies, the capture of the decode
    step and the replays at later positions, recapture after the cache grows — over a stand-in CuPy
    whose 'graphs' replay the recorded launches: greedy ids and logits equal the harness runner's."""
    from tinymodel import TinySpec, write_tiny_gguf

    from turbospec.engine.cuda_model import DeviceRunner, gguf_tensors, load_device_model
    from turbospec.engine.gguf import GGUFFile

    spec = TinySpec(n_layer=2, n_embd=64, n_head=2, n_head_kv=1, head_dim=256, n_ff=64, n_vocab=300, window=4,
                    period=2)
    path = write_tiny_gguf(tmp_path / "hd256.gguf", spec)
    emu = load_device_model(path, "emu")
    g = GGUFFile.open(path)
    fake = _FakeCupy()
    monkeypatch.setattr(loader, "launch", _capturing_launch)
    monkeypatch.setattr(loader, "_xp", lambda a: fake if isinstance(a, _DevArray) else np)  # loader-made arrays
    gpu = DeviceRunner(emu.cfg, gguf_tensors(g), fake)
    assert gpu.gpu and gpu.use_graph
    types = [("turbo3", "q4_0")] * 2
    ce, cg = emu.runner.new_cache(types), gpu.new_cache(types, cap=5)
    prompt = [2, 270, 281]
    assert gpu.greedy_next(prompt, cg) == emu.runner.greedy_next(prompt, ce)
    tok = emu.runner.greedy_next([280], ce)
    assert gpu.greedy_next([280], cg) == tok  # captured here (run eagerly first)
    graph = cg.graphs[(1, 1)][0]
    for _ in range(4):  # position 5 outgrows the 5 cells: the cache doubles and drops its graphs
        exp, _ = emu.runner.forward([tok], ce, logits_rows="all")
        got, _ = gpu.forward([tok], cg, logits_rows="all")
        np.testing.assert_array_equal(got, exp)
        tok = int(np.argmax(exp[-1]))
    assert cg.cap == 10 and graph.replays == 1 and cg.graphs[(1, 1)][0] is not graph
    assert cg.graphs[(1, 1)][0].replays == 2
