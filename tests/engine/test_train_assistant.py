"""train-assistant on the tiny target: the PyTorch target port against the NumPy engine, balanced
k-means, resumable data generation, and a few training steps end to end (loss falls; the
written GGUF loads, validates and drafts exactly in the speculative loop)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="train-assistant needs the optional 'train' extra (pip install torch==2.13.0, CPU build)"
)

from turbospec.engine import assistant_train as at  # noqa: E402
from turbospec.engine.generate import GenConfig, Session, generate  # noqa: E402
from turbospec.engine.loader import load_model, load_tokenizer  # noqa: E402
from turbospec.engine.models.gemma4_assistant import Gemma4Assistant  # noqa: E402
from turbospec.engine.spec.loop import SpecConfig  # noqa: E402
from turbospec.engine.spec.mtp import MTPDrafter  # noqa: E402
from turbospec.errors import UserError  # noqa: E402

PROMPTS = [("chat", "the cat is on the mat"), ("raw", "the dog and the cat"), ("chat", "a dog is on a mat")]


@pytest.fixture(scope="module")
def target(tiny_gguf):
    torch.set_num_threads(1)
    m = load_model(tiny_gguf, storage="f32", quiet=True)
    return m, load_tokenizer(m)


def tiny_train_args(tmp_path, tiny_gguf, tokens: int, max_new: int, steps: int) -> tuple[list[str], Path, Path]:
    """A train-assistant command line for the tiny model: (args, work folder, output file)."""
    work, out = tmp_path / "work", tmp_path / "a.gguf"
    pf = tmp_path / "prompts.txt"
    pf.write_text("".join(f"{k}\t{t}\n" for k, t in PROMPTS))
    args = ["train-assistant", "--out", str(out), "-m", str(tiny_gguf), "--work", str(work), "--prompts", str(pf),
            "--tokens", str(tokens), "--batch", "3", "--max-new", str(max_new), "--layers", "2", "--n-ff", "64",
            "--heads", "4", "--steps", str(steps), "--lr", "3e-3", "--batch-seqs", "3", "--type", "f16",
            "--threads", "1"]
    return args, work, out


def test_torch_target_matches_numpy_engine(target, tiny_gguf):
    model, tok = target
    tm = at.TorchGemma3(tiny_gguf)
    ids = tok.encode("the cat is on the mat and the dog", add_bos=True)
    s = Session(model)
    s.prefill(ids[:-3])
    h_np = [s.hidden]
    for t in ids[-3:]:
        s.step([t])
        h_np.append(s.hidden)
    h_np = np.concatenate(h_np)
    cache = tm.new_cache(2, 32)
    rows = torch.tensor([1])
    n0 = len(ids) - 3
    h = [tm.forward(torch.tensor([ids[:n0]]), torch.arange(n0)[None], cache, rows)[0]]
    for i, t in enumerate(ids[-3:]):
        h.append(tm.forward(torch.tensor([[t]]), torch.tensor([[n0 + i]]), cache, rows)[0])
    h = torch.cat(h).numpy()
    assert len(ids) > model.cfg.window  # the sliding mask is exercised
    np.testing.assert_allclose(h, h_np, rtol=1e-4, atol=1e-4)
    lay = s.cache.layers[tm.src["g"]]  # the recorded K is the f16 cache's K (to an f16 rounding step)
    k_engine = lay.k[: len(ids)].view(np.float16).astype(np.float32)
    k_rec, _ = tm.cache_rows(cache, tm.src["g"], 1, len(ids))
    np.testing.assert_allclose(k_rec.astype(np.float32), k_engine, rtol=2e-3, atol=2e-3)


def test_free_running_jobs(target, tiny_gguf, tmp_path, monkeypatch):
    """--free N: jobs from BOS alone (n_prompt 1), generated before the prompt jobs, each with
    its own sampled prefix (different text per job), recorded like any other sequence."""
    model, tok = target
    jobs = at.job_list(len(PROMPTS), 0, n_free=5)
    free = [j for j in jobs if j["prompt"] < 0]
    assert len(free) == 5 and [j["id"] for j in free] == list(range(len(jobs) - 5, len(jobs)))
    assert at.job_list(len(PROMPTS), 0)[: len(jobs) - 5] == jobs[: len(jobs) - 5]  # old ids keep their jobs
    dc = at.DataConfig(tokens=30, batch=4, max_new=at.FREE_PREFIX + 4, seed=0, free=5)
    man = at.generate_data(tiny_gguf, tok, tmp_path, dc, PROMPTS, log=lambda m: None)
    assert set(man["shards"][0]["jobs"]) <= {j["id"] for j in free}
    seqs = at.load_shards(tmp_path, man)[:4]
    assert all(s["n_prompt"] == 1 and s["tokens"][0] == tok.bos_id for s in seqs)
    gen = np.nonzero(seqs[0]["argmax"] >= 0)[0]
    assert gen[0] == 0 and len(gen) >= at.FREE_PREFIX
    # the free prefix is sampled (temperature 1.0) even for a greedy job; greedy rows are not
    # (the tiny model is too peaked for samples to differ: count the draws instead)
    ids = tok.encode("the cat is on the mat and the dog", add_bos=True)
    draws = []
    real = torch.multinomial
    monkeypatch.setattr(torch, "multinomial",
                        lambda pr, n, generator=None: draws.append(1) or real(pr, n, generator=generator))
    rows = at.generate_batch(at.TorchGemma3(tiny_gguf), [ids] * 4, [0.0] * 4, [1, 2, 3, 4],
                             at.DataConfig(max_new=10), set(), free=[0, 0, 8, 3])
    assert len(draws) == 8 + 3
    assert rows[0]["tokens"].tolist() == rows[1]["tokens"].tolist()


def test_balanced_kmeans_sizes_and_recovery():
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((8, 16)) * 5
    X = (centers[np.repeat(np.arange(8), 32)] + rng.standard_normal((256, 16)) * 0.3).astype(np.float32)
    perm = rng.permutation(256)
    cent, order = at.balanced_kmeans(X[perm], 8, iters=5, log=lambda m: None)
    assert sorted(order.tolist()) == list(range(256))
    truth = np.repeat(np.arange(8), 32)[perm]
    for c in range(8):  # each balanced cluster is one true cluster
        assert len(set(truth[order[c * 32 : (c + 1) * 32]].tolist())) == 1
    # uneven data still gets exactly V / C rows per cluster
    Y = np.concatenate([rng.standard_normal((200, 4)), rng.standard_normal((56, 4)) + 9]).astype(np.float32)
    _, o2 = at.balanced_kmeans(Y, 4, iters=3, log=lambda m: None)
    assert sorted(o2.tolist()) == list(range(256))
    assert at.cluster_geometry(262144) == (2048, 128)
    assert at.cluster_geometry(384) == (3, 128)


def test_data_generation_resumes(target, tiny_gguf, tmp_path):
    model, tok = target
    dc = at.DataConfig(tokens=40, batch=3, max_new=12, seed=1)
    m1 = at.generate_data(tiny_gguf, tok, tmp_path, dc, PROMPTS, log=lambda m: None)
    n1 = len(m1["shards"])
    assert m1["n_tokens"] >= 36
    dc.tokens = 100
    m2 = at.generate_data(tiny_gguf, tok, tmp_path, dc, PROMPTS, log=lambda m: None)
    assert m2["shards"][:n1] == m1["shards"] and len(m2["shards"]) > n1
    jobs = [j for s in m2["shards"] for j in s["jobs"]]
    assert len(jobs) == len(set(jobs))  # no job generated twice
    # another seed adds its own jobs (the same ids, other samples) beside the first seed's
    m3 = at.generate_data(tiny_gguf, tok, tmp_path, at.DataConfig(tokens=m2["n_tokens"] + 30, batch=3, max_new=12,
                                                                  seed=2), PROMPTS, log=lambda m: None)
    new = m3["shards"][len(m2["shards"]):]
    assert new and all(sh["seed"] == 2 for sh in new) and m3["shards"][: len(m2["shards"])] == m2["shards"]
    assert set(new[0]["jobs"]) & set(jobs)
    seqs = at.load_shards(tmp_path, json.loads((tmp_path / at.MANIFEST).read_text()))
    s = seqs[0]
    n = len(s["tokens"])
    assert s["h"].shape == (n, model.cfg.n_embd) and s["k_s"].shape == (n, model.cfg.n_head_kv, model.cfg.head_dim)
    # greedy job 0: the recorded argmax is the next token wherever one was generated
    gen = np.nonzero(s["argmax"] >= 0)[0]
    assert m2["shards"][0]["jobs"][0] == 0
    assert (s["argmax"][gen[:-1]] == s["tokens"][gen[:-1] + 1]).all()
    # the recorded hidden state equals the engine's
    sess = Session(model)
    sess.prefill(s["tokens"][:-1].tolist())
    np.testing.assert_allclose(s["h"][: n - 1].astype(np.float32), sess.hidden, rtol=2e-3, atol=2e-3)


def test_tiny_training_loss_falls_and_file_drafts(target, tiny_gguf, tmp_path, capsys):
    from turbospec.cli import main

    model, tok = target
    args, work, out = tiny_train_args(tmp_path, tiny_gguf, tokens=150, max_new=16, steps=40)
    assert main(args) == 0
    err = capsys.readouterr().err
    losses = [float(ln.split(" loss ")[1].split()[0]) for ln in err.splitlines() if " loss " in ln]
    assert len(losses) == 4 and losses[-1] < 0.7 * losses[0], err
    a = Gemma4Assistant.load(out)
    a.validate(model, tok.tokens)
    assert a.cfg.use_target_embeddings and a.cfg.n_centroids == 3 and a.cfg.sliding == [True, False]
    # resume: more steps continue from the checkpoint (and a fresh run without --resume refuses)
    assert main(args[:-8] + ["--steps", "50", "--lr", "3e-3", "--batch-seqs", "3", "--resume"]) == 0
    assert "resumed at step 40/50" in capsys.readouterr().err
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    # --init: a new run (no checkpoint) starts from the file's weights and clusters, not from scratch
    import shutil

    work2 = tmp_path / "work2"
    shutil.copytree(work, work2, ignore=shutil.ignore_patterns(at.CKPT, "clusters.npz"))
    out2 = tmp_path / "b.gguf"
    base2 = ["train-assistant", "-m", str(tiny_gguf), "--work", str(work2), "--layers", "2", "--n-ff", "64",
             "--heads", "4", "--batch-seqs", "3", "--type", "f16", "--threads", "1"]
    assert main(base2 + ["--out", str(out2), "--phase", "train", "--steps", "2", "--lr", "1e-4",
                         "--init", str(out)]) == 0
    err = capsys.readouterr().err
    first = [float(ln.split(" loss ")[1].split()[0]) for ln in err.splitlines() if " loss " in ln]
    assert "starting from" in err and first and first[0] < 0.8 * losses[0], err
    b = Gemma4Assistant.load(out2)
    assert np.array_equal(b.token_ordering, a.token_ordering)
    # the fine-tune's file counts the steps behind its --init as well as its own, and its data once:
    # work2 holds the same shards as work, so the distinct target tokens stay the same
    from turbospec.engine.cmd_train import _train_counts

    tok_a, steps_a, ids_a = _train_counts(str(out))
    tok_b, steps_b, ids_b = _train_counts(str(out2))
    man = at.read_manifest(work)
    assert steps_a == 50 and steps_b == steps_a + 2 and ids_a == ids_b and len(ids_a) == len(man["shards"])
    assert tok_a == tok_b == man["n_tokens"] > 0
    assert main(base2 + ["--out", str(out2), "--phase", "train", "--steps", "2", "--init",
                         str(tmp_path / "none.gguf")]) == 2
    assert "--init" in capsys.readouterr().err
    # the file drafts inside the speculative loop; greedy output equals plain decoding
    d = MTPDrafter.load(out, model, tok)
    ids = tok.encode("the cat is on the mat", add_bos=True)
    cfg = GenConfig(n_predict=20, ignore_eos=True)
    try:
        res = generate(model, tok, ids, cfg, drafter=d, spec=SpecConfig(block_size=3))
    finally:
        d.close()
    assert res.tokens == generate(model, tok, ids, cfg).tokens
    assert res.spec["n_drafted"] > 0


def _prefilled_sequence(target):
    """(session, ids, one training sequence dict) of a prompt longer than the tiny model's window."""
    model, tok = target
    c = model.cfg
    ids = tok.encode("the cat is on the mat and the dog is on", add_bos=True)
    assert c.window < len(ids) < c.window + 32  # the sliding mask matters; the ring has not wrapped
    s = Session(model)
    s.prefill(ids)
    src = {"s": max(i for i, x in enumerate(c.sliding) if x), "g": max(i for i, x in enumerate(c.sliding) if not x)}
    n = len(ids)
    seq = {"tokens": np.array(ids, np.int32), "h": s.hidden.astype(np.float16), "argmax": np.zeros(n, np.int32),
           "topk": np.zeros((n, at.TOPK), np.int32)}
    for name, li in src.items():
        lay = s.cache.layers[li]
        assert (lay.pos[:n] == np.arange(n)).all()
        seq[f"k_{name}"] = lay.k[:n].view(np.float16).reshape(n, c.n_head_kv, c.head_dim)
        seq[f"v_{name}"] = lay.v[:n].view(np.float16).reshape(n, c.n_head_kv, c.head_dim)
    return s, ids, seq


