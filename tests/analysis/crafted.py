"""Crafted inputs with figures simple enough to compute by hand (see the tests)."""

from __future__ import annotations

import json
from pathlib import Path

from turbospec import results as R

# decode tok/s of the two repetitions per configuration (chat prompt, code prompt -> same values)
BASE_TOK_S = {"f16": (100.0, 110.0), "q8_0": (90.0, 94.0)}  # spec none, type_k = type_v
MTP = {  # B -> (tok/s reps, per_position, acceptance, tau, draft_us, verify_us)
    2: ((150.0, 160.0), [0.8], 0.8, 1.8, 1000.0, 11000.0),
    3: ((180.0, 190.0), [0.8, 0.6], 0.7, 2.4, 2000.0, 12000.0),
    4: ((170.0, 170.0), [0.8, 0.6, 0.3], 0.5667, 2.7, 3000.0, 14000.0),
}
PLAIN_STEP_US = 10_000.0  # f16 baseline's plain step


def rows() -> list[dict]:
    out = []
    for kind, idx in (("chat", 0), ("code", 1)):
        for t, reps in BASE_TOK_S.items():
            for rep, ts in enumerate(reps):
                out.append(
                    R.example_row(
                        type_k=t, type_v=t, repetition=rep, decode_tok_s=ts, avg_ts=ts, prompt_kind=kind,
                        prompt_index=idx, plain_step_us=PLAIN_STEP_US if t == "f16" else None,
                        kv_bytes_per_token=18432.0 if t == "f16" else 9792.0,
                    )
                )  # fmt: skip
        for b, (reps, pp, acc, tau, du, vu) in MTP.items():
            for rep, ts in enumerate(reps):
                out.append(
                    R.example_row(
                        spec="mtp", draft_block_size=b, draft_max=16, pipeline_depth=2, repetition=rep,
                        decode_tok_s=ts, avg_ts=ts, per_position=pp, draft_acceptance_rate=acc, tau=tau,
                        draft_us=du, verify_us=vu, prompt_kind=kind, prompt_index=idx,
                    )
                )  # fmt: skip
    return out


PPL = [
    {"ppl": 10.0, "n_tokens": 512, "ctx": 512, "type_k": "f16", "type_v": "f16", "kld_mean": 0.0,
     "top1_agreement": 1.0, "model": "model.gguf"},
    {"ppl": 10.5, "n_tokens": 512, "ctx": 512, "type_k": "q8_0", "type_v": "q8_0", "kld_mean": 0.002,
     "top1_agreement": 0.985, "model": "model.gguf"},
]  # fmt: skip


def write_rows(path: Path, rows_: list[dict]) -> Path:
    for r in rows_:
        R.append_row(path, r)
    return path


def write_ppl(path: Path) -> Path:
    path.write_text("\n".join(json.dumps(p) for p in PPL) + "\n")
    return path


T0 = 1_780_000_000_000_000


def turbospec_trace(path: Path) -> Path:
    """A clocked turbospec trace, B = 3: rounds accept 2, 0, 1, 2 of 2 drafted (+1 skip)."""
    lines = [
        {"evt": "run_start", "t_us": T0, "run": "r1", "schema": "turbospec.trace/1", "model": "m.gguf",
         "backend": "numpy", "device": "cpu", "type_k": "f16", "type_v": "f16", "spec": "mtp",
         "draft_block_size": 3, "draft_max": 16, "pipeline_depth": 1},
        {"evt": "prefill", "t_us": T0 + 100_000, "run": "r1", "n_tokens": 10, "us": 100_000},
    ]  # fmt: skip
    t = T0 + 100_000
    for it, (na, h) in enumerate(((2, 100.0), (0, 110.0), (1, 120.0), (2, 130.0))):
        t += 10_000
        lines.append(
            {"evt": "mtp_draft", "iter": it, "path": "sync", "seq_id": 0, "id_last": 1, "h_idx": -1,
             "attn_pos": 10 + it, "n_steps": 2, "h_l2": h, "drafts": [7, 8], "t_us": t, "run": "r1",
             "drafter": "mtp", "draft_us": 2000}
        )  # fmt: skip
        t += 40_000
        lines.append(
            {"evt": "mtp_accept", "iter": it, "n_accepted": na, "n_drafted_prev": 2, "t_us": t, "run": "r1",
             "verify_us": 38000, "n_emitted": na + 1, "pos": 20 + it}
        )  # fmt: skip
    path.write_text("\n".join(json.dumps(x, separators=(",", ":")) for x in lines) + "\n")
    return path


FORK_LINES = """\
{"evt":"mtp_draft","iter":0,"path":"sync","seq_id":0,"id_last":5,"h_idx":-1,"attn_pos":10,"n_steps":2,"h_l2":140.0000,"drafts":[1,2]}
{"evt":"mtp_accept","iter":0,"n_accepted":2,"n_drafted_prev":2}
{"evt":"mtp_draft","iter":1,"path":"lazy","seq_id":0,"id_last":6,"h_idx":2,"attn_pos":13,"n_steps":2,"h_l2":150.0000,"drafts":[3,4]}
{"evt":"mtp_accept","iter":1,"n_accepted":0,"n_drafted_prev":2}
{"evt":"mtp_draft","iter":2,"path":"lazy","seq_id":0,"id_last":7,"h_idx":0,"attn_pos":14,"n_steps":2,"h_l2":160.0000,"drafts":[5,6]}
{"evt":"mtp_accept","iter":2,"n_accepted":1,"n_drafted_prev":2}
{"evt":"mtp_draft","iter":3,"path":"skip-nsteps","seq_id":0,"id_last":8,"h_idx":-1,"attn_pos":16,"n_steps":0,"h_l2":0.0000,"drafts":[]}
"""


def fork_trace(path: Path, half_line: bool = False) -> Path:
    path.write_text(FORK_LINES + ('{"evt":"mtp_acc' if half_line else ""))
    return path
