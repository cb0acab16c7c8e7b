"""Prepared weights and the on-disk weight cache.

The first start of a model dequantizes its tensors into the storage the engine computes with
(float32 norms, fused linear weights as the GGUF's own int8 blocks, row-scaled int16 or float32)
and saves them as .npy files under ``cache_dir()/<sha256 of the GGUF>/``; later starts memory-map
them (a warm start reads nothing until the first token touches the pages). Entries are written to a temporary
name and renamed, so an interrupted first start leaves no half-written entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from turbospec.engine.gguf import GGUFFile
from turbospec.engine.linear import BlockInt8, Dense, RowInt16, quantize_rows_int16
from turbospec.errors import UserError
from turbospec.paths import cache_dir

CACHE_FORMAT = 4  # 4: auto keeps Q8_0 / Q5_0 / Q4_0 / Q4_K / Q6_K matrices as block int8
INT16_MIN_ELEMENTS = 1 << 18  # smaller matrices stay float32 (exact; their bytes do not matter)


@dataclass(frozen=True)
class StoragePolicy:
    """How linear weights are stored: ``f32`` (exact), ``i16`` (row-scaled int16), ``auto``
    (for matrices of at least INT16_MIN_ELEMENTS weights: the file's own blocks as int8 where
    every source is Q8_0 / Q5_0 / Q4_0 / Q4_K / Q6_K with one group size — exact, 1.125-1.25
    bytes a weight — else row-scaled int16; float32 below)."""

    linear: str = "auto"

    def kind(self, n_elements: int) -> str:
        if self.linear == "auto":
            return "i16" if n_elements >= INT16_MIN_ELEMENTS else "f32"
        if self.linear not in ("f32", "i16"):
            raise UserError(f"unknown weight storage {self.linear!r}; use auto, f32 or i16")
        return self.linear


def file_sha256(path: Path) -> str:
    """sha256 of a file, memoized in the cache folder by (path, size, mtime)."""
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    memo_path = cache_dir() / "sha256.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    if key in memo:
        return memo[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    digest = h.hexdigest()
    memo[key] = digest
    try:
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo_path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(memo))
        tmp.replace(memo_path)
    except OSError:
        pass
    return digest


@dataclass
class Entry:
    key: str
    sources: tuple[str, ...]  # GGUF tensor names, concatenated along rows
    kind: str  # "norm" | "linear"


class WeightStore:
    """Prepared arrays of one GGUF file, cached on disk by the file's sha256."""

    def __init__(self, gguf: GGUFFile, policy: StoragePolicy | None = None, use_cache: bool = True):
        self.gguf = gguf
        self.policy = policy or StoragePolicy()
        self.use_cache = use_cache and os.environ.get("TURBOSPEC_NO_CACHE", "") in ("", "0")
        self.sha256 = file_sha256(gguf.path)
        self.dir = cache_dir() / f"{self.sha256[:24]}-f{CACHE_FORMAT}-{self.policy.linear}"
        self.arrays: dict[str, object] = {}

    # -- building ---------------------------------------------------------------------------
    def _build(self, e: Entry):
        if e.kind == "norm":
            return {"w": np.ascontiguousarray(self.gguf.dequantize(e.sources[0]).reshape(-1), np.float32)}
        from turbospec.engine.gguf import EXTRA_TYPES

        infos = [self.gguf.info(n) for n in e.sources]
        tids = {i.type_id for i in infos}
        if len(tids) == 1 and next(iter(tids)) in EXTRA_TYPES and all(len(i.shape) == 2 for i in infos):
            # TurboQuant weights stay in their blocks (TQLinear decodes tiles on the fly)
            raw = np.concatenate([self.gguf.raw(n) for n in e.sources], axis=0)
            shape = (sum(i.shape[0] for i in infos), infos[0].shape[1])
            return {"tq": np.ascontiguousarray(raw), "tqmeta": np.array([next(iter(tids)), *shape], np.int64)}
        from turbospec.engine.gguf import BLOCK_INT8_TYPES, block_int8, block_int8_group

        n_el = sum(i.n_elements for i in infos)
        if (self.policy.linear == "auto" and n_el >= INT16_MIN_ELEMENTS and tids <= set(BLOCK_INT8_TYPES)
                and len({block_int8_group(t) for t in tids}) == 1
                and all(len(i.shape) == 2 and i.shape[1] == infos[0].shape[1] for i in infos)
                and infos[0].shape[1] % 32 == 0):
            got = [block_int8(self.gguf.raw(n), i.type_id, tuple(i.shape))
                   for n, i in zip(e.sources, infos, strict=True)]
            out = {}
            if any(g[2] is not None for g in got):  # a minimum in some source: zeros for the others
                out["m8"] = np.concatenate([g[2] if g[2] is not None else np.zeros_like(g[1]) for g in got])
            # q8 last: _save writes in this order and _load_cached takes an entry whose q8 and d8
            # exist, so a first start interrupted before q8 never leaves a Q4_K entry without its m8
            out["d8"] = np.concatenate([g[1] for g in got])
            out["q8"] = np.concatenate([g[0] for g in got])
            return out
        parts = [self.gguf.dequantize(n) for n in e.sources]
        w = np.ascontiguousarray(np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0], np.float32)
        if self.policy.kind(w.size) == "i16":
            q, s = quantize_rows_int16(w)
            return {"q": q, "s": s}
        return {"w": w}

    def _paths(self, key: str, fields) -> dict[str, Path]:
        return {f: self.dir / f"{key}.{f}.npy" for f in fields}

    def _load_cached(self, key: str) -> dict[str, np.ndarray] | None:
        for fields in (("w",), ("q", "s"), ("q8", "d8"), ("tq", "tqmeta")):
            paths = self._paths(key, fields)
            if all(p.exists() for p in paths.values()):
                if fields == ("q8", "d8") and (self.dir / f"{key}.m8.npy").exists():
                    paths["m8"] = self.dir / f"{key}.m8.npy"
                try:
                    return {f: np.load(p, mmap_mode="r") for f, p in paths.items()}
                except (OSError, ValueError):
                    return None
        return None

    def _save(self, key: str, arrays: dict[str, np.ndarray]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for f, a in arrays.items():
            final = self.dir / f"{key}.{f}.npy"
            tmp = self.dir / f".{key}.{f}.{os.getpid()}.tmp.npy"
            np.save(tmp, a)
            tmp.replace(final)

    def prepare(self, entries: list[Entry], quiet: bool = False) -> None:
        """Load every entry, building (and caching) the missing ones with a progress bar."""
        missing = []
        for e in entries:
            got = self._load_cached(e.key) if self.use_cache else None
            if got is None:
                missing.append(e)
            else:
                self.arrays[e.key] = got
        if not missing:
            return
        t0 = time.perf_counter()
        where = str(self.dir) if self.use_cache else "memory (cache disabled)"
        msg = f"first start of {self.gguf.path.name}: dequantizing {len(missing)} tensors into {where}"
        if quiet:
            for e in missing:
                self._build_one(e)
            return
        if sys.stderr.isatty():
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            with Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TimeRemainingColumn(),
                transient=True,
            ) as prog:
                prog.console.print(msg)
                task = prog.add_task("weight cache", total=len(missing))
                for e in missing:
                    self._build_one(e)
                    prog.advance(task)
        else:
            print(f"turbospec: {msg}", file=sys.stderr, flush=True)
            for i, e in enumerate(missing):
                self._build_one(e)
                if (i + 1) % 25 == 0 or i + 1 == len(missing):
                    print(f"turbospec: weight cache {i + 1}/{len(missing)}", file=sys.stderr, flush=True)
        print(
            f"turbospec: weight cache ready in {time.perf_counter() - t0:.1f} s (later starts reuse it)",
            file=sys.stderr,
            flush=True,
        )

    def _build_one(self, e: Entry) -> None:
        arrays = self._build(e)
        if self.use_cache:
            try:
                self._save(e.key, arrays)
                arrays = self._load_cached(e.key) or arrays
            except OSError as err:
                raise UserError(
                    f"cannot write the weight cache in {self.dir} ({err.strerror}); "
                    "free some space or point TURBOSPEC_CACHE_DIR elsewhere"
                ) from None
        self.arrays[e.key] = arrays

    # -- access -----------------------------------------------------------------------------
    def norm(self, key: str) -> np.ndarray:
        return np.asarray(self.arrays[key]["w"])  # type: ignore[index]

    def linear(self, key: str):
        a = self.arrays[key]
        if "tq" in a:  # type: ignore[operator]
            from turbospec.engine.quant.linear import TQLinear

            tid, n_out, n_in = (int(v) for v in a["tqmeta"])  # type: ignore[index]
            return TQLinear(np.asarray(a["tq"]), tid, (n_out, n_in))  # type: ignore[index]
        # plain ndarray views of the memory maps: np.memmap slicing costs ~3 µs a call in
        # __array_finalize__, and the products slice per tile
        if "q8" in a:  # type: ignore[operator]
            m = np.asarray(a["m8"]) if "m8" in a else None  # type: ignore[operator,index]
            return BlockInt8(np.asarray(a["q8"]), np.asarray(a["d8"]), m)  # type: ignore[index]
        if "q" in a:  # type: ignore[operator]
            return RowInt16(np.asarray(a["q"]), np.asarray(a["s"]))  # type: ignore[index]
        return Dense(np.asarray(a["w"]))  # type: ignore[index]


def clear_cache() -> tuple[Path, int]:
    """Delete the whole weight cache folder; returns (folder, bytes freed)."""
    d = cache_dir()
    if not d.exists():
        return d, 0
    total = sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
    shutil.rmtree(d)
    return d, total
