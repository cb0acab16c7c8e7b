"""Int8 against float activations (engine/native/q8act.c; TURBOSPEC_ACT_INT8) on the default model:
teacher-forced decode over the float path's greedy tokens on the first 6 shipped prompts, 64 steps
each: top-1 agreement, mean KL(float || int8), and how long the two greedy continuations agree.

    python benchmarks/act_int8_quality.py
"""

import json
from pathlib import Path

import numpy as np

from turbospec.engine import linear
from turbospec.engine.generate import Session
from turbospec.engine.loader import load_model, load_tokenizer

N = 64


def run(model, ids, forced=None):
    s = Session(model)
    lg = s.prefill(ids)
    out, logits = [], []
    for i in range(N):
        row = np.asarray(lg).reshape(-1, lg.shape[-1])[-1].astype(np.float64)
        logits.append(row)
        t = int(np.argmax(row)) if forced is None else forced[i]
        out.append(t)
        lg = s.step([t])
    return out, logits


def softmax(a):
    p = np.exp(a - a.max())
    return p / p.sum()


def main() -> int:
    model = load_model(None, quiet=True)
    tok = load_tokenizer(model)
    path = Path(__file__).resolve().parents[1] / "engine" / "data" / "prompts.jsonl"
    prompts = [json.loads(line)["prompt"] for line in path.read_text().splitlines() if line.strip()][:6]
    kl = top1 = n = 0
    prefix = []
    for p in prompts:
        ids = tok.encode(p)
        linear.ACT_INT8 = False
        ft, fl = run(model, ids)
        linear.ACT_INT8 = True
        _, il = run(model, ids, forced=ft)
        gt, _ = run(model, ids)
        k = next((i for i, (a, b) in enumerate(zip(ft, gt, strict=True)) if a != b), N)
        prefix.append(k)
        for a, b in zip(fl, il, strict=True):
            pa, pb = softmax(a), softmax(b)
            kl += float(np.sum(pa * (np.log(pa + 1e-30) - np.log(pb + 1e-30))))
            top1 += int(np.argmax(a) == np.argmax(b))
            n += 1
    print(f"{len(prompts)} prompts x {N} decode steps: top-1 agreement {top1}/{n} = {100 * top1 / n:.1f}%, "
          f"mean KL(float || int8) {kl / n:.5f} nats; greedy continuations identical for the first "
          f"{prefix} tokens (of {N})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
