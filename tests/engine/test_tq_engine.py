"""End to end: a tiny model quantized to TQ4_1S / TQ3_1S through `turbospec quantize`, run with
`turbospec run --json` and `turbospec ppl`, and used as the `--spec draft` drafter of the original."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tinymodel import TinySpec, write_tiny_gguf

from turbospec.cli import main

PROMPT = "the cat is on the mat and the dog"
TEXT = " ".join(["the cat is on the mat.", "a dog and the cat.", "the mat is on the dog."] * 40)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("tqe")
    src = write_tiny_gguf(d / "tiny.gguf", TinySpec(), seed=3)
    out = {"orig": src}
    for name, argv in {
        "tq4": ["--type", "tq4_1s"],
        "tq3": ["--type", "tq3_1s"],
        "tq4_emb": ["--type", "tq4_1s", "--quantize-embedding"],
    }.items():
        out[name] = d / f"{name}.gguf"
        assert main(["quantize", str(src), str(out[name]), *argv]) == 0
    text = d / "text.txt"
    text.write_text(TEXT)
    out["text"] = text
    return out


def _json_line(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _run(capsys, model, *extra) -> dict:
    rc = main(["run", "-m", str(model), "-p", PROMPT, "-n", "24", "--ignore-eos", "--backend", "numpy",
               "-t", "1", "--json", *extra])
    assert rc == 0
    return _json_line(capsys)


@pytest.mark.parametrize("name", ["tq4", "tq3", "tq4_emb"])
def test_quantized_model_loads_as_tq_and_matches_dequantized_weights(files, name):
    """Every converted linear is a TQLinear (no float copy), and the engine's logits through them
    equal those of the same model with each TQ weight dequantized into a float32 Dense."""
    from turbospec.engine.linear import Dense
    from turbospec.engine.loader import load_model
    from turbospec.engine.quant.linear import TQLinear

    m = load_model(files[name], quiet=True, use_cache=False)
    lins = [(b, k) for b in m.blk for k in ("attn_qkv", "attn_output", "ffn_gate_up", "ffn_down")]
    assert all(isinstance(getattr(b, k), TQLinear) for b, k in lins)
    assert isinstance(m.output, TQLinear) == (name == "tq4_emb")
    ids = [2, 270, 280, 271, 275, 266, 277, 270, 283]
    got, _ = m.forward(ids, m.new_cache(), logits_rows="all")
    for b, k in lins:
        setattr(b, k, Dense(getattr(b, k).dequantize()))
    if isinstance(m.output, TQLinear):
        m.output = Dense(m.output.dequantize())
    want, _ = m.forward(ids, m.new_cache(), logits_rows="all")
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("name", ["tq4", "tq3", "tq4_emb"])
def test_run_json_end_to_end(files, name, capsys):
    d = _run(capsys, files[name])
    assert d["n_gen"] == 24 and len(d["tokens"]) == 24 and d["stop_reason"] == "length"
    assert all(0 <= t < TinySpec().n_vocab for t in d["tokens"])
    assert d["decode_tok_s"] > 0


def test_ppl_and_kl_divergence_end_to_end(files, tmp_path, capsys):
    base = tmp_path / "base.kld"
    common = ["-f", str(files["text"]), "-c", "64", "--chunks", "3", "--backend", "numpy", "-t", "1", "--json"]
    assert main(["ppl", "-m", str(files["orig"]), "--kl-divergence-base", str(base), *common]) == 0
    orig = _json_line(capsys)
    assert np.isfinite(orig["ppl"]) and orig["n_tokens"] == 3 * (64 - 1 - 32)
    res = {}
    for name in ("orig", "tq4", "tq3"):
        assert main(["ppl", "-m", str(files[name]), "--kl-divergence-base", str(base), "--kl-divergence",
                     *common]) == 0
        res[name] = _json_line(capsys)
    assert res["orig"]["ppl"] == pytest.approx(orig["ppl"], rel=1e-6)
    assert res["orig"]["kld_mean"] < 1e-5 and res["orig"]["top1_agreement"] == 1.0  # float16 base only
    for name in ("tq4", "tq3"):
        assert np.isfinite(res[name]["ppl"])
        assert 0 < res[name]["kld_mean"] < 0.5
        assert res[name]["ppl_base"] == pytest.approx(orig["ppl"], rel=1e-3)
    # 3 bits per weight lose more than 4: the larger divergence is TQ3's
    assert res["tq3"]["kld_mean"] > res["tq4"]["kld_mean"]


@pytest.mark.parametrize("draft", ["tq4", "tq3"])
def test_self_speculation_with_the_tq_copy_is_exact(files, draft, capsys):
    """Target = the original tiny model, drafter = its TQ copy: greedy output equals plain greedy,
    and the copy's drafts are mostly accepted (it is the same model, slightly perturbed)."""
    plain = _run(capsys, files["orig"])
    for b in ("2", "4"):
        d = _run(capsys, files["orig"], "--spec", "draft", "--model-draft", str(files[draft]),
                 "--draft-block-size", b)
        assert d["tokens"] == plain["tokens"], (draft, b)
        assert d["spec"] == "draft" and d["rounds"] > 0
        assert d["draft_acceptance_rate"] > 0.5, d["draft_acceptance_rate"]
        assert d["tau"] == pytest.approx(1 + d["n_accepted"] / d["rounds"])