def _unrolled(tm, batch):
    h_prev, outs = batch["H"], []
    for st in batch["steps"]:
        h_inner, h_prev = tm.step(st["tok"], h_prev, st["pos"], batch["kv"], st["masks"])
        outs.append(h_inner)
    return outs


@pytest.mark.parametrize("shape", [(2, 96), (4, 48), (3, 80)])
def test_grow_starts_as_the_same_function_and_can_learn(target, tiny_gguf, tmp_path, shape):
    """--grow: a wider FFN and/or extra layers around a trained file compute exactly what the file
    computes, and every new parameter group gets a gradient (or opens up after one step)."""
    from turbospec.engine.gguf import GGUFFile
    from turbospec.engine.models.gemma3 import Gemma3Config

    model, tok = target
    _, _, seq = _prefilled_sequence(target)
    tcfg = Gemma3Config.from_gguf(GGUFFile.open(tiny_gguf))
    E = torch.from_numpy(GGUFFile.open(tiny_gguf).dequantize("token_embd.weight"))
    cfg0 = at.assistant_config_for(tcfg, "gemma3", at.TrainConfig(n_layer=2, n_ff=48, n_head=4))
    small = at.TorchAssistant(cfg0, E, None, seed=3)
    with torch.no_grad():
        for p in small.parameters():
            p.add_(torch.randn(p.shape) * 0.1)
    order = np.random.default_rng(0).permutation(cfg0.n_vocab)
    f = at.write_gguf(small, order, tmp_path / "small.gguf", tok.tokens, "f32")
    cfg1 = at.assistant_config_for(tcfg, "gemma3", at.TrainConfig(n_layer=shape[0], n_ff=shape[1], n_head=4))
    with pytest.raises(UserError, match="--grow"):
        at.load_init(str(f), cfg1, "gemma3")
    init = at.load_init(str(f), cfg1, "gemma3", grow=True)
    big = at.TorchAssistant(cfg1, E, None, seed=5)
    at.grow_from(big, init)
    batch = at.make_batch([seq], cfg0, tcfg, 3)
    with torch.no_grad():
        ref = _unrolled(small, batch)
    got = _unrolled(big, at.make_batch([seq], cfg1, tcfg, 3))
    for a, b in zip(ref, got, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    loss = sum((h * torch.randn(h.shape)).sum() for h in got)
    loss.backward()
    new_layers = set(range(cfg0.n_layer - 1, cfg1.n_layer - 1))  # between the kept ones and the old last
    assert len(new_layers) == cfg1.n_layer - cfg0.n_layer
    for j, m in enumerate(big.layers):
        if j in new_layers:  # a closed layer: its post-norm weights open it
            assert m.post_attention_norm.grad.abs().sum() > 0 and m.post_ffw_norm.grad.abs().sum() > 0
        elif cfg1.n_ff > cfg0.n_ff:  # the new units' down columns learn first
            assert m.ffn_down.grad[:, cfg0.n_ff:].abs().sum() > 0
    # a smaller --n-ff is not a growth
    cfg2 = at.assistant_config_for(tcfg, "gemma3", at.TrainConfig(n_layer=2, n_ff=32, n_head=4))
    with pytest.raises(UserError, match="only be larger"):
        at.load_init(str(f), cfg2, "gemma3", grow=True)


def test_torch_assistant_step_matches_numpy_inference(target, tiny_gguf, tmp_path):
    """What training computes (teacher-forced, all anchors at once) is what the drafter computes."""
    from turbospec.engine.gguf import GGUFFile
    from turbospec.engine.models.gemma3 import Gemma3Config

    model, tok = target
    s, ids, seq = _prefilled_sequence(target)
    n = len(ids)
    tcfg = Gemma3Config.from_gguf(GGUFFile.open(tiny_gguf))
    tc = at.TrainConfig(n_layer=2, n_ff=48, n_head=4)
    cfg = at.assistant_config_for(tcfg, "gemma3", tc)
    E = torch.from_numpy(GGUFFile.open(tiny_gguf).dequantize("token_embd.weight"))
    tm = at.TorchAssistant(cfg, E, None, seed=3)
    with torch.no_grad():
        for p in tm.parameters():  # move away from the identity-like init
            p.add_(torch.randn(p.shape) * 0.1)
    order = np.random.default_rng(0).permutation(cfg.n_vocab)
    out = at.write_gguf(tm, order, tmp_path / "a.gguf", tok.tokens, "f32")
    a = Gemma4Assistant.load(out)
    a.validate(model, tok.tokens)
    batch = at.make_batch([seq], cfg, tcfg, 3)
    with torch.no_grad():
        outs = [h_inner[0].numpy() for h_inner in _unrolled(tm, batch)]
    for t in (2, n - 6, n - 4):
        h = s.hidden[t]
        for k in range(3):
            h_in, h = a.step(model, s.cache, ids[t + 1 + k], h, t, k)
            np.testing.assert_allclose(outs[k][t], h_in, rtol=2e-3, atol=2e-3 * np.abs(h_in).max())


def test_soft_ce_matches_a_plain_loop():
    """--soft-weight's loss: -sum_i p_i log q(topk_i), p = softmax of the recorded top-8 logits
    over the recorded ids, q = softmax over the candidates; fresh random inputs, missing ids (-1)."""
    g = torch.Generator().manual_seed(int(np.random.default_rng().integers(1 << 30)))
    n, V = 5, 300
    cand = torch.unique(torch.randint(V, (120,), generator=g))
    topk = cand[torch.randint(len(cand), (n, at.TOPK), generator=g)]
    topk[1, 5:] = -1
    topk[3, 1:] = -1
    topv = torch.randn(n, at.TOPK, generator=g) * 3
    logits = torch.randn(n, len(cand), generator=g) * 2
    got = float(at.soft_ce(logits, cand, topk, topv))
    want = 0.0
    for r in range(n):
        ids = [(int(t), float(v)) for t, v in zip(topk[r], topv[r], strict=True) if int(t) >= 0]
        z = sum(np.exp(v) for _, v in ids)
        lse = float(np.log(np.exp(logits[r].double().numpy()).sum()))
        col = {int(c): j for j, c in enumerate(cand)}
        want += -sum(np.exp(v) / z * (float(logits[r, col[t]]) - lse) for t, v in ids)
    assert got == pytest.approx(want / n, rel=1e-5)


def test_training_with_soft_labels_runs_and_checks_its_weight(target, tiny_gguf, tmp_path, capsys):
    from turbospec.cli import main

    args, work, out = tiny_train_args(tmp_path, tiny_gguf, tokens=60, max_new=12, steps=20)
    assert main(args + ["--soft-weight", "-1"]) == 2
    assert "--soft-weight -1.0 must be between 0 and 100" in capsys.readouterr().err
    assert main(args + ["--soft-weight", "1.0"]) == 0
    err = capsys.readouterr().err
    softs = [float(ln.split("soft0=")[1].split()[0]) for ln in err.splitlines() if "soft0=" in ln]
    assert len(softs) == 2 and softs[-1] < softs[0], err
    Gemma4Assistant.load(out)
    # a shard without topv (an older turbospec's) cannot give soft labels: one line, not uniform targets
    from turbospec.engine import assistant_train as at

    f = work / at.read_manifest(work)["shards"][0]["file"]
    z = dict(np.load(f))
    del z["topv"]
    np.savez(f, **z)
    assert main(args + ["--soft-weight", "1.0", "--resume", "--steps", "21"]) == 2
    assert "--soft-weight needs the target's top-8 logits (topv)" in capsys.readouterr().err


def test_fine_tune_counts_each_shard_once():
    from turbospec.engine.assistant_train import count_shard_tokens
    from turbospec.engine.cmd_train import _data_behind

    logs = []
    a, b, c = "aa:n100", "bb:n30", "cc:n7"
    assert count_shard_tokens([a, b, a]) == 130
    # an --init file that records its shards: overlap counted once, plus what it had before recording them
    assert _data_behind((130, 9, [a, b]), [b, c], None, logs.append) == (137, [a, b, c])
    assert _data_behind((500, 9, [a, b]), [a], None, logs.append) == (500, [a, b])
    assert not logs
    # an older file (no shard ids): all its tokens count, with a line saying so, unless --init-tokens says
    assert _data_behind((1000, 9, None), [a], None, logs.append) == (1100, [a])
    assert len(logs) == 1 and "--init-tokens" in logs[0]
    assert _data_behind((1000, 9, None), [a], 40, logs.append) == (140, [a])
    assert _data_behind((0, 0, None), [a, b], None, logs.append) == (130, [a, b]) and len(logs) == 1


def test_training_on_a_quantized_cache_view(target, tiny_gguf, tmp_path, capsys):
    """--train-cache K/V: the source K/V as that cache hands them back (LayerKV.roundtrip, whose
    attention equality tests/engine/test_kv_cache.py checks), for a share of the sequences."""
    from turbospec.cli import main
    from turbospec.engine import assistant_train as at

    args, work, out = tiny_train_args(tmp_path, tiny_gguf, tokens=60, max_new=12, steps=10)
    assert main(args + ["--train-cache", "q8_0/bogus"]) == 2
    assert "--train-cache 'q8_0/bogus' must be K/V with types from" in capsys.readouterr().err
    assert main(args + ["--train-cache", "q8_0/turbo3", "--train-cache-p", "0"]) == 2
    assert "--train-cache-p 0.0 must be in (0, 1]" in capsys.readouterr().err
    assert main(args + ["--train-cache", "q8_0/turbo3", "--train-cache-p", "1"]) == 0
    assert "source K/V through a q8_0/turbo3 cache for 100% of the sequences" in capsys.readouterr().err
    Gemma4Assistant.load(out)
    seq = at.load_shards(work, at.read_manifest(work))[0]
    same = at.cache_view(seq, "f16", "f16")
    view = at.cache_view(seq, "q8_0", "turbo3")
    assert set(view) == set(same) == {"k_s", "v_s", "k_g", "v_g"}
    for name in view:
        assert view[name].shape == seq[name].shape and view[name].dtype == np.float16
        assert np.array_equal(same[name], seq[name])  # f16 cells give the f16 shard values back exactly
    rel = {n: float(np.abs(view[n].astype(np.float32) - seq[n]).mean() / np.abs(seq[n].astype(np.float32)).mean())
           for n in view}
    assert 0 < rel["k_s"] < 0.02 and 0 < rel["k_g"] < 0.02, rel  # q8_0: ~0.4% of |x|
    assert rel["v_s"] > 3 * rel["k_s"] and rel["v_g"] > 3 * rel["k_g"], rel  # turbo3: 3 bits
