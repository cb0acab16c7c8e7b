"""Training the MTP assistant by distillation from its target (``turbospec train-assistant``).

Needs PyTorch (the ``train`` extra, ``torch==2.13.0`` CPU build); imported only by the command,
never by the engine. Three phases, each checkpointed in a work folder so the job can span
several sittings (``--resume``):

1. data (``generate_data``): the target writes its own text from the prompt set
   (engine/data/assistant_prompts.txt), greedy and sampled, in batches, with a PyTorch port of
   the Gemma 3 forward (``TorchGemma3``; its hidden states match the NumPy engine's, test
   beside it). Per position it records: the token id, h (final-norm hidden, f16), the K/V of
   the two source layers (last sliding, last global; f16, K after its norm and RoPE, as the
   f16 cache holds them), the target's argmax next token and its top-8 ids and logits. One ``.npz``
   shard per batch plus ``manifest.json`` (written last, atomically): a resumed run skips the
   jobs a shard already holds (jobs are keyed by (--seed, id): another seed adds new ones).
2. clusters (``balanced_kmeans``): centroids and token_ordering from k-means over the
   target's embedding rows, balanced so each cluster holds exactly n_vocab / n_centroids ids.
3. training (``train``): teacher-forced multi-step. Anchor t (a position with a target
   state); step k = 0..K-1 is fed token x[t+1+k] and h_prev (h[t] for k = 0, the assistant's
   own post_projection output for k >= 1, as at inference), attends over the target's K/V at
   positions <= t, RoPE at t+1+k, and learns the target's argmax at t+1+k (= the next token
   for greedy text). Loss = cross-entropy over a sampled candidate set (the batch's target
   top-8 ids + random negatives) scored with the head's rows + cross-entropy of the cluster
   router (label = the cluster of the target's token) + a relative MSE pulling h_inner to the
   target's own hidden state at t+1+k (the frozen head then scores like the target's).
   Checkpoint (torch.save: model, optimizer, step) every ``ckpt_every`` steps.
4. write: the GGUF in the fork's schema (engine/models/gemma4_assistant.write_assistant_gguf).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from turbospec.engine.gguf import GGUFFile
from turbospec.engine.models.gemma3 import Gemma3Config
from turbospec.engine.models.gemma4_assistant import AssistantConfig, source_layers, write_assistant_gguf
from turbospec.errors import UserError

MANIFEST = "manifest.json"
CKPT = "train.pt"
TOPK = 8


# -- the prompt set -------------------------------------------------------------------------------


def load_prompts(path: Path | None = None) -> list[tuple[str, str]]:
    """(kind, text) pairs from the prompts file (KIND<TAB>TEXT, '\\n' escapes, # comments)."""
    if path is None:
        from importlib import resources

        text = (resources.files("turbospec.engine.data") / "assistant_prompts.txt").read_text("utf-8")
    else:
        text = Path(path).read_text("utf-8")
    out = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        kind, _, body = line.partition("\t")
        if not body:
            raise UserError(f"prompt line {line[:40]!r} has no TAB between KIND and TEXT")
        out.append((kind.strip(), body.replace("\\n", "\n")))
    return out


FREE_PREFIX = 32  # free-running jobs: tokens sampled at temperature 1.0 from BOS before the job's own temperature
FREE_TEMPS = [0.0, 0.0, 0.7, 1.0]  # greedy-heavy, like the text speculative decoding is asked to draft


def job_list(n_prompts: int, seed: int, n_free: int = 0) -> list[dict]:
    """An endless-enough deterministic list of generation jobs: every prompt greedy, then rounds
    of sampled variants (temperatures 0.7, 1.0, 0.5 ...) with fresh seeds, shuffled per round;
    then ``n_free`` free-running jobs (prompt -1: BOS only, the first FREE_PREFIX tokens sampled
    at temperature 1.0, so the model picks its own topics — 52 prompts alone made an assistant
    that knew their topics: 64% step-0 accuracy on training text, 36% on held-out prompts)."""
    jobs = _prompt_jobs(n_prompts, seed)
    rng = np.random.default_rng(seed + 7919)
    for k in range(n_free):
        jobs.append({"id": len(jobs), "prompt": -1, "temp": FREE_TEMPS[k % len(FREE_TEMPS)],
                     "seed": int(rng.integers(1 << 31))})
    return jobs


def _prompt_jobs(n_prompts: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    temps = [0.0, 0.7, 1.0, 0.5, 0.8, 1.2]
    jobs = []
    for r, temp in enumerate(temps * 4):
        if r >= len(temps) and temp == 0.0:
            continue  # greedy is deterministic: once per prompt
        order = rng.permutation(n_prompts)
        for p in order:
            jobs.append({"id": len(jobs), "prompt": int(p), "temp": float(temp), "seed": int(rng.integers(1 << 31))})
    return jobs


# -- the target in PyTorch --------------------------------------------------------------------------


class TorchGemma3:
    """Gemma 3 forward in PyTorch (float32 math, f16 K/V cache like the engine's default cache)
    for batched data generation. The reference is the NumPy engine (engine/models/gemma3.py)."""

    def __init__(self, path: str | Path):
        g = GGUFFile.open(path)
        if g.arch != "gemma3":
            raise UserError(f"{path}: train-assistant supports gemma3 targets, this is {g.arch!r}")
        self.g = g
        self.cfg = c = Gemma3Config.from_gguf(g)

        def t(name: str) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(g.dequantize(name), dtype=np.float32))

        self.embd = t("token_embd.weight")
        self.head_w = t("output.weight") if "output.weight" in g.tensors else self.embd
        self.output_norm = t("output_norm.weight")
        self.blk = []
        for i in range(c.n_layer):
            p = f"blk.{i}."
            self.blk.append({n: t(p + n + ".weight") for n in (
                "attn_norm", "attn_q", "attn_k", "attn_v", "attn_q_norm", "attn_k_norm", "attn_output",
                "post_attention_norm", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down", "post_ffw_norm")})
        # the source layers the assistant reads: "s" = last sliding, "g" = last global
        self.src = {name: max(i for i, s in enumerate(c.sliding) if s == kind)
                    for name, kind in (("s", True), ("g", False)) if kind in c.sliding}
        self.sqrt_d = math.sqrt(c.n_embd)

    def new_cache(self, B: int, T: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer (K, V) of shape (B, n_head_kv, T, head_dim): float32 holding f16-rounded
        values (the engine's f16 cache numerics without casting the whole cache every step)."""
        c = self.cfg
        return [(torch.zeros(B, c.n_head_kv, T, c.head_dim), torch.zeros(B, c.n_head_kv, T, c.head_dim))
                for _ in range(c.n_layer)]

    @staticmethod
    def cache_rows(cache, layer: int, b: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Row b's first n positions of a layer's K and V as f16 (n, n_head_kv, head_dim)."""
        kc, vc = cache[layer]
        return (kc[b, :, :n].transpose(0, 1).half().numpy(), vc[b, :, :n].transpose(0, 1).half().numpy())

    def rms(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + self.cfg.eps) * w

    @staticmethod
    def rope(x: torch.Tensor, pos: torch.Tensor, base: float) -> torch.Tensor:
        return rope_t(x, pos, base)

    @torch.no_grad()
    def forward(self, tokens: torch.Tensor, pos: torch.Tensor, cache, rows: torch.Tensor) -> torch.Tensor:
        """tokens, pos (B, T) for cache rows ``rows`` (B,); positions index the cache. Returns the
        final-norm hidden (B, T, n_embd); writes K/V at pos.

        Attention is grouped-query without repeating K/V: the G = n_head / n_head_kv query heads
        of a KV head are stacked as G*T query rows, over the cache cells up to max(pos) only
        (napkin: 64 rows x 420 cells x 18 layers; repeating and casting the whole f16 cache per
        step moved ~1.6 GB a step and made batch-64 generation attention-bound)."""
        c = self.cfg
        B, T = tokens.shape
        G = c.n_head // c.n_head_kv
        x = self.embd[tokens] * self.sqrt_d
        n = int(pos.max()) + 1
        j = torch.arange(n)
        full = B == cache[0][0].shape[0] and bool((rows == torch.arange(B)).all())
        vis_all = j[None, None, :] <= pos[:, :, None]  # (B, T, n)
        vis_win = vis_all & ((pos[:, :, None] - j[None, None, :]) < c.window)

        def grouped(m: torch.Tensor) -> torch.Tensor:  # (B, T, n) -> (B, 1, G*T, n)
            return m[:, None, None].expand(B, 1, G, T, n).reshape(B, 1, G * T, n)

        mask_all, mask_win = grouped(vis_all), grouped(vis_win)
        for i, b in enumerate(self.blk):
            h = self.rms(x, b["attn_norm"])
            q = (h @ b["attn_q"].T).view(B, T, c.n_head, c.head_dim)
            k = (h @ b["attn_k"].T).view(B, T, c.n_head_kv, c.head_dim)
            v = (h @ b["attn_v"].T).view(B, T, c.n_head_kv, c.head_dim)
            q, k = self.rms(q, b["attn_q_norm"]), self.rms(k, b["attn_k_norm"])
            base = c.rope_base_swa if c.sliding[i] else c.rope_base
            q, k = self.rope(q, pos, base), self.rope(k, pos, base)
            kc, vc = cache[i]
            kc[rows[:, None], :, pos] = k.half().float()
            vc[rows[:, None], :, pos] = v.half().float()
            K = kc[:, :, :n] if full else kc[rows, :, :n]  # (B, n_kv, n, hd)
            V = vc[:, :, :n] if full else vc[rows, :, :n]
            qg = q.view(B, T, c.n_head_kv, G, c.head_dim).permute(0, 2, 3, 1, 4).reshape(B, c.n_head_kv, G * T, -1)
            o = F.scaled_dot_product_attention(qg, K, V, attn_mask=mask_win if c.sliding[i] else mask_all,
                                               scale=1.0 / math.sqrt(c.head_dim))
            o = o.view(B, c.n_head_kv, G, T, c.head_dim).permute(0, 3, 1, 2, 4).reshape(B, T, -1)
            o = o @ b["attn_output"].T
            x = x + self.rms(o, b["post_attention_norm"])
            h = self.rms(x, b["ffn_norm"])
            a = F.gelu(h @ b["ffn_gate"].T, approximate="tanh") * (h @ b["ffn_up"].T)
            x = x + self.rms(a @ b["ffn_down"].T, b["post_ffw_norm"])
        return self.rms(x, self.output_norm)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        s = h @ self.head_w.T
        if self.cfg.softcap:
            s = torch.tanh(s / self.cfg.softcap) * self.cfg.softcap
        return s


def rope_t(x: torch.Tensor, pos: torch.Tensor, base: float) -> torch.Tensor:
    """NEOX RoPE on (B, T, H, D) at positions pos (B, T); angles in float64 like the engine."""
    d = x.shape[-1]
    inv = base ** (-torch.arange(d // 2, dtype=torch.float64) * 2.0 / d)
    ang = pos.to(torch.float64)[..., None] * inv
    cos, sin = ang.cos().float()[:, :, None], ang.sin().float()[:, :, None]
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


# -- phase 1: data --------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    tokens: int = 200_000  # generated target tokens to collect
    batch: int = 16  # sequences generated together
    max_new: int = 320  # generated tokens per sequence at most
    seed: int = 0
    top_k: int = 64  # sampling: top-k then temperature
    free: int = 0  # free-running jobs (BOS + a sampled prefix) added to the prompt set's jobs


def encode_prompt(tok, kind: str, text: str) -> list[int]:
    from turbospec.engine.generate import chat_prompt

    return tok.encode(text if kind == "raw" else chat_prompt(text), add_bos=True, parse_special=True)


def read_manifest(work: Path) -> dict | None:
    p = work / MANIFEST
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except ValueError:
        raise UserError(f"{p} is corrupt; delete the work folder {work} to start over") from None


def write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)


@torch.no_grad()
def generate_batch(tm: TorchGemma3, prompts: list[list[int]], temps: list[float], seeds: list[int],
                   dc: DataConfig, stop: set[int], free: list[int] | None = None) -> list[dict[str, np.ndarray]]:
    """Generate for a batch of prompts; per sequence the recorded arrays (see module doc).
    ``free[b]``: the first free[b] generated tokens of row b are sampled at temperature 1.0."""
    c = tm.cfg
    B = len(prompts)
    Tc = max(len(p) for p in prompts) + dc.max_new
    cache = tm.new_cache(B, Tc)
    rows = torch.arange(B)
    H = torch.zeros(B, Tc, c.n_embd, dtype=torch.float16)
    am = torch.full((B, Tc), -1, dtype=torch.int32)
    topk = torch.full((B, Tc, TOPK), -1, dtype=torch.int32)
    topv = torch.zeros(B, Tc, TOPK, dtype=torch.float16)
    toks = torch.zeros(B, Tc, dtype=torch.long)
    last_h = torch.zeros(B, c.n_embd)
    for b, p in enumerate(prompts):  # prefill one by one (lengths differ)
        n = len(p)
        t = torch.tensor(p)[None]
        h = tm.forward(t, torch.arange(n)[None], cache, rows[b : b + 1])
        H[b, :n] = h[0].half()
        toks[b, :n] = t[0]
        last_h[b] = h[0, -1]
    length = torch.tensor([len(p) for p in prompts])  # tokens in the sequence so far
    done = torch.zeros(B, dtype=torch.bool)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    kk = max(TOPK, dc.top_k)
    free = free or [0] * B
    for step in range(dc.max_new):
        lg = tm.logits(last_h)
        tvk, tik = lg.topk(kk, dim=-1)  # sorted: the recorded top-8 and the sampling candidates at once
        tv, ti = tvk[:, :TOPK], tik[:, :TOPK].to(torch.int32)
        nxt = ti[:, 0].long().clone()
        for b in range(B):
            temp = 1.0 if step < free[b] else temps[b]
            if temp > 0 and not done[b]:
                pr = torch.softmax(tvk[b, : dc.top_k] / temp, dim=-1)
                nxt[b] = tik[b, torch.multinomial(pr, 1, generator=gens[b])[0]]
        live = ~done
        pos = length - 1  # the position whose output these logits are
        am[rows[live], pos[live]] = ti[live, 0]
        topk[rows[live], pos[live]] = ti[live]
        topv[rows[live], pos[live]] = tv[live].half()
        toks[rows[live], length[live]] = nxt[live]
        length = length + live.long()
        done = done | torch.tensor([int(t) in stop for t in nxt]) & live
        if bool(done.all()):
            break
        p = (length - 1).clamp(max=Tc - 1)
        h = tm.forward(nxt[:, None], p[:, None], cache, rows)[:, 0]
        H[rows[~done], p[~done]] = h[~done].half()
        last_h = h
    out = []
    for b in range(B):
        n = int(length[b])
        kv = {}
        for name, li in tm.src.items():
            kv[f"k_{name}"], kv[f"v_{name}"] = tm.cache_rows(cache, li, b, n)
        out.append({"tokens": toks[b, :n].numpy().astype(np.int32), "h": H[b, :n].numpy(),
                    "argmax": am[b, :n].numpy(), "topk": topk[b, :n].numpy(), "topv": topv[b, :n].numpy(),
                    "n_prompt": np.int64(len(prompts[b])), **kv})
    return out


def save_shard(path: Path, seqs: list[dict[str, np.ndarray]]) -> int:
    """Concatenate sequences into one .npz (offsets in ``start``); returns generated tokens."""
    start = np.cumsum([0] + [len(s["tokens"]) for s in seqs]).astype(np.int64)
    arrs = {k: np.concatenate([s[k] for s in seqs]) for k in seqs[0] if k != "n_prompt"}
    arrs["start"] = start
    arrs["n_prompt"] = np.array([s["n_prompt"] for s in seqs], np.int64)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrs)
    tmp.replace(path)
    return int(sum(int((s["argmax"] >= 0).sum()) for s in seqs))


def generate_data(model_path: Path, tok, work: Path, dc: DataConfig, prompts: list[tuple[str, str]],
                  log=print) -> dict:
    """Phase 1, resumable: shards until ``dc.tokens`` generated tokens are recorded."""
    from turbospec.engine.generate import stop_ids
    from turbospec.engine.weights import file_sha256

    work.mkdir(parents=True, exist_ok=True)
    sha = file_sha256(Path(model_path))
    man = read_manifest(work) or {"model_sha256": sha, "shards": [], "n_tokens": 0, "data": asdict(dc),
                                  "n_prompts": len(prompts)}
    if man["model_sha256"] != sha:
        raise UserError(f"work folder {work} holds data of another model; pass another --work or delete it")
    if man["n_tokens"] >= dc.tokens:
        return man
    tm = TorchGemma3(model_path)
    stop = {t for t in stop_ids(tok) if t is not None}
    jobs = job_list(len(prompts), dc.seed, dc.free)
    # jobs are (seed, id): another --seed adds fresh jobs to the same folder (shards before this
    # key was recorded are the manifest's first seed)
    first_seed = man.get("data", {}).get("seed", dc.seed)
    done_ids = {j for s in man["shards"] if s.get("seed", first_seed) == dc.seed for j in s["jobs"]}
    todo = [j for j in jobs if j["id"] not in done_ids]
    todo.sort(key=lambda j: j["prompt"] >= 0 if dc.free else False)  # free-running jobs first when asked for
    while man["n_tokens"] < dc.tokens and todo:
        batch, todo = todo[: dc.batch], todo[dc.batch :]
        t0 = time.perf_counter()
        enc = [encode_prompt(tok, *prompts[j["prompt"]]) if j["prompt"] >= 0 else [tok.bos_id] for j in batch]
        seqs = generate_batch(tm, enc, [j["temp"] for j in batch], [j["seed"] for j in batch], dc, stop,
                              free=[FREE_PREFIX if j["prompt"] < 0 else 0 for j in batch])
        name = f"shard_{len(man['shards']):05d}.npz"
        n = save_shard(work / name, seqs)
        dt = time.perf_counter() - t0
        man["shards"].append({"file": name, "jobs": [j["id"] for j in batch], "seed": dc.seed, "n_tokens": n,
                              "seconds": round(dt, 2)})
        man["n_tokens"] += n
        man["seconds"] = round(man.get("seconds", 0.0) + dt, 2)
        write_json_atomic(work / MANIFEST, man)
        log(f"data: {name}: {n} tokens in {dt:.1f} s ({1000 * dt / max(n, 1):.1f} s per 1k); "
            f"total {man['n_tokens']}/{dc.tokens}")
    return man


def load_shards(work: Path, man: dict) -> list[dict[str, np.ndarray]]:
    """Every recorded sequence, as dicts of arrays."""
    seqs = []
    for s in man["shards"]:
        z = np.load(work / s["file"])
        st = z["start"]
        arrs = {k: z[k] for k in z.files if k not in ("start", "n_prompt")}
        for i in range(len(st) - 1):
            d = {k: v[st[i] : st[i + 1]] for k, v in arrs.items()}
            d["n_prompt"] = int(z["n_prompt"][i])
            seqs.append(d)
    return seqs


# -- phase 2: clusters ---------------------------------------------------------------------------------


def cluster_geometry(n_vocab: int, size: int = 128, max_clusters: int = 2048) -> tuple[int, int]:
    """(n_centroids, cluster size): 2048 clusters of 128 when n_vocab allows, else clusters of
    ``size`` (or the largest divisor of n_vocab below it)."""
    if n_vocab == max_clusters * size:
        return max_clusters, size
    s = size
    while s > 1 and n_vocab % s:
        s -= 1
    return n_vocab // s, s


def balanced_kmeans(E: np.ndarray, n_clusters: int, iters: int = 6, seed: int = 0, log=print,
                    chunk: int = 16384) -> tuple[np.ndarray, np.ndarray]:
    """k-means over rows, then balanced assignment: every cluster gets exactly V / n_clusters
    rows. Returns (centroids (C, d) float32, token_ordering (V,) int: cluster c = rows
    [c*S, (c+1)*S) of the ordering)."""
    X = torch.from_numpy(np.ascontiguousarray(E, np.float32))
    V = X.shape[0]
    S = V // n_clusters
    g = torch.Generator().manual_seed(seed)
    x2 = (X * X).sum(1)
    # k-means++ seeding on a sample of 16 rows per cluster (seeding on all 262144 rows took
    # over 13 min on a loaded core: one pass over the rows per centre)
    sample = torch.randperm(V, generator=g)[: min(V, 16 * n_clusters)]
    C = kmeans_pp(X[sample], x2[sample], n_clusters, g)
    log(f"kmeans: k-means++ seeds from {len(sample)} rows")

    def nearest(C: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        c2 = (C * C).sum(1)
        ds, ix = [], []
        for a in range(0, V, chunk):
            d = x2[a : a + chunk, None] - 2 * X[a : a + chunk] @ C.T + c2[None]
            v, i = d.topk(m, dim=1, largest=False)
            ds.append(v)
            ix.append(i)
        return torch.cat(ds), torch.cat(ix)

    for it in range(iters):  # plain Lloyd steps
        _, ix = nearest(C, 1)
        a = ix[:, 0]
        cnt = torch.bincount(a, minlength=n_clusters).float()
        C_new = torch.zeros_like(C).index_add_(0, a, X)
        empty = cnt == 0
        refill = X[torch.randint(V, (n_clusters,), generator=g)]
        C = torch.where(empty[:, None], refill, C_new / cnt.clamp(min=1)[:, None])
        log(f"kmeans: iteration {it + 1}/{iters}, {int(empty.sum())} empty clusters")
    for _ in range(2):  # balanced assignment, then refit the centroids to it
        assign = balanced_assign(X, C, S, nearest)
        C = torch.zeros_like(C).index_add_(0, assign, X) / S
        log(f"kmeans: balanced assignment, {S} rows per cluster")
    order = torch.argsort(assign * V + torch.arange(V), stable=True)
    return C.numpy().astype(np.float32), order.numpy().astype(np.int64)


def kmeans_pp(X: torch.Tensor, x2: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (D^2 sampling); one pass over the rows per centre."""
    V = X.shape[0]
    idx = [int(torch.randint(V, (1,), generator=g))]
    dmin = (x2 - 2 * X @ X[idx[0]] + x2[idx[0]]).clamp(min=0)
    for _ in range(n - 1):
        tot = float(dmin.sum())
        i = int(torch.multinomial(dmin / tot, 1, generator=g)) if tot > 0 else int(torch.randint(V, (1,), generator=g))
        idx.append(i)
        dmin = torch.minimum(dmin, (x2 - 2 * X @ X[i] + x2[i]).clamp(min=0))
    return X[idx].clone()


def balanced_assign(X: torch.Tensor, C: torch.Tensor, S: int, nearest) -> torch.Tensor:
    """Greedy capacity-constrained assignment: rows in order of their best distance take their
    nearest cluster with room among their 16 nearest; the rest take the nearest cluster with room."""
    V, n_c = X.shape[0], C.shape[0]
    m = min(16, n_c)
    d, ix = nearest(C, m)
    order = torch.argsort(d[:, 0]).tolist()
    cand = ix.tolist()
    cap = [S] * n_c
    assign = [-1] * V
    left = []
    for r in order:
        for cl in cand[r]:
            if cap[cl]:
                cap[cl] -= 1
                assign[r] = cl
                break
        else:
            left.append(r)
    full = torch.tensor([k == 0 for k in cap])
    c2 = (C * C).sum(1)
    for a in range(0, len(left), 4096):
        rs = left[a : a + 4096]
        dd = c2[None] - 2 * (X[rs] @ C.T)
        for i, r in enumerate(rs):
            cl = int(torch.argmin(dd[i].masked_fill(full, float("inf"))))
            cap[cl] -= 1
            full[cl] = cap[cl] == 0
            assign[r] = cl
    return torch.tensor(assign)


# -- phase 3: the assistant in PyTorch -------------------------------------------------------------------


@dataclass
class TrainConfig:
    n_layer: int = 4
    n_ff: int = 1024
    n_head: int = 4
    draft_steps: int = 3  # K: steps unrolled per anchor (B-1 at inference)
    top_k_clusters: int = 32
    epochs: float = 2.0
    lr: float = 1e-3
    batch_seqs: int = 4
    n_neg: int = 2048  # random negatives per batch in the sampled softmax
    w_cluster: float = 0.5
    w_hidden: float = 1.0
    w_soft: float = 0.0  # soft-label CE against the target's top-8 distribution (0 = argmax labels only)
    ckpt_every: int = 50
    seed: int = 0
    max_steps: int = 0  # 0 = from epochs
    qtype: str = "q8_0"
    init: str = ""  # an assistant GGUF to start from (its weights, centroids and token_ordering)
    grow: bool = False  # --init may be narrower (n_ff) or shallower (n_layer): see grow_from
    kv_cache: str = ""  # "K/V" cache types: also train on the source K/V as that cache hands them back
    kv_cache_p: float = 0.5  # the share of sequences (drawn per batch) that see the round-tripped K/V
    extra: dict = field(default_factory=dict)


class TorchAssistant(torch.nn.Module):
    """The assistant with the target's frozen embedding (input and head rows)."""

    def __init__(self, cfg: AssistantConfig, E: torch.Tensor, out_norm_init: torch.Tensor | None, seed: int = 0):
        super().__init__()
        self.cfg = c = cfg
        torch.manual_seed(seed)
        self.register_buffer("E", E, persistent=False)
        d, db = c.n_embd, c.n_embd_backbone

        def lin(o: int, i: int, scale: float = 1.0) -> torch.nn.Parameter:
            return torch.nn.Parameter(torch.randn(o, i) * scale / math.sqrt(i))

        pre = lin(d, 2 * db, 0.3)
        if d == db:
            pre.data[:, db:] += torch.eye(d)  # start as "pass h_prev through"
        self.pre = pre
        post = lin(db, d, 0.1)
        if d == db:
            post.data += torch.eye(d)
        self.post = post
        self.out_norm = torch.nn.Parameter(out_norm_init.clone() if out_norm_init is not None else torch.ones(d))
        qd = c.n_head * c.head_dim
        self.layers = torch.nn.ModuleList()
        for _ in range(c.n_layer):
            m = torch.nn.Module()
            m.attn_norm = torch.nn.Parameter(torch.ones(d))
            m.attn_q = lin(qd, d)
            m.attn_q_norm = torch.nn.Parameter(torch.ones(c.head_dim))
            m.attn_output = lin(d, qd, 0.5)
            m.post_attention_norm = torch.nn.Parameter(torch.ones(d) * 0.3)
            m.ffn_norm = torch.nn.Parameter(torch.ones(d))
            m.ffn_gate = lin(c.n_ff, d)
            m.ffn_up = lin(c.n_ff, d)
            m.ffn_down = lin(d, c.n_ff, 0.5)
            m.post_ffw_norm = torch.nn.Parameter(torch.ones(d) * 0.3)
            self.layers.append(m)
        self.centroids = torch.nn.Parameter(torch.zeros(max(c.n_centroids, 1), d))
        self.token_embd = None
        if not c.use_target_embeddings:
            self.token_embd = torch.nn.Parameter(torch.randn(c.n_vocab, d) / math.sqrt(d))

    def rms(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + self.cfg.eps) * w

    def head_rows(self, ids: torch.Tensor) -> torch.Tensor:
        return self.E[ids] if self.token_embd is None else self.token_embd[ids]

    def step(self, tok: torch.Tensor, h_prev: torch.Tensor, pos: torch.Tensor, kv: list, masks: list):
        """tok (B, L), h_prev (B, L, db), pos (B, L); kv[i] = (K, V) (B, L, n_kv, hd) of layer i's
        source; masks[i] (B, 1, L, L) visible cells. Returns (h_inner, next h_prev)."""
        c = self.cfg
        B, L = tok.shape
        e = self.E[tok] * math.sqrt(c.n_embd_backbone)
        x = torch.cat([e, h_prev], -1) @ self.pre.T
        for i, m in enumerate(self.layers):
            h = self.rms(x, m.attn_norm)
            q = self.rms((h @ m.attn_q.T).view(B, L, c.n_head, c.head_dim), m.attn_q_norm)
            q = rope_t(q, pos, c.rope_base_swa if c.sliding[i] else c.rope_base)
            K, V = kv[i]
            g = c.n_head // K.shape[2]
            o = F.scaled_dot_product_attention(
                q.transpose(1, 2), K.repeat_interleave(g, 2).transpose(1, 2), V.repeat_interleave(g, 2).transpose(1, 2),
                attn_mask=masks[i], scale=1.0 / math.sqrt(c.head_dim))
            o = o.transpose(1, 2).reshape(B, L, -1) @ m.attn_output.T
            x = x + self.rms(o, m.post_attention_norm)
            h = self.rms(x, m.ffn_norm)
            a = F.gelu(h @ m.ffn_gate.T, approximate="tanh") * (h @ m.ffn_up.T)
            x = x + self.rms(a @ m.ffn_down.T, m.post_ffw_norm)
        h_inner = self.rms(x, self.out_norm)
        return h_inner, h_inner @ self.post.T

    def tensors(self) -> dict[str, np.ndarray]:
        """GGUF tensor name -> float32 array."""
        def n(p: torch.Tensor) -> np.ndarray:
            return p.detach().float().numpy().copy()

        t = {"mtp.pre_projection.weight": n(self.pre), "mtp.post_projection.weight": n(self.post),
             "output_norm.weight": n(self.out_norm)}
        if self.cfg.n_centroids:
            t["mtp.centroids.weight"] = n(self.centroids)
        if self.token_embd is not None:
            t["token_embd.weight"] = n(self.token_embd)
        for i, m in enumerate(self.layers):
            for name, p in m.named_parameters():
                t[f"blk.{i}.{name}.weight"] = n(p)
        return t


PARAM_OF = {"mtp.pre_projection.weight": "pre", "mtp.post_projection.weight": "post",
            "output_norm.weight": "out_norm", "mtp.centroids.weight": "centroids"}


def load_init(path: str, cfg: AssistantConfig, target_arch: str, grow: bool = False) -> dict[str, np.ndarray]:
    """An existing assistant's tensors (float32, dequantized) and token_ordering (``order``), to
    fine-tune from (``--init``); it must have this run's shape (with ``grow``: no more layers and no
    wider FFN than this run's, the rest equal — grow_from fills the difference). The file's q8_0 rounding becomes
    the starting point: the first steps lift it back to float32."""
    from turbospec.engine.models.gemma4_assistant import Gemma4Assistant

    a = Gemma4Assistant.load(path)
    c = a.cfg
    mine = (cfg.n_layer, cfg.n_embd, cfg.n_ff, cfg.n_head, cfg.n_vocab, cfg.n_centroids, cfg.use_target_embeddings)
    theirs = (c.n_layer, c.n_embd, c.n_ff, c.n_head, c.n_vocab, c.n_centroids, c.use_target_embeddings)
    rest_equal = mine[1:2] + mine[3:] == theirs[1:2] + theirs[3:]  # all but layers and FFN width
    grows = grow and rest_equal and cfg.n_layer >= c.n_layer and cfg.n_ff >= c.n_ff
    if (mine != theirs and not grows) or c.requires_target_arch != target_arch or a.token_ordering is None:
        hint = ("with --grow, --layers/--n-ff may only be larger than the file's and the rest must match" if grow
                else "pass matching --layers/--n-ff/--heads, --grow to widen or deepen it, or another --init")
        raise UserError(
            f"--init {path}: its shape (layers, width, ffn, heads, vocab, centroids, target rows) {theirs} "
            f"differs from this run's {mine}; {hint}"
        )
    t = a.named_tensors()
    t = {k: np.ascontiguousarray(v, np.float32) for k, v in t.items()}
    t["order"] = a.token_ordering
    t["n_layer"], t["n_ff"] = c.n_layer, c.n_ff
    return t


def grow_from(model: TorchAssistant, init: dict) -> None:
    """Copy a smaller --init assistant into ``model`` so that the larger model computes exactly the
    same function (Net2Net-style growth, --grow); with equal shapes it is a plain copy.

    - FFN width n_ff0 -> n_ff: the old units keep their rows; the new units' ffn_gate/ffn_up rows
      keep the fresh random init and their ffn_down columns are zero, so they add nothing until
      training moves those columns (they get gradients at once: the new units' activations are not
      zero).
    - Depth n_layer0 -> n_layer: old layers 0..n_layer0-2 stay in place, the old last (global) layer
      becomes the new last layer, and the new sliding layers sit between them. A new layer's
      post_attention_norm and post_ffw_norm weights are zero, so x passes through it unchanged;
      their gradient (normalised branch output x upstream gradient) is not zero, so the layer opens
      up smoothly. A zero ffn_down instead would not do: the post-norm rescales any small branch
      output to unit RMS, a jump after the first step.
    """
    n0, f0 = int(init["n_layer"]), int(init["n_ff"])
    n1 = model.cfg.n_layer
    where = {i: (i if i < n0 - 1 else n1 - 1) for i in range(n0)}
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, arr in init.items():
            if name in PARAM_OF:
                params[PARAM_OF[name]].copy_(torch.from_numpy(arr))
            elif name.startswith("blk."):
                _, i, rest = name.split(".", 2)
                key = f"layers.{where[int(i)]}.{rest.removesuffix('.weight')}"
                p, a = params[key], torch.from_numpy(arr)
                if rest.startswith(("ffn_gate", "ffn_up")):
                    p[:f0].copy_(a)
                elif rest.startswith("ffn_down"):
                    p.zero_()
                    p[:, :f0].copy_(a)
                else:
                    p.copy_(a)
        for j in set(range(n1)) - set(where.values()):
            params[f"layers.{j}.post_attention_norm"].zero_()
            params[f"layers.{j}.post_ffw_norm"].zero_()


def cache_view(s: dict, type_k: str, type_v: str) -> dict[str, np.ndarray]:
    """A sequence's source-layer K/V (k_s, v_s, k_g, v_g) as a type_k/type_v cache hands them to the
    assistant at inference (LayerKV.roundtrip: encoded, decoded, unrotated), as f16 like the shards.
    Only the K/V change: the target's own hidden states over such a cache are not re-run."""
    from turbospec.engine.kv.cache import KVConfig, LayerKV

    out = {}
    for kn, vn in (("k_s", "v_s"), ("k_g", "v_g")):
        if kn in s:
            k = s[kn].astype(np.float32)
            lay = LayerKV(0, k.shape[1], k.shape[2], False, 1 << 30, KVConfig(type_k=type_k, type_v=type_v))
            kh, vh = lay.roundtrip(k, s[vn].astype(np.float32), np.arange(len(k)))
            out[kn], out[vn] = kh.astype(np.float16), vh.astype(np.float16)
    return out


def make_batch(seqs: list[dict], cfg: AssistantConfig, target_cfg: Gemma3Config, K: int) -> dict:
    """Pad sequences to one length; per step k the inputs, labels and masks."""
    B = len(seqs)
    L = max(len(s["tokens"]) for s in seqs)
    db = cfg.n_embd_backbone
    tok = torch.zeros(B, L, dtype=torch.long)
    H = torch.zeros(B, L, db)
    am = torch.full((B, L), -1, dtype=torch.long)
    topk = torch.full((B, L, TOPK), -1, dtype=torch.long)
    topv = torch.zeros(B, L, TOPK)
    lens = torch.tensor([len(s["tokens"]) for s in seqs])
    kvs = {}
    for b, s in enumerate(seqs):
        n = len(s["tokens"])
        tok[b, :n] = torch.from_numpy(s["tokens"].astype(np.int64))
        H[b, :n] = torch.from_numpy(s["h"].astype(np.float32))
        am[b, :n] = torch.from_numpy(s["argmax"].astype(np.int64))
        topk[b, :n] = torch.from_numpy(s["topk"].astype(np.int64))
        if "topv" in s:
            topv[b, :n] = torch.from_numpy(s["topv"].astype(np.float32))
    for name in ("k_s", "v_s", "k_g", "v_g"):
        if name in seqs[0]:
            arr = torch.zeros((B, L) + seqs[0][name].shape[1:])
            for b, s in enumerate(seqs):
                arr[b, : len(s[name])] = torch.from_numpy(s[name].astype(np.float32))
            kvs[name] = arr
    kv = [(kvs["k_s"], kvs["v_s"]) if s else (kvs["k_g"], kvs["v_g"]) for s in cfg.sliding]
    j = torch.arange(L)
    t = torch.arange(L)
    steps = []
    for k in range(K):
        p = t + 1 + k  # position of the input token for anchor t
        pc = p.clamp(max=L - 1)
        valid = (p[None] < lens[:, None]) & (am[:, pc] >= 0)
        base = (j[None, :] <= t[:, None])[None] & (j[None, None, :] < lens[:, None, None])  # (B, L, L)
        masks = []
        for s in cfg.sliding:
            m = base & ((p[:, None] - j[None, :]) < target_cfg.window)[None] if s else base
            # padded anchors may see no cell: give them cell 0 (their loss is masked) so no row is NaN
            m = m | (~m.any(-1, keepdim=True) & (j == 0))
            masks.append(m[:, None])
        steps.append({"tok": tok[:, pc], "pos": p[None].expand(B, L), "label": am[:, pc], "valid": valid,
                      "topk": topk[:, pc], "topv": topv[:, pc], "h_target": H[:, pc], "masks": masks})
    return {"H": H, "kv": kv, "steps": steps}


def soft_ce(logits: torch.Tensor, cand: torch.Tensor, topk: torch.Tensor, topv: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the assistant's softmax over the candidates (logits (n, len(cand)), cand
    sorted and holding every recorded id) against the target's distribution renormalised over its
    recorded top-8 (topk ids, -1 = none; topv their logits): -sum_i p_i log q(topk_i), averaged over
    rows. Richer than the argmax label alone: it says how close the runner-up tokens were."""
    ok = topk >= 0
    p = torch.softmax(topv.masked_fill(~ok, float("-inf")), -1)
    logq = torch.log_softmax(logits, -1).gather(1, torch.searchsorted(cand, topk.clamp(min=0)))
    return -(p * logq).masked_fill(~ok, 0.0).sum(-1).mean()


def batch_loss(model: TorchAssistant, batch: dict, cluster_of: torch.Tensor | None, tc: TrainConfig,
               gen: torch.Generator) -> tuple[torch.Tensor, dict]:
    c = model.cfg
    h_prev = batch["H"]
    total = torch.zeros(())
    stats = {}
    for k, st in enumerate(batch["steps"]):
        h_inner, h_next = model.step(st["tok"], h_prev, st["pos"], batch["kv"], st["masks"])
        h_prev = h_next
        v = st["valid"]
        if not bool(v.any()):
            continue
        hi, lab = h_inner[v], st["label"][v]
        cand = torch.cat([st["topk"][v].reshape(-1), lab, torch.randint(c.n_vocab, (tc.n_neg,), generator=gen)])
        cand = torch.unique(cand[cand >= 0])
        logits = hi @ model.head_rows(cand).T
        if c.softcap:
            logits = torch.tanh(logits / c.softcap) * c.softcap
        li = torch.searchsorted(cand, lab)
        l_tok = F.cross_entropy(logits, li)
        ht = st["h_target"][v]
        l_hid = ((hi - ht) ** 2).mean() / (ht * ht).mean().clamp(min=1e-6)
        loss = l_tok + tc.w_hidden * l_hid
        if tc.w_soft:
            l_soft = soft_ce(logits, cand, st["topk"][v], st["topv"][v])
            loss = loss + tc.w_soft * l_soft
            stats[f"soft{k}"] = float(l_soft.detach())
        if cluster_of is not None:
            l_cl = F.cross_entropy(hi @ model.centroids.T, cluster_of[lab])
            loss = loss + tc.w_cluster * l_cl
            stats[f"cl{k}"] = float(l_cl.detach())
        total = total + loss
        stats[f"tok{k}"] = float(l_tok.detach())
        stats[f"acc{k}"] = float((logits.argmax(-1) == li).float().mean())
    return total / len(batch["steps"]), stats


def assistant_config_for(target_cfg: Gemma3Config, target_arch: str, tc: TrainConfig) -> AssistantConfig:
    nc, _ = cluster_geometry(target_cfg.n_vocab)
    has_s, has_g = any(target_cfg.sliding), not all(target_cfg.sliding)
    sliding = [has_s and (i < tc.n_layer - 1 or not has_g) for i in range(tc.n_layer)]
    return AssistantConfig(
        n_layer=tc.n_layer, n_embd=target_cfg.n_embd, n_ff=tc.n_ff, n_head=tc.n_head, head_dim=target_cfg.head_dim,
        n_vocab=target_cfg.n_vocab, n_embd_backbone=target_cfg.n_embd, eps=target_cfg.eps,
        rope_base=target_cfg.rope_base, rope_base_swa=target_cfg.rope_base_swa, window=target_cfg.window,
        sliding=sliding, n_centroids=nc, centroid_top_k=min(tc.top_k_clusters, nc), use_ordered_embeddings=False,
        use_target_embeddings=True, requires_target_arch=target_arch,
    )


def train(model_path: Path, work: Path, tc: TrainConfig, resume: bool,
          log=print) -> tuple[TorchAssistant, np.ndarray, dict]:
    """Phases 2-3, resumable. Returns (model, token_ordering, summary)."""
    man = read_manifest(work)
    if not man or not man["shards"]:
        raise UserError(f"no training data in {work}; run the data phase first (train-assistant without --phase train)")
    g = GGUFFile.open(model_path)
    tcfg = Gemma3Config.from_gguf(g)
    E = torch.from_numpy(np.ascontiguousarray(g.dequantize("token_embd.weight"), np.float32))
    cfg = assistant_config_for(tcfg, g.arch, tc)
    if tc.n_head % tcfg.n_head_kv:
        raise UserError(f"--heads {tc.n_head} must be a multiple of the target's KV heads ({tcfg.n_head_kv})")
    source_layers(cfg.sliding, tcfg.sliding)
    clusters = work / "clusters.npz"
    init = None
    if tc.init and not (resume and (work / CKPT).exists()):
        init = load_init(tc.init, cfg, g.arch, tc.grow)
    if init is not None:  # its clusters are the ones its weights were trained with: resumes use them too
        cent, order = init["mtp.centroids.weight"], init["order"]
        np.savez(work / "clusters.tmp.npz", centroids=cent, order=order)
        (work / "clusters.tmp.npz").replace(clusters)
    elif clusters.exists():
        z = np.load(clusters)
        cent, order = z["centroids"], z["order"]
    else:
        t0 = time.perf_counter()
        cent, order = balanced_kmeans(E.numpy(), cfg.n_centroids, seed=tc.seed, log=log)
        np.savez(work / "clusters.tmp.npz", centroids=cent, order=order)
        (work / "clusters.tmp.npz").replace(clusters)
        log(f"clusters: {cfg.n_centroids} x {cfg.n_vocab // cfg.n_centroids} in {time.perf_counter() - t0:.1f} s")
    cluster_of = torch.empty(cfg.n_vocab, dtype=torch.long)
    cluster_of[torch.from_numpy(order)] = torch.arange(cfg.n_vocab) // (cfg.n_vocab // cfg.n_centroids)
    # output_norm starts at ones: starting from the target's (large) final-norm weights made a
    # randomly-directed h_inner score tokens with logits of spread ~100 (CE ~100 on the default model)
    model = TorchAssistant(cfg, E, None, tc.seed)
    model.centroids.data = torch.from_numpy(cent.copy())
    if init is not None:
        grow_from(model, init)
        grown = (init["n_layer"], init["n_ff"]) != (cfg.n_layer, cfg.n_ff)
        log(f"train: starting from {tc.init} (its weights, centroids and token_ordering)" + (
            f", grown from {init['n_layer']} layers x FFN {init['n_ff']} to {cfg.n_layer} x {cfg.n_ff} "
            "(the new units and layers start as no-ops)" if grown else ""))
    seqs = [s for s in load_shards(work, man) if (s["argmax"] >= 0).sum() > 0]
    n_tok = sum(int((s["argmax"] >= 0).sum()) for s in seqs)
    if tc.w_soft and not all("topv" in s for s in seqs):
        raise UserError(f"--soft-weight needs the target's top-8 logits (topv), which some shard in {work} does "
                        "not record (written by an older turbospec); pass --soft-weight 0 or regenerate the data")
    views = []
    if tc.kv_cache:
        t0 = time.perf_counter()
        views = [cache_view(s, *tc.kv_cache.split("/")) for s in seqs]
        log(f"train: source K/V through a {tc.kv_cache} cache for {tc.kv_cache_p:.0%} of the sequences "
            f"({time.perf_counter() - t0:.0f} s)")
    n_batches = max(1, math.ceil(len(seqs) / tc.batch_seqs))
    total = tc.max_steps or max(1, int(tc.epochs * n_batches))
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=0.0)
    step = 0
    ck = work / CKPT
    if resume and ck.exists():
        st = torch.load(ck, weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        step = st["step"]
        log(f"train: resumed at step {step}/{total}")
    gen = torch.Generator().manual_seed(tc.seed + step)
    rng = np.random.default_rng(tc.seed + step)
    hist = []
    t0 = time.perf_counter()

    def save():
        tmp = ck.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "cfg": asdict(cfg)}, tmp)
        tmp.replace(ck)

    while step < total:
        perm = rng.permutation(len(seqs))
        for a in range(0, len(perm), tc.batch_seqs):
            if step >= total:
                break
            lr = tc.lr * min(1.0, (step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * step / total))
            for pg in opt.param_groups:
                pg["lr"] = lr
            chosen = [seqs[i] for i in perm[a : a + tc.batch_seqs]]
            if views:  # these sequences read the K/V the quantized cache would give them
                chosen = [dict(sq, **views[i]) if rng.random() < tc.kv_cache_p else sq
                          for sq, i in zip(chosen, perm[a : a + tc.batch_seqs], strict=True)]
            batch = make_batch(chosen, cfg, tcfg, tc.draft_steps)
            loss, stats = batch_loss(model, batch, cluster_of, tc, gen)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            hist.append(float(loss.detach()))
            if step % 10 == 0 or step == total:
                s = " ".join(f"{k}={v:.3f}" for k, v in sorted(stats.items()))
                log(f"train: step {step}/{total} loss {hist[-1]:.4f} {s} ({time.perf_counter() - t0:.0f} s)")
            if step % tc.ckpt_every == 0:
                save()
    save()
    return model, order, {"n_tokens": n_tok, "n_seqs": len(seqs), "steps": step, "losses": hist,
                          "shards": shard_ids(work, man)}


def shard_ids(work: Path, man: dict) -> list[str]:
    """One id per shard, 'HASH:nTOKENS' (HASH = blake2b of its token ids, seed and job ids): the same
    shard has the same id in any work folder, so a fine-tune counts only data its --init has not seen."""
    ids = []
    for s in man["shards"]:
        t = np.ascontiguousarray(np.load(work / s["file"])["tokens"], np.int64)
        h = hashlib.blake2b(t.tobytes(), digest_size=8)
        h.update(f"seed {s['seed']} jobs {s['jobs']}".encode())  # two jobs may write the same text
        ids.append(f"{h.hexdigest()}:n{s['n_tokens']}")
    return ids


def count_shard_tokens(ids) -> int:
    """Target tokens in a set of shard ids (each ends in :nTOKENS); see gemma4_assistant."""
    from turbospec.engine.models.gemma4_assistant import count_shard_tokens as count

    return count(ids)


def write_gguf(model: TorchAssistant, order: np.ndarray, out: Path, tokens: list[str], qtype: str,
               extra: dict | None = None) -> Path:
    tmp = out.with_name(out.name + ".tmp")
    write_assistant_gguf(tmp, model.cfg, model.tensors(), order.astype(np.int32), tokens, qtype=qtype,
                         extra_keys=extra)
    tmp.replace(out)
    return out
