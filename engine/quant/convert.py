"""Quantize a GGUF's weights to TQ3_1S / TQ4_1S (GGML type ids 45 / 46, the numbering of the
llama.cpp fork AtomicBot-ai/atomic-llama-cpp-turboquant; other TurboQuant forks number them
differently).

Converted tensors are dequantized from their source type (gguf-py's ``gguf.quants``, or ours for
TQ sources) a slab of rows at a time and quantized with the vectorised quantizer; kept tensors are
copied byte for byte, and so are all key/values. The output is written to a temporary file next to
the destination and renamed into place only when complete, so an interrupted run leaves nothing.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize

from turbospec.errors import UserError

from . import tq
from .container import GGUFLayout, GGUFStreamWriter, Tensor, kv_string, open_layout, type_name
from .recipes import RECIPES, plan
from .tq_format import TQ_TYPE_BY_NAME, TQ_TYPES

SLAB_WEIGHTS = 1 << 22  # rows dequantized + quantized at a time: ~16 MiB of float32


class Progress(Protocol):
    def start(self, total_weights: int, n_tensors: int) -> None: ...
    def tensor(self, name: str, converting: bool) -> None: ...
    def advance(self, n_weights: int) -> None: ...


@dataclass
class QuantizeConfig:
    src: Path
    dst: Path
    type_name: str  # "tq3_1s" | "tq4_1s"
    recipe: str = "all"
    keep: list[str] = field(default_factory=list)
    embedding: bool = False  # also convert token_embd.weight
    force: bool = False


@dataclass
class QuantizeResult:
    dst: Path
    n_converted: int
    kept: Counter  # reason -> count
    bytes_in: int
    bytes_out: int
    weights_converted: int
    seconds: float
    converted_bytes_before: int = 0
    converted_bytes_after: int = 0


def _check_paths(cfg: QuantizeConfig) -> None:
    if not cfg.src.is_file():
        raise UserError(f"{cfg.src}: no such file; pass the path of a .gguf model")
    if cfg.dst.exists() and cfg.dst.resolve() == cfg.src.resolve():
        raise UserError(f"{cfg.dst} is the input file; choose another output path")
    if cfg.dst.exists() and not cfg.force:
        raise UserError(f"{cfg.dst} already exists; pass --force to overwrite it")
    if cfg.dst.exists() and cfg.dst.is_dir():
        raise UserError(f"{cfg.dst} is a directory; give an output file path")
    if not cfg.dst.parent.is_dir():
        raise UserError(f"{cfg.dst.parent}: no such directory for the output; create it first")


def _source_rows(layout: GGUFLayout, t: Tensor, r0: int, r1: int) -> np.ndarray:
    """float32 [r1 - r0, ne0] of a tensor's rows, from any type we can read."""
    raw = layout.raw(t)[r0:r1]
    if t.type_id in TQ_TYPES:
        return tq.dequantize(raw, t.type_id, (r1 - r0, t.ne[0]))
    if t.type_id == GGMLQuantizationType.F64:  # gguf.quants has no F64 path
        return raw.view("<f8").astype(np.float32).reshape(r1 - r0, t.ne[0])
    try:
        qtype = GGMLQuantizationType(t.type_id)
        out = gguf_dequantize(raw, qtype)
    except (ValueError, NotImplementedError, KeyError) as e:
        raise UserError(
            f"tensor {t.name} has type {type_name(t.type_id)}, which turbospec cannot convert; "
            f"keep it with --keep '{t.name}'"
        ) from e
    return np.asarray(out, dtype=np.float32).reshape(r1 - r0, t.ne[0])


def quantize_gguf(cfg: QuantizeConfig, progress: Progress | None = None) -> QuantizeResult:
    type_id = TQ_TYPE_BY_NAME.get(cfg.type_name.lower())
    if type_id is None:
        raise UserError(f"unknown weight type {cfg.type_name!r}; use tq4_1s or tq3_1s")
    if cfg.recipe not in RECIPES:
        raise UserError(f"unknown recipe {cfg.recipe!r}; choose one of: {', '.join(RECIPES)}")
    _check_paths(cfg)
    t0 = time.perf_counter()
    with open_layout(cfg.src) as layout:
        for t in layout.tensors:
            _ = t.nbytes  # unknown type ids and ragged rows fail here, before anything is written
        decisions = plan([(t.name, t.ne, t.type_id) for t in layout.tensors], cfg.recipe, cfg.keep, cfg.embedding)
        out_tensors: list[Tensor] = []
        convert: dict[str, bool] = {}
        kept: Counter = Counter()
        for t in layout.tensors:
            why = decisions[t.name]
            if why is None and t.type_id == type_id:
                why = "already " + type_name(type_id)
            convert[t.name] = why is None
            if why is not None:
                kept[why] += 1
            out_tensors.append(Tensor(t.name, t.ne, type_id if why is None else t.type_id, 0))
        to_do = [t for t in layout.tensors if convert[t.name]]
        first_of_type = {t.type_id: t for t in reversed(to_do)}
        for t in first_of_type.values():  # an unreadable source type fails before the output exists
            _source_rows(layout, t, 0, 1)
        kvs = [kv for kv in layout.kvs if not kv.key.startswith("turbospec.quantize.")]
        kvs += [
            kv_string("turbospec.quantize.type", type_name(type_id)),
            kv_string("turbospec.quantize.recipe", cfg.recipe + ("+embedding" if cfg.embedding else "")),
        ]
        tmp = cfg.dst.parent / f".{cfg.dst.name}.{os.getpid()}.tmp"
        total = sum(t.n_elements for t in to_do)
        if progress is not None:
            progress.start(total, len(layout.tensors))
        before = after = 0
        try:
            with open(tmp, "wb") as f:
                w = GGUFStreamWriter(f, kvs, out_tensors, layout.alignment)
                for t, ot in zip(layout.tensors, w.tensors, strict=True):
                    if progress is not None:
                        progress.tensor(t.name, convert[t.name])
                    if not convert[t.name]:
                        w.write_data(layout.raw(t))
                        continue
                    before += t.nbytes
                    after += ot.nbytes
                    rows = t.n_elements // t.ne[0]
                    step = max(1, SLAB_WEIGHTS // t.ne[0])
                    for r0 in range(0, rows, step):
                        r1 = min(rows, r0 + step)
                        x = _source_rows(layout, t, r0, r1)
                        w.write_data(tq.quantize(x, type_id, progress.advance if progress else None))
                w.finish()
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, cfg.dst)
        except OSError as e:  # disk full, permissions, a vanished directory
            tmp.unlink(missing_ok=True)
            raise UserError(f"writing {cfg.dst} failed ({e.strerror or e}); check free space and permissions") from e
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        bytes_in = cfg.src.stat().st_size
    return QuantizeResult(
        dst=cfg.dst,
        n_converted=len(to_do),
        kept=kept,
        bytes_in=bytes_in,
        bytes_out=cfg.dst.stat().st_size,
        weights_converted=total,
        seconds=time.perf_counter() - t0,
        converted_bytes_before=before,
        converted_bytes_after=after,
    )
