"""Speculative decoding on tiny models: exactness, drafters, pipeline, skip-streak, trace, CLI.

The tiny GGUF's tied head makes it echo its input token (greedy output is one repeated token),
so these tests give the loaded model a random untied head (``Dense``) — greedy output then
wanders through the vocabulary — and the "draft model" a perturbed copy of that head, which
agrees with the target often but not always.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from turbospec.engine.generate import GenConfig, generate
from turbospec.engine.kv.cache import KVConfig
from turbospec.engine.linear import Dense
from turbospec.engine.loader import load_model, load_tokenizer
from turbospec.engine.sampling import SamplingConfig
from turbospec.engine.spec.base import Drafter, Proposal, Round, SkipStreak
from turbospec.engine.spec.draft_model import DraftModelDrafter, check_vocab
from turbospec.engine.spec.loop import SpecConfig, pipeline_depth_default, skip_streak_from_env
from turbospec.engine.spec.ngram import NGramDrafter, lookup_reference
from turbospec.errors import UserError

PROMPT = "the cat is on the mat and the dog is on the mat"


def head(seed: int, n_vocab: int, n_embd: int, base: np.ndarray | None = None, noise: float = 0.0) -> Dense:
    rng = np.random.default_rng(seed)
    if base is None:
        return Dense((rng.standard_normal((n_vocab, n_embd)) * 0.5).astype(np.float32))
    return Dense((base + rng.standard_normal(base.shape) * noise).astype(np.float32))


@pytest.fixture(scope="module")
def models(tiny_gguf):
    from turbospec.engine.backend import set_threads

    set_threads(0)  # as the CLI does: single-threaded BLAS inside the engine's own worker pool
    target = load_model(tiny_gguf, storage="f32", quiet=True)
    c = target.cfg
    target.output = head(123, c.n_vocab, c.n_embd)
    near = load_model(tiny_gguf, storage="f32", quiet=True)
    near.output = head(7, c.n_vocab, c.n_embd, target.output.w, 0.15)
    tok = load_tokenizer(target)
    return target, near, tok


def run(model, tok, drafter=None, spec=None, n=61, kv=None, sampling=None, trace=None, should_stop=None):
    cfg = GenConfig(n_predict=n, ignore_eos=True, kv=kv or KVConfig(), sampling=sampling or SamplingConfig())
    ids = tok.encode(PROMPT, add_bos=True)
    try:
        return generate(model, tok, ids, cfg, drafter=drafter, spec=spec, trace=trace, should_stop=should_stop)
    finally:
        if drafter is not None:
            drafter.close()


# -- drafters ---------------------------------------------------------------------------------


def test_ngram_index_matches_reference_scan():
    rng = np.random.default_rng()
    for _ in range(20):
        toks = rng.integers(0, 6, 80).tolist()  # small alphabet: many repeats
        d = NGramDrafter(n_max=3)
        d.begin(None, toks[:10])
        for L in range(2, len(toks) + 1):
            n_steps = int(rng.integers(1, 8))
            rnd = Round(0, toks[L - 1], L - 2, -1, np.zeros(4, np.float32), n_steps, toks[:L])
            got = d.propose(rnd, threading.Event()).tokens
            assert got == lookup_reference(toks[:L], n_steps, 3, 1)
    # periodic continuation past the end of the history; longest suffix first
    assert lookup_reference([5, 1, 2, 1, 2], 5) == [1, 2, 1, 2, 1]
    assert lookup_reference([1, 2, 9, 7, 2, 3, 1, 2], 2) == [9, 7]
    assert lookup_reference([4, 5, 6], 3) == []


def test_draft_model_vocabulary_check():
    a = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "x", "y"]
    check_vocab(a, a[:5] + ["x", "y"], "d.gguf")
    check_vocab(a, ["p", "q", "r", "s", "t", "x", "y"], "d.gguf")  # ids < 5 may differ
    with pytest.raises(UserError, match="vocabulary of 6 tokens, the target has 7"):
        check_vocab(a, a[:6], "d.gguf")
    with pytest.raises(UserError, match="token 6 is 'z'"):
        check_vocab(a, a[:6] + ["z"], "d.gguf")


# -- exactness (greedy) ------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("block", [2, 3, 4, 5, 6])
def test_greedy_identical_to_plain(models, block, depth):
    target, near, tok = models
    plain = run(target, tok).tokens
    for drafter in (NGramDrafter(), DraftModelDrafter(near), DraftModelDrafter(target)):
        spec = SpecConfig(block_size=block, pipeline_depth=depth)
        res = run(target, tok, drafter, spec)
        assert res.tokens == plain, (drafter.name, block, depth)
        m = res.spec
        if isinstance(drafter, DraftModelDrafter) and drafter.model is target:
            # the target drafting for itself: every draft accepted, tau = B (61 = 1 + 60, 60 % B == 0)
            assert m["draft_acceptance_rate"] == 1.0 and m["tau"] == block
            assert m["per_position"] == [1.0] * (block - 1)
            assert m["lazy_rounds"] == (m["rounds"] - 1 if depth == 2 else 0)
        assert (m["lazy_rounds"] > 0) == (depth == 2)
    # the perturbed draft model is a real test: it is sometimes rejected
    res = run(target, tok, DraftModelDrafter(near), SpecConfig(block_size=4))
    assert 0.0 < res.spec["draft_acceptance_rate"] < 1.0


def test_draft_model_p_min_cuts_and_stays_exact(models):
    """--draft-p-min with a draft model: greedy output unchanged, fewer drafts, and every round's
    drafts end at the first one the draft model gives probability < p_min."""
    from turbospec.engine.sampling import top_probability

    target, near, tok = models
    plain = run(target, tok).tokens
    full = run(target, tok, DraftModelDrafter(near), SpecConfig(block_size=5))
    d = DraftModelDrafter(near)
    d.p_min = 0.6
    res = run(target, tok, d, SpecConfig(block_size=5))
    assert res.tokens == plain == full.tokens
    assert 0 < res.spec["n_drafted"] < full.spec["n_drafted"]
    # one round by hand: the drafts are the p_min = 0 drafts cut before the first low probability
    from turbospec.engine.generate import Session

    ids = tok.encode(PROMPT, add_bos=True)
    s = Session(near)
    # the drafter's own numerical path: its first forward takes the whole history at once (a
    # prefill of ids[:-1] then [ids[-1]] alone rounds differently, and the cut sits 1e-9 above a
    # probability)
    feed, probs, toks = list(ids), [], []
    for _ in range(4):
        logits, _ = near.forward(feed, s.cache, logits_rows="last")
        toks.append(int(np.argmax(logits[-1])))
        probs.append(top_probability(logits[-1]))
        feed = [toks[-1]]
    ts = Session(target)
    ts.prefill(ids[:-1])
    for thr in sorted(probs):
        d = DraftModelDrafter(near)
        d.p_min = float(thr) + 1e-9
        d.begin(ts, ids[:-1])
        rnd = Round(0, ids[-1], ts.n_past - 1, -1, np.zeros(target.cfg.n_embd, np.float32), 4, list(ids))
        got = d.propose(rnd, threading.Event()).tokens
        n = next(i for i, p in enumerate(probs) if p < thr + 1e-9)
        assert got == toks[:n], thr


@pytest.mark.parametrize("depth", [1, 2])
def test_greedy_identical_quantized_cache_and_penalty(models, depth):
    target, near, tok = models
    kv = KVConfig(type_k="q8_0", type_v="turbo3")
    sp = SamplingConfig(repeat_penalty=1.3, repeat_last_n=16)
    plain = run(target, tok, kv=kv, sampling=sp).tokens
    assert plain != run(target, tok).tokens  # the cache type and the penalty change the output
    for block in (2, 4, 6):
        for drafter in (NGramDrafter(), DraftModelDrafter(near, kv)):
            res = run(target, tok, drafter, SpecConfig(block_size=block, pipeline_depth=depth), kv=kv, sampling=sp)
            assert res.tokens == plain, (drafter.name, block)


def test_length_and_context_limits(models):
    target, near, tok = models
    for n in (1, 2, 3, 7):
        res = run(target, tok, DraftModelDrafter(target), SpecConfig(block_size=6), n=n)
        assert len(res.tokens) == n and res.tokens == run(target, tok, n=n).tokens


# -- rejection sampling --------------------------------------------------------------------------


def chi2_crit(df: int, z: float = 3.09) -> float:
    """Wilson–Hilferty upper quantile of chi-square(df); z = 3.09 -> p = 0.001."""
    a = 2.0 / (9.0 * df)
    return df * (1 - a + z * np.sqrt(a)) ** 3


def chi2(counts: np.ndarray, probs: np.ndarray) -> tuple[float, int]:
    n = counts.sum()
    m = probs > 0
    assert counts[~m].sum() == 0, "a token with zero target probability was emitted"
    e = probs[m] * n
    return float(((counts[m] - e) ** 2 / e).sum()), int(m.sum() - 1)


def test_rejection_sampling_matches_target_distribution():
    from turbospec.engine.sampling import Sampler
    from turbospec.engine.spec.verify import verify_sampling

    rng = np.random.default_rng(1)
    V = 6
    logits = rng.standard_normal((3, V)).astype(np.float32) * 1.5
    cfg = SamplingConfig(temp=0.9, top_k=0, top_p=1.0, min_p=0.0, seed=5)
    s = Sampler(cfg)
    p0, p1 = s.probs(logits[0]), s.probs(logits[1])
    q0 = rng.dirichlet(np.ones(V))
    q1 = rng.dirichlet(np.ones(V))
    N = 12000
    for mode in ("one-hot", "dense", "broken"):
        first = np.zeros(V)
        second = np.zeros(V)
        for _ in range(N):
            if mode == "one-hot":
                d, q = [2, 4], None
            else:
                d = [int(rng.choice(V, p=q0)), int(rng.choice(V, p=q1))]
                q = [q0, q1]
            if mode == "broken":  # accepts every draft: must be caught by the same test
                tokens = d
            else:
                tokens = verify_sampling(logits, d, s, [], q).tokens
            first[tokens[0]] += 1
            if tokens[0] == d[0] and len(tokens) > 1:
                # given the first draft was accepted, the second token follows p1
                second[tokens[1]] += 1
        x1, df1 = chi2(first, p0)
        x2, df2 = chi2(second, p1)
        ok = x1 < chi2_crit(df1) and x2 < chi2_crit(df2)
        assert ok == (mode != "broken"), (mode, x1, x2)


def test_speculative_sampling_end_to_end_chi_square(models):
    """Joint law of the first two generated tokens: speculative (draft model + rejection
    sampling) against the exact target probabilities (Sampler.probs on the model's logits)."""
    from turbospec.engine.generate import Session
    from turbospec.engine.sampling import Sampler

    target, near, tok = models
    sc = SamplingConfig(temp=1.0, top_k=4, top_p=1.0, min_p=0.0)
    ids = tok.encode(PROMPT, add_bos=True)
    sess = Session(target)
    lg0 = sess.prefill(ids)
    p0 = Sampler(sc).probs(lg0[-1], ids)
    joint: dict[tuple[int, int], float] = {}
    for a in np.nonzero(p0)[0]:
        sess.rollback(len(ids))
        lg1 = sess.step([int(a)])
        p1 = Sampler(sc).probs(lg1[-1], ids + [int(a)])
        for b in np.nonzero(p1)[0]:
            joint[(int(a), int(b))] = float(p0[a] * p1[b])
    keys = sorted(joint)
    idx = {k: i for i, k in enumerate(keys)}
    counts = np.zeros(len(keys))
    N = 1500
    dr = DraftModelDrafter(near)
    cfg = GenConfig(n_predict=3, ignore_eos=True)  # round 1 drafts the 2nd token (n=2 would skip)
    accepted = 0
    for i in range(N):
        cfg.sampling = SamplingConfig(temp=1.0, top_k=4, top_p=1.0, min_p=0.0, seed=1000 + i)
        r = generate(target, tok, ids, cfg, drafter=dr, spec=SpecConfig(block_size=2, pipeline_depth=1))
        counts[idx[tuple(r.tokens[:2])]] += 1
        accepted += r.spec["n_accepted"]
    dr.close()
    assert 0 < accepted < N  # both branches of the rejection sampler ran
    x, df = chi2(counts, np.array([joint[k] for k in keys]))
    assert x < chi2_crit(df), (x, df)


# -- pipeline --------------------------------------------------------------------------------


class SlowDrafter(Drafter):
    """Proposes fixed tokens slowly, checking the cancel flag (a stand-in for a heavy drafter)."""

    name = "slow"

    def __init__(self, token: int = 300, delay: float = 0.02):
        super().__init__()
        self.token, self.delay = token, delay
        self.calls = 0
        self.interrupted = 0

    def propose(self, rnd: Round, cancelled: threading.Event) -> Proposal:
        self.calls += 1
        out = []
        for _ in range(rnd.n_steps):
            t_end = time.perf_counter() + self.delay
            while time.perf_counter() < t_end:
                if cancelled.is_set():
                    self.interrupted += 1
                    return Proposal(out)
                time.sleep(0.001)
            out.append(self.token)
        return Proposal(out)


def test_depth2_cancels_on_stop(models):
    target, near, tok = models
    d = SlowDrafter(delay=0.2)
    rounds = []

    def stop() -> bool:
        rounds.append(1)
        return len(rounds) > 3

    res = run(target, tok, d, SpecConfig(block_size=4, pipeline_depth=2), n=40, should_stop=stop)
    assert res.stop_reason == "interrupted"
    assert not d.in_flight
    assert res.spec["cancelled"] == 1 and d.interrupted == 1  # the prepared request was drained, early


def test_one_request_in_flight_and_mismatched_round_is_redrafted():
    d = SlowDrafter(delay=0.001)
    h = np.ones(4, np.float32)
    r1 = Round(0, 5, 9, -1, h, 2, list(range(11)))
    d.prepare_next(r1)
    with pytest.raises(RuntimeError, match="already in flight"):
        d.prepare_next(r1)
    r2 = Round(0, 6, 9, -1, h, 2, list(range(10)) + [6])  # a different round: drained, computed sync
    assert d.draft(r2) == [300, 300] and r2.path == "sync" and d.calls == 2
    d.prepare_next(r1)
    assert d.draft(Round(0, 5, 9, -1, h, 2, list(range(11)))) == [300, 300]
    d.close()


# -- skip-streak and the trace -----------------------------------------------------------------


def test_skip_streak_rule():
    s = SkipStreak(1)
    pattern = []
    for _ in range(9):  # every drafted round misses
        if s.should_skip():
            pattern.append("S")
            continue
        pattern.append("D")
        s.record(2, 0)
    # the round after a skip is not counted, so threshold 1 skips every third round, not every other
    assert "".join(pattern) == "DSDDSDDSD"
    s = SkipStreak(2)
    for na in (0, 1, 0):
        s.record(3, na)
    assert not s.would_skip()
    s.record(3, 0)
    assert s.would_skip() and s.should_skip() and not s.would_skip()
    off = SkipStreak(0)
    for _ in range(50):
        off.record(1, 0)
    assert not off.should_skip()


def test_env_and_config_validation():
    assert skip_streak_from_env({}) == 0 and skip_streak_from_env({"LLAMA_MTP_SKIP_STREAK_THRESHOLD": "7"}) == 7
    for bad in ("33", "-1", "x"):
        with pytest.raises(UserError, match="LLAMA_MTP_SKIP_STREAK_THRESHOLD"):
            skip_streak_from_env({"LLAMA_MTP_SKIP_STREAK_THRESHOLD": bad})
    assert pipeline_depth_default(None, {"LLAMA_PIPELINE_DEPTH2": "0"}) == 1
    assert pipeline_depth_default(None, {}) == 2 and pipeline_depth_default(2, {"LLAMA_PIPELINE_DEPTH2": "0"}) == 2
    for b in (1, 33):
        with pytest.raises(UserError, match="--draft-block-size"):
            SpecConfig(block_size=b).validate()
    assert SpecConfig(block_size=8, draft_max=3).n_steps == 3


def read_lines(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.mark.parametrize("depth", [1, 2])
def test_trace_skip_streak_iter_and_path(models, tmp_path, depth):
    from turbospec.trace import MTP_ACCEPT_KEYS, MTP_DRAFT_KEYS, TraceWriter

    target, near, tok = models
    plain = run(target, tok, n=30).tokens
    never = next(t for t in range(7, 384) if t not in plain)
    p = tmp_path / "t.ndjson"
    w = TraceWriter.open(str(p))
    res = run(target, tok, SlowDrafter(never, 0.0), SpecConfig(block_size=3, pipeline_depth=depth, skip_streak=1),
              n=30, trace=w)
    w.close()
    assert res.tokens == plain
    lines = read_lines(p)
    assert lines[0]["evt"] == "prefill"
    body = [o for o in lines if o["evt"] in ("mtp_draft", "mtp_accept", "decode")]
    pattern = []
    it = 0
    prev = None
    for o in body:
        if o["evt"] == "mtp_draft":
            assert list(o)[: len(MTP_DRAFT_KEYS)] == list(MTP_DRAFT_KEYS)
            assert o["iter"] == it and o["drafter"] == "slow"
            if o["path"] == "skip-streak":
                assert o["drafts"] == [] and o["n_steps"] == 0
                pattern.append("S")
            elif o["path"] != "skip-nsteps":
                assert 0 < o["n_steps"] <= 2 and o["drafts"] == [never] * o["n_steps"]
                # after a skip (a plain token) nothing was prepared: sync; else lazy at depth 2
                assert o["path"] == ("lazy" if depth == 2 and prev == "accept" else "sync")
                pattern.append("D")
        elif o["evt"] == "mtp_accept":
            assert list(o)[: len(MTP_ACCEPT_KEYS)] == list(MTP_ACCEPT_KEYS)
            assert o["iter"] == it and o["n_accepted"] == 0 and o["n_emitted"] == 1
            it += 1
            prev = "accept"
            continue
        else:
            assert o["n_emitted"] == 1
            prev = "decode"
            continue
        prev = "draft"
    assert "".join(pattern).startswith("DSDDSDDSD")
    # every skip line is followed by a decode event, never by an accept line
    for a, b in zip(body, body[1:], strict=False):
        if a["evt"] == "mtp_draft" and a["path"].startswith("skip"):
            assert b["evt"] == "decode"
    assert sum(o["evt"] == "mtp_accept" for o in body) == res.spec["rounds"]


@pytest.mark.parametrize("spec", ["draft", "ngram"])
def test_cli_run_trace_replay_recomputes_every_aggregate(models, tiny_gguf, tmp_path, monkeypatch, capsys, spec):
    """`turbospec run --spec X --trace` then turbospec.trace recomputes what the run printed."""
    import shutil

    import turbospec.engine.loader as loader
    from turbospec.cli import main
    from turbospec.trace import aggregate_file, compute_metrics, fmt_pct, fmt_tau

    target, near, tok = models
    draft_path = tmp_path / "draft.gguf"
    shutil.copy(tiny_gguf, draft_path)
    real = loader.load_model

    def patched(path=None, storage="auto", quiet=False, use_cache=True):
        m = real(path, storage="f32", quiet=True, use_cache=use_cache)
        m.output = near.output if str(path) == str(draft_path) else target.output
        return m

    monkeypatch.setattr(loader, "load_model", patched)
    monkeypatch.setenv("LLAMA_MTP_SKIP_STREAK_THRESHOLD", "2")
    p = tmp_path / "run.ndjson"
    rc = main(["run", "-m", str(tiny_gguf), "-p", PROMPT, "-n", "48", "--ignore-eos", "--backend", "numpy",
               "--spec", spec, "--model-draft", str(draft_path), "--draft-block-size", "4",
               "--trace", str(p), "--json"])
    assert rc == 0
    cap = capsys.readouterr()
    d = json.loads(cap.out.strip().splitlines()[-1])
    assert d["tokens"] == run(target, tok, n=48).tokens
    m = compute_metrics(aggregate_file(p))
    assert m["malformed_lines"] == 0 and m["unpaired_accepts"] == 0 and m["draft_len_mismatch"] == 0
    assert m["runs"] == 1 and m["header"]["spec"] == spec and m["header"]["pipeline_depth"] == 2
    assert m["rounds"] == d["rounds"] and m["n_accepted"] == d["n_accepted"] and m["n_drafted"] == d["n_drafted"]
    assert m["skip_rounds"] == d["skip_rounds"] > 0
    assert m["draft_acceptance_rate"] == pytest.approx(d["draft_acceptance_rate"], abs=1e-12)
    assert m["tau"] == pytest.approx(d["tau"], abs=1e-12)
    assert m["paths"].get("lazy", 0) == d["lazy_rounds"] > 0
    assert m["per_position"] == d["per_position"] and len(d["per_position"]) == 3
    assert m["n_prompt"] == d["n_prompt"]
    assert m["n_gen"] == d["n_gen"] - 1  # the first token comes from the prefill's logits
    assert m["prefill_tok_s"] == pytest.approx(d["prefill_tok_s"], rel=2e-3)
    assert m["decode_tok_s"] == pytest.approx(d["decode_tok_s"], rel=0.1)
    end = m["end"]
    assert end["status"] == "ok" and end["tau"] == d["tau"]
    assert end["draft_acceptance_rate"] == d["draft_acceptance_rate"]
    # the printed summary shows the same numbers, formatted as DESIGN.md says
    human = cap.err
    assert f"draft acceptance rate {fmt_pct(m['draft_acceptance_rate'])}" in human
    assert f"τ {fmt_tau(m['tau'])}" in human
    assert " ".join(fmt_pct(x) for x in m["per_position"]) in human


def test_cli_spec_errors(tiny_gguf, monkeypatch, capsys):
    import sys

    from turbospec.cli import main

    base = ["run", "-m", str(tiny_gguf), "-p", "the cat", "-n", "3", "--backend", "numpy"]
    assert main(base + ["--spec", "draft"]) == 2
    assert "--model-draft" in capsys.readouterr().err
    assert main(base + ["--spec", "draft", "--model-draft", "/nonexistent/d.gguf"]) == 2
    assert "draft model not found" in capsys.readouterr().err
    assert main(base + ["--spec", "ngram", "--draft-block-size", "40"]) == 2
    assert "--draft-block-size 40" in capsys.readouterr().err
    for bad in ("1.5", "-0.1", "nan"):
        assert main(base + ["--spec", "draft", "--model-draft", str(tiny_gguf), "--draft-p-min", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and f"--draft-p-min {float(bad)} is out of range" in err
    assert main(base + ["--spec", "ngram", "--draft-p-min", "0.5"]) == 2
    assert "prompt lookup has none" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "turbospec.engine.spec.mtp", None)  # as if the module were missing
    assert main(base + ["--spec", "mtp"]) == 2
    err = capsys.readouterr().err
    assert "--spec mtp" in err and "Traceback" not in err
