"""Weight averaging of MTP assistants of one shape ("model soup"): out = sum_i w_i x file_i.

A fine-tune and the file it started from lie in one basin, and their average often predicts
better than either (the shipped assistant is the ninth leg's file averaged 0.5/0.5 with a tenth
leg fine-tuned from it on fresh data; README "How it was built"). No torch: the files are read
with the engine's loader (dequantized to float32), averaged, and written again in the fork's
schema (q8_0 matrices by default, as train-assistant writes them).

Provenance: the output records the union of the inputs' shard ids, the larger step count, and
``turbospec.train.averaged_from`` (one "NAME:WEIGHT" string per input). Target tokens that an
input records beyond its shard ids (data from before files recorded shards) are counted once, as
the largest such amount: averaged files are meant to share their lineage.
"""

from __future__ import annotations

from dataclasses import astuple
from pathlib import Path

import numpy as np

from turbospec.engine.gguf import GGUFFile
from turbospec.engine.models.gemma4_assistant import (
    Gemma4Assistant,
    count_shard_tokens,
    read_train_record,
    write_assistant_gguf,
)
from turbospec.errors import UserError


def _read(path: Path) -> tuple[Gemma4Assistant, dict[str, np.ndarray], dict]:
    """The assistant (validated on its own), its matrices as float32 and its training record."""
    a = Gemma4Assistant.load(path)
    tokens, steps, ids = read_train_record(path)
    g = GGUFFile.open(path)
    try:
        name = str(g.get("general.name", f"MTP assistant {path.name}"))
    finally:
        g.close()
    return a, a.named_tensors(), {"tokens": tokens, "steps": steps, "shards": ids or [], "name": name}


def average_tensors(tensors: list[dict[str, np.ndarray]], weights: list[float]) -> dict[str, np.ndarray]:
    """sum_i w_i x tensors_i, name by name, accumulated in float64 (the plain definition)."""
    out = {}
    for name in tensors[0]:
        acc = np.zeros(tensors[0][name].shape, np.float64)
        for t, w in zip(tensors, weights, strict=True):
            acc += w * t[name].astype(np.float64)
        out[name] = acc.astype(np.float32)
    return out


def average_assistants(paths: list[str | Path], weights: list[float] | None, out: str | Path,
                       qtype: str = "q8_0") -> Path:
    paths = [Path(p) for p in paths]
    if len(paths) < 2:
        raise UserError("average: give at least two assistant GGUFs to average")
    if weights is None:
        weights = [1.0 / len(paths)] * len(paths)
    if len(weights) != len(paths):
        raise UserError(f"average: {len(weights)} weights for {len(paths)} files; give one --weights value per file")
    if any(not np.isfinite(w) or w <= 0 for w in weights):
        raise UserError(f"average: weights must be positive numbers, got {weights}")
    s = float(sum(weights))
    weights = [w / s for w in weights]
    read = [_read(p) for p in paths]
    a0, _, _ = read[0]
    for p, (a, _, _) in zip(paths[1:], read[1:], strict=True):
        if astuple(a.cfg) != astuple(a0.cfg):
            raise UserError(f"average: {p.name} has another shape or configuration than {paths[0].name}; "
                            "only assistants of one shape (e.g. a fine-tune and its --init file) can be averaged")
        if a.tokens != a0.tokens:
            raise UserError(f"average: {p.name} has another vocabulary than {paths[0].name}; both must be built "
                            "for the same target")
        if (a.token_ordering is None) != (a0.token_ordering is None) or (
                a.token_ordering is not None and not np.array_equal(a.token_ordering, a0.token_ordering)):
            raise UserError(f"average: {p.name} has another token_ordering (centroid clusters) than "
                            f"{paths[0].name}; average only files that share their clusters (one lineage)")
    t = average_tensors([r[1] for r in read], weights)
    recs = [r[2] for r in read]
    shards = sorted(set().union(*[set(r["shards"]) for r in recs]))
    legacy = max(max(0, r["tokens"] - count_shard_tokens(r["shards"])) for r in recs)
    extra = {
        "general.name": recs[-1]["name"],
        "general.source.description": "distilled from the target model (a Gemma model)",
        "turbospec.train.target_tokens": legacy + count_shard_tokens(shards),
        "turbospec.train.steps": max(r["steps"] for r in recs),
        "turbospec.train.averaged_from": [f"{p.name}:{w:.4f}" for p, w in zip(paths, weights, strict=True)],
    }
    if shards:
        extra["turbospec.train.shards"] = shards
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    write_assistant_gguf(tmp, a0.cfg, t, a0.token_ordering, a0.tokens, qtype=qtype, extra_keys=extra)
    Gemma4Assistant.load(tmp)  # the written file must load and pass its own checks
    tmp.replace(out)
    return out
