"""Speculative greedy decoding on the real default model is token-identical to plain decoding
(several prompts, B = 2..6, both pipeline depths, an f16 and a q8_0-K / turbo3-V cache), and the
model drafting for itself is accepted everywhere (tau = B): verification (T = B rows) and plain
decoding (T = 1) agree on every argmax, near-ties included."""

import pytest

from turbospec.engine.generate import GenConfig, chat_prompt, generate
from turbospec.engine.kv.cache import KVConfig
from turbospec.engine.loader import load_model, load_tokenizer
from turbospec.engine.spec.draft_model import DraftModelDrafter
from turbospec.engine.spec.loop import SpecConfig
from turbospec.engine.spec.ngram import LookupFirst, NGramDrafter

pytestmark = pytest.mark.slow

PROMPTS = [
    "List the first five prime numbers and say why each is prime.",
    "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n",
    "The capital of France is",
]
N = 25  # 24 after the first token: divisible by 2, 3, 4 and 6


@pytest.fixture(scope="module")
def real(default_model_path, tmp_path_factory):
    import os

    from turbospec.engine.backend import set_threads

    set_threads(0)
    os.environ["TURBOSPEC_CACHE_DIR"] = os.environ.get("TURBOSPEC_TEST_CACHE") or str(tmp_path_factory.mktemp("w"))
    m = load_model(default_model_path, quiet=True)
    return m, load_tokenizer(m)


def gen(m, tok, ids, kv=None, drafter=None, spec=None):
    cfg = GenConfig(n_predict=N, ignore_eos=True, kv=kv or KVConfig())
    try:
        return generate(m, tok, ids, cfg, drafter=drafter, spec=spec)
    finally:
        if drafter is not None:
            drafter.close()


def prompt_ids(tok, i):
    text = PROMPTS[i]
    return tok.encode(chat_prompt(text) if i == 0 else text, add_bos=True, parse_special=True)


def test_ngram_greedy_identical_on_default_model(real):
    m, tok = real
    for i in range(len(PROMPTS)):
        ids = prompt_ids(tok, i)
        plain = gen(m, tok, ids).tokens
        for b in (2, 3, 4, 5, 6):
            depth = 2 if b % 2 else 1
            res = gen(m, tok, ids, None, NGramDrafter(), SpecConfig(block_size=b, pipeline_depth=depth))
            assert res.tokens == plain, (PROMPTS[i], b, depth, tok.decode(res.tokens), tok.decode(plain))


@pytest.mark.parametrize("type_k,type_v,blocks", [("q8_0", "turbo3", (2, 3, 4, 5, 6)), ("turbo3", "turbo3", (3, 5))])
def test_ngram_greedy_identical_quantized_cache(real, type_k, type_v, blocks):
    # a quantized cache turns last-bit differences between verification and plain decoding into
    # different codes and, at near-ties, different tokens; verification is bit-identical by
    # construction (token-by-token products and attention for batches <= 32)
    m, tok = real
    kv = KVConfig(type_k=type_k, type_v=type_v)
    for i in range(len(PROMPTS) if type_k == "q8_0" else 1):
        ids = prompt_ids(tok, i)
        plain = gen(m, tok, ids, kv).tokens
        for b in blocks:
            res = gen(m, tok, ids, kv, NGramDrafter(), SpecConfig(block_size=b, pipeline_depth=2 if b % 2 else 1))
            assert res.tokens == plain, (type_k, type_v, PROMPTS[i], b)


def test_self_drafting_is_always_accepted(real):
    m, tok = real
    ids = tok.encode(PROMPTS[2], add_bos=True)
    plain = gen(m, tok, ids).tokens
    res = gen(m, tok, ids, drafter=DraftModelDrafter(m), spec=SpecConfig(block_size=4, pipeline_depth=2))
    assert res.tokens == plain
    assert res.spec["draft_acceptance_rate"] == 1.0 and res.spec["tau"] == 4.0


def test_shipped_mtp_head_greedy_identical_and_accepted(real):
    """The shipped assistant: strict validation against the default model passes, greedy output is
    token-identical to plain decoding for B = 2..6 (f16 and a q8_0-K / turbo3-V cache), and it
    really drafts (a broken or untrained head is accepted ~0% of the time)."""
    from turbospec.engine.spec.mtp import MTPDrafter, shipped_head_path

    if shipped_head_path() is None:
        pytest.fail("the MTP assistant (turbospec/engine/data/mtp-gemma3-270m.gguf) is not in this build")
    m, tok = real
    assistant = MTPDrafter.load(None, m, tok).assistant
    acc = dr = 0
    for kv, blocks in ((None, (2, 3, 4, 5, 6)), (KVConfig(type_k="q8_0", type_v="turbo3"), (3, 5))):
        for i in range(len(PROMPTS)):
            ids = prompt_ids(tok, i)
            plain = gen(m, tok, ids, kv).tokens
            for b in blocks:
                res = gen(m, tok, ids, kv, MTPDrafter(assistant, m), SpecConfig(block_size=b, pipeline_depth=2 - b % 2))
                assert res.tokens == plain, (PROMPTS[i], b, kv)
                acc += res.spec["n_accepted"]
                dr += res.spec["n_drafted"]
            if kv is None:  # --draft-lookup 3: prompt lookup first, the assistant otherwise
                for b in (3, 6):
                    res = gen(m, tok, ids, kv, LookupFirst(MTPDrafter(assistant, m), n_min=3), SpecConfig(block_size=b))
                    assert res.tokens == plain, (PROMPTS[i], b, "lookup")
    # the third sitting's head: 19.3% here (B up to 6), the fourth's more; an untrained head ~1.5%
    assert dr > 0 and acc / dr > 0.15, acc / dr
