"""Weight averaging of assistants: the written file holds sum_i w_i x file_i (checked against a
plain per-element loop on fresh random files), keeps the shared token_ordering, records the
inputs' data once, and refuses files that cannot be averaged with one line each."""

from __future__ import annotations

import math
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest

from turbospec.engine.assistant_average import average_assistants
from turbospec.engine.gguf import GGUFFile
from turbospec.engine.loader import load_model, load_tokenizer
from turbospec.engine.models.gemma4_assistant import (
    AssistantConfig,
    Gemma4Assistant,
    expected_shapes,
    write_assistant_gguf,
)
from turbospec.errors import UserError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def target(tiny_gguf):
    m = load_model(tiny_gguf, storage="f32", quiet=True)
    return m, load_tokenizer(m)


def _cfg(target, n_ff=80) -> AssistantConfig:
    c = target[0].cfg
    return AssistantConfig(
        n_layer=2, n_embd=64, n_ff=n_ff, n_head=2 * c.n_head_kv, head_dim=c.head_dim, n_vocab=c.n_vocab,
        n_embd_backbone=c.n_embd, eps=c.eps, rope_base=c.rope_base, rope_base_swa=c.rope_base_swa,
        window=c.window, sliding=[True, False], n_centroids=8, centroid_top_k=3, requires_target_arch="gemma3")


def _write(path, target, seed, order, shards, tokens_rec, steps, n_ff=80, qtype="f32"):
    cfg = _cfg(target, n_ff)
    rng = np.random.default_rng(seed)
    t = {n: (rng.standard_normal(s) / math.sqrt(s[-1])).astype(np.float32) for n, s in expected_shapes(cfg).items()}
    extra = {"turbospec.train.target_tokens": tokens_rec, "turbospec.train.steps": steps}
    if shards:
        extra["turbospec.train.shards"] = shards
    write_assistant_gguf(path, cfg, t, order, target[1].tokens, qtype=qtype, extra_keys=extra)
    return t


def test_average_is_the_weighted_sum_and_keeps_the_record(target, tmp_path):
    n_vocab = target[0].cfg.n_vocab
    order = np.random.default_rng(1).permutation(n_vocab).astype(np.int32)
    seed = int(np.random.default_rng().integers(1 << 30))  # fresh inputs each run
    ta = _write(tmp_path / "a.gguf", target, seed, order, ["s0:n100", "s1:n50"], 1150, 300)
    tb = _write(tmp_path / "b.gguf", target, seed + 1, order, ["s0:n100", "s1:n50", "s2:n70"], 1220, 500)
    w = [0.3, 0.7]
    out = average_assistants([tmp_path / "a.gguf", tmp_path / "b.gguf"], w, tmp_path / "avg.gguf", qtype="f32")
    m = Gemma4Assistant.load(out)
    np.testing.assert_array_equal(m.token_ordering, order)
    g = GGUFFile.open(out)
    try:
        for name, shape in expected_shapes(m.cfg).items():
            got = np.asarray(g.raw(name)).view(np.float32).reshape(shape)
            ref = np.empty(shape, np.float32)
            fa, fb, fr = ta[name].ravel(), tb[name].ravel(), ref.reshape(-1)
            for i in range(0, fa.size, max(1, fa.size // 257)):  # a plain loop over a spread of elements
                fr[i] = w[0] * float(fa[i]) + w[1] * float(fb[i])
            idx = np.arange(0, fa.size, max(1, fa.size // 257))
            np.testing.assert_allclose(got.ravel()[idx], fr[idx], rtol=1e-6, atol=1e-7)
        assert sorted(g.get("turbospec.train.shards")) == ["s0:n100", "s1:n50", "s2:n70"]
        # 1000 legacy tokens (recorded beyond the shard ids by both) once + 220 in the shards
        assert int(g.get("turbospec.train.target_tokens")) == 1220
        assert int(g.get("turbospec.train.steps")) == 500
        assert list(g.get("turbospec.train.averaged_from")) == ["a.gguf:0.3000", "b.gguf:0.7000"]
    finally:
        g.close()
    # equal weights by default, q8_0 matrices: within q8_0 rounding of the mean
    out2 = average_assistants([tmp_path / "a.gguf", tmp_path / "b.gguf"], None, tmp_path / "avg8.gguf")
    m2 = Gemma4Assistant.load(out2)
    mean = 0.5 * (ta["mtp.pre_projection.weight"] + tb["mtp.pre_projection.weight"])
    err = np.abs(m2.pre_projection - mean).max()
    assert 0 < err <= np.abs(mean).max() / 127 * 0.51 + 1e-7


def test_average_refuses_with_one_line(target, tmp_path, capsys, monkeypatch):
    n_vocab = target[0].cfg.n_vocab
    order = np.random.default_rng(1).permutation(n_vocab).astype(np.int32)
    _write(tmp_path / "a.gguf", target, 1, order, [], 0, 0)
    _write(tmp_path / "b.gguf", target, 2, order[::-1].copy(), [], 0, 0)
    _write(tmp_path / "c.gguf", target, 3, order, [], 0, 0, n_ff=96)
    a, b, c = (str(tmp_path / f"{x}.gguf") for x in "abc")
    cases = [([a], None, "at least two"), ([a, b], None, "token_ordering"), ([a, c], None, "shape"),
             ([a, a], [1.0], "one --weights value per file"), ([a, a], [1.0, -1.0], "positive"),
             ([a, str(tmp_path / "missing.gguf")], None, "not found")]
    for files, w, needle in cases:
        with pytest.raises(UserError) as e:
            average_assistants(files, w, tmp_path / "o.gguf")
        assert needle in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "o.gguf").exists()
    # the script: exit 2 and one line on stderr
    monkeypatch.setattr(sys, "argv", ["average_assistants.py", a, b, "-o", str(tmp_path / "o.gguf")])
    with pytest.raises(SystemExit) as ex:
        runpy.run_path(str(ROOT / "scripts" / "average_assistants.py"), run_name="__main__")
    assert ex.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: average:") and "token_ordering" in err and "\n" not in err
