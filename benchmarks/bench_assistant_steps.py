"""How accurate the MTP assistant is at each draft step, apart from any speculative loop: the
ceiling its acceptance can reach.

    python benchmarks/bench_assistant_steps.py [--mtp-head GGUF] [-n N] [--per-kind K] [--steps S]
                                               [-t THREADS] [--json PATH]

Method: bench_spec.py's held-out prompts are decoded greedily by the target (plain decoding); the
whole text is then run through the target once, so the cache and the final-norm hidden states H
cover every position. For every anchor t in the generated part (id_last = token t+1, h_prev = H[t],
attn_pos = t — what the speculative loop hands the assistant after accepting position t), the
assistant runs S steps the way Gemma4Assistant.draft does, but fed the TRUE token at each step
(teacher forcing). Step k's draft is right when it equals token t+2+k. Reported per step k:

- teacher-forced accuracy: P(step k right | the true tokens before it) — what training measures
  (train-assistant's acc0/acc1/acc2);
- chained: P(steps 0..k all right) — the greedy loop's per-position acceptance p_k at B > k+1
  (the loop feeds step k its own draft, which equals the true token exactly when it was accepted);
- conditional: chained[k] / chained[k-1].

If the steps' errors were independent, chained[k] = prod(acc[0..k]); with acc ≈ 0.6 a step, B=3
acceptance (p0 + p1) / 2 is ≈ (0.6 + 0.36) / 2 = 48% — the gap to an 85% target is per-step
accuracy, not the loop. Napkin math: 10 prompts x 96 tokens ≈ 950 anchors x 4 steps of ~3.5 ms
≈ 15 s, plus the decodes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_spec import PROMPTS  # noqa: E402  (the same held-out prompts)


def step_accuracy(model, assistant, cache, tokens: list[int], H: np.ndarray, first: int, steps: int):
    """(right (n_anchors, steps) bool teacher-forced, chained (n_anchors, steps) bool) for anchors
    t = first .. len(tokens)-steps-2 of one fully-prefilled text."""
    right, chained = [], []
    for t in range(first, len(tokens) - steps - 1):
        h = H[t]
        r = []
        for k in range(steps):
            h_inner, h = assistant.step(model, cache, tokens[t + 1 + k], h, t, k)
            r.append(assistant.pick(h_inner, model)[0] == tokens[t + 2 + k])
        right.append(r)
        chained.append(np.logical_and.accumulate(r))
    return np.array(right, bool).reshape(-1, steps), np.array(chained, bool).reshape(-1, steps)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mtp-head", default=None, metavar="GGUF", help="assistant (default: the shipped one)")
    ap.add_argument("-n", "--n-predict", type=int, default=96, help="greedy tokens per prompt (default 96)")
    ap.add_argument("--per-kind", type=int, default=2, help="prompts per kind (1..2, default 2)")
    ap.add_argument("--steps", type=int, default=5, help="draft steps per anchor (default 5 = B 6)")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--json", default=None, metavar="PATH")
    args = ap.parse_args(argv)
    from turbospec.errors import UserError

    if not 1 <= args.steps <= 31 or args.n_predict < args.steps + 2 or not 1 <= args.per_kind <= 2:
        raise SystemExit("error: need 1 <= --steps <= 31, -n >= --steps + 2 and --per-kind 1 or 2")
    from turbospec.engine.backend import set_threads
    from turbospec.engine.generate import GenConfig, Session, generate
    from turbospec.engine.loader import load_model, load_tokenizer
    from turbospec.engine.spec.mtp import MTPDrafter

    set_threads(args.threads)
    try:
        model = load_model(quiet=True)
        tok = load_tokenizer(model)
        a = MTPDrafter.load(args.mtp_head, model, tok).assistant
    except UserError as e:
        raise SystemExit(f"error: {e}") from None
    seen: dict[str, int] = {}
    by_kind: dict[str, list] = {}
    for kind, text in PROMPTS:
        if seen.get(kind, 0) >= args.per_kind:
            continue
        seen[kind] = seen.get(kind, 0) + 1
        ids = tok.encode(text, add_bos=True, parse_special=True)
        gen = generate(model, tok, ids, GenConfig(n_predict=args.n_predict, ignore_eos=True)).tokens
        allt = ids + gen
        s = Session(model)
        H = np.concatenate([model.forward(allt[i : i + 64], s.cache, logits_rows=None)[1]
                            for i in range(0, len(allt), 64)])
        by_kind.setdefault(kind, []).append(step_accuracy(model, a, s.cache, allt, H, len(ids) - 1, args.steps))
    S = args.steps
    rows = {}
    for kind, parts in [("all", [p for v in by_kind.values() for p in v])] + list(by_kind.items()):
        right = np.concatenate([p[0] for p in parts])
        ch = np.concatenate([p[1] for p in parts])
        acc, chained = right.mean(0), ch.mean(0)
        cond = chained / np.maximum(np.r_[1.0, chained[:-1]], 1e-12)
        rows[kind] = {"anchors": len(right), "teacher_forced": acc.tolist(), "chained": chained.tolist(),
                      "conditional": cond.tolist(), "independent": np.cumprod(acc).tolist()}
    head = args.mtp_head or "the shipped assistant"
    print(f"MTP assistant step accuracy: {head}, {sum(seen.values())} held-out prompts x {args.n_predict} "
          f"greedy tokens, {rows['all']['anchors']} anchors\n")
    print("| kind | measure | " + " | ".join(f"step {k}" for k in range(S)) + " |")
    print("|---|---|" + "---|" * S)
    for kind, r in rows.items():
        for m, label in (("teacher_forced", "teacher-forced"), ("chained", "chained (= p_k)"),
                         ("conditional", "conditional"), ("independent", "prod(teacher-forced)")):
            if kind != "all" and m in ("conditional", "independent"):
                continue
            print(f"| {kind} | {label} | " + " | ".join(f"{100 * v:.1f}%" for v in r[m]) + " |")
    acc_b = {b: float(np.mean(rows["all"]["chained"][: b - 1])) for b in range(2, S + 2)}
    tau_b = {b: 1.0 + float(np.sum(rows["all"]["chained"][: b - 1])) for b in range(2, S + 2)}
    print("\nimplied greedy draft acceptance / τ by B: " +
          ", ".join(f"B{b} {100 * acc_b[b]:.1f}% / {tau_b[b]:.2f}" for b in acc_b))
    if args.json:
        Path(args.json).write_text(json.dumps({"head": head, "n_predict": args.n_predict, "rows": rows,
                                               "acceptance_by_B": acc_b, "tau_by_B": tau_b}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
