"""Sweep result rows: the schema, a validator, an atomic JSONL appender and a tolerant reader.

One ``turbospec sweep`` repetition = one JSON object on one line of the results file. Column
names follow llama-bench where it has one (``model_filename``, ``type_k``, ``n_gen``,
``avg_ts`` ...); the rest are turbospec's own. This module is a contract beside
``turbospec.trace``: it imports nothing from the engine (nor numpy/pandas), so a results file
can be read on any machine.

Conventions of a row (version ``turbospec.results/1``):

- one row per repetition; ``avg_ns``/``avg_ts`` are that repetition's generation time and rate
  (``n_gen`` tokens; prompt-only cells, ``n_gen == 0``, use the prompt phase) and
  ``stddev_ns``/``stddev_ts`` are 0.0 — the summary and ``turbospec report`` aggregate the
  repetitions of a cell into mean ± std;
- metrics that a cell did not produce (a failed cell; acceptance for ``spec=none``) are
  ``null``, never missing;
- ``status`` is ``ok``, ``failed`` (``error`` holds the one-line reason) or ``interrupted``;
- a reader accepts rows without the optional columns and reports (never crashes on) unknown
  columns, other schema versions and malformed or half-written lines.
"""

from __future__ import annotations

import json
import math
import os
import platform
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypedDict

from turbospec.errors import UserError

SCHEMA = "turbospec.results/1"
SCHEMA_PREFIX = "turbospec.results/"
STATUSES = ("ok", "failed", "interrupted")
SPECS = ("none", "mtp", "ngram", "draft")


@dataclass(frozen=True)
class Column:
    name: str
    types: tuple[type, ...]  # accepted JSON types (bool is never an int here)
    required: bool  # must be present in every row (the value may still be null if nullable)
    nullable: bool
    doc: str


_STR, _INT, _NUM = (str,), (int,), (int, float)
_LIST, _DICT = (list,), (dict,)


def _c(name: str, types: tuple[type, ...], doc: str, required: bool = True, nullable: bool = True) -> Column:
    return Column(name, types, required, nullable, doc)


COLUMNS: tuple[Column, ...] = (
    # identity
    _c("schema", _STR, 'schema version, "turbospec.results/1"', nullable=False),
    _c("run_id", _STR, "id of the sweep invocation (shared by all its rows)", nullable=False),
    _c("test_time", _STR, "ISO 8601 UTC time the repetition finished (llama-bench name)", nullable=False),
    _c("repetition", _INT, "0-based repetition index within the cell", nullable=False),
    # build / machine (llama-bench names first)
    _c("build_commit", _STR, "git commit of turbospec, or null when unknown"),
    _c("version", _STR, "turbospec version", nullable=False),
    _c("versions", _DICT, "versions of the pieces: {turbospec, python, numpy, cupy, cuda, ...}"),
    _c("cpu_info", _STR, "CPU model string (llama-bench name)"),
    _c("gpu_info", _STR, "GPU model string, null on a CPU run (llama-bench name)"),
    _c("backends", _STR, 'llama-bench style backend list, e.g. "CPU" or "CUDA"'),
    _c("machine", _DICT, "{cpu_model, n_cores, n_threads, blas}: the host that ran the cell"),
    # model (llama-bench names) + hash
    _c("model_filename", _STR, "path of the target GGUF", nullable=False),
    _c("model_type", _STR, 'architecture, size and weight type, e.g. "gemma3 270M Q4_K_M"'),
    _c("model_size", _INT, "bytes of the model file"),
    _c("model_n_params", _INT, "parameter count"),
    _c("model_sha256", _STR, "sha256 of the model file"),
    # settings (the cell); together they form the cell key, see SETTINGS
    _c("backend", _STR, "numpy | cupy", nullable=False),
    _c("device", _STR, 'device description, e.g. "cpu" or "NVIDIA H200"'),
    _c("n_threads", _INT, "threads (-t)"),
    _c("type_k", _STR, "K cache type (-ctk)", nullable=False),
    _c("type_v", _STR, "V cache type (-ctv)", nullable=False),
    _c("spec", _STR, "drafter: none | mtp | ngram | draft", nullable=False),
    _c("draft_block_size", _INT, "--draft-block-size B (null for spec=none)"),
    _c("draft_max", _INT, "--draft-max (null for spec=none)"),
    _c("pipeline_depth", _INT, "1 = synchronous drafting, 2 = prepare_next overlap"),
    _c("n_prompt", _INT, "prompt tokens (llama-bench name)", nullable=False),
    _c("n_gen", _INT, "tokens to generate (llama-bench name)", nullable=False),
    _c("prompt_kind", _STR, "prompt-set kind (chat, code, list, translation, prose) or synthetic"),
    _c("prompt_index", _INT, "index of the prompt in the prompt set (null for synthetic -p prompts)"),
    # timings (llama-bench names) for this repetition
    _c("avg_ns", _INT, "ns of the generation phase (prompt phase when n_gen == 0)"),
    _c("stddev_ns", _NUM, "0.0 in a per-repetition row"),
    _c("avg_ts", _NUM, "tokens/s of the same phase (= decode_tok_s when n_gen > 0)"),
    _c("stddev_ts", _NUM, "0.0 in a per-repetition row"),
    # turbospec metrics
    _c("prefill_tok_s", _NUM, "prompt tokens / prefill seconds"),
    _c("decode_tok_s", _NUM, "emitted tokens / wall seconds of decoding"),
    _c("draft_acceptance_rate", _NUM, "sum n_accepted / sum n_drafted (null for spec=none)"),
    _c("tau", _NUM, "acceptance length 1 + sum n_accepted / rounds (null for spec=none)"),
    _c("per_position", _LIST, "p_i = P(n_accepted > i | n_drafted > i), i = 0..B-2"),
    _c("kv_bytes", _INT, "bytes of the KV cache at the end of the run"),
    _c("kv_bytes_per_token", _NUM, "kv_bytes / cached tokens"),
    _c("peak_mem_bytes", _INT, "peak memory of the process (RSS on CPU, device pool on GPU)"),
    _c("wall_s", _NUM, "wall seconds of the whole repetition (load excluded)"),
    _c("status", _STR, "ok | failed | interrupted", nullable=False),
    _c("error", _STR, "one-line reason when status is failed, else null"),
    _c("trace_path", _STR, "NDJSON trace of this repetition (relative to the results file or absolute)"),
    # optional: inputs of the predicted speedup, and the cache types' sizes
    _c("n_rounds", _INT, "mtp_accept rounds (spec != none)", required=False),
    _c("n_drafted", _INT, "sum n_drafted over the rounds", required=False),
    _c("n_accepted", _INT, "sum n_accepted over the rounds", required=False),
    _c("draft_us", _NUM, "mean draft_us per round (time producing the draft)", required=False),
    _c("verify_us", _NUM, "mean verify_us per round", required=False),
    _c("plain_step_us", _NUM, "mean us of one plain decode step (decode events)", required=False),
    _c("bits_k", _NUM, "bits per value of type_k", required=False),
    _c("bits_v", _NUM, "bits per value of type_v", required=False),
    _c("n_ctx", _INT, "context size", required=False),
    _c("temp", _NUM, "sampling temperature (0 = greedy)", required=False),
    _c("seed", _INT, "sampling seed", required=False),
)
COLUMN_BY_NAME: dict[str, Column] = {c.name: c for c in COLUMNS}
COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in COLUMNS)
REQUIRED: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.required)

# The settings that define a cell: rows equal on these are repetitions of one measurement.
SETTINGS: tuple[str, ...] = (
    "model_filename", "model_sha256", "backend", "device", "n_threads", "type_k", "type_v", "spec",
    "draft_block_size", "draft_max", "pipeline_depth", "n_prompt", "n_gen", "prompt_kind", "prompt_index",
)  # fmt: skip
# Numeric results a row reports (what `report`/`compare` aggregate).
METRICS: tuple[str, ...] = (
    "avg_ts", "prefill_tok_s", "decode_tok_s", "draft_acceptance_rate", "tau", "kv_bytes",
    "kv_bytes_per_token", "peak_mem_bytes", "wall_s",
)  # fmt: skip
_FRACTIONS = ("draft_acceptance_rate",)
_NON_NEGATIVE = (
    "model_size", "model_n_params", "n_threads", "n_prompt", "n_gen", "avg_ns", "stddev_ns", "avg_ts",
    "stddev_ts", "prefill_tok_s", "decode_tok_s", "kv_bytes", "kv_bytes_per_token", "peak_mem_bytes",
    "wall_s", "n_rounds", "n_drafted", "n_accepted", "draft_us", "verify_us", "plain_step_us", "bits_k",
    "bits_v", "repetition",
)  # fmt: skip


class ResultRow(TypedDict, total=False):
    """Static shape of a row (all keys of COLUMNS; see their docs). ``total=False`` because a
    reader must accept rows without the optional columns; ``validate_row`` checks presence."""

    schema: str
    run_id: str
    test_time: str
    repetition: int
    build_commit: str | None
    version: str
    versions: dict[str, str] | None
    cpu_info: str | None
    gpu_info: str | None
    backends: str | None
    machine: dict[str, Any] | None
    model_filename: str
    model_type: str | None
    model_size: int | None
    model_n_params: int | None
    model_sha256: str | None
    backend: str
    device: str | None
    n_threads: int | None
    type_k: str
    type_v: str
    spec: str
    draft_block_size: int | None
    draft_max: int | None
    pipeline_depth: int | None
    n_prompt: int
    n_gen: int
    prompt_kind: str | None
    prompt_index: int | None
    avg_ns: int | None
    stddev_ns: float | None
    avg_ts: float | None
    stddev_ts: float | None
    prefill_tok_s: float | None
    decode_tok_s: float | None
    draft_acceptance_rate: float | None
    tau: float | None
    per_position: list[float] | None
    kv_bytes: int | None
    kv_bytes_per_token: float | None
    peak_mem_bytes: int | None
    wall_s: float | None
    status: str
    error: str | None
    trace_path: str | None
    n_rounds: int | None
    n_drafted: int | None
    n_accepted: int | None
    draft_us: float | None
    verify_us: float | None
    plain_step_us: float | None
    bits_k: float | None
    bits_v: float | None
    n_ctx: int | None
    temp: float | None
    seed: int | None


def new_run_id() -> str:
    """A sweep id: UTC time to the second plus 6 random hex digits (sortable, unique enough)."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def utc_now() -> str:
    """``test_time`` value: ISO 8601 UTC with a Z, to the second (llama-bench's form)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def machine_info(n_threads: int | None = None, blas: str | None = None) -> dict[str, Any]:
    """The ``machine`` column: CPU model, physical cores (logical when unknown), threads, BLAS.

    ``blas`` is passed by the caller (the engine knows it, e.g. from ``numpy.show_config``);
    this module stays free of numpy."""
    return {
        "cpu_model": cpu_model(),
        "n_cores": _physical_cores() or os.cpu_count(),
        "n_threads": n_threads if n_threads is not None else os.cpu_count(),
        "blas": blas,
    }


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _physical_cores() -> int | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    pairs, phys, core = set(), None, None
    for line in text.splitlines():
        key, _, val = line.partition(":")
        key = key.strip()
        if key == "physical id":
            phys = val.strip()
        elif key == "core id":
            core = val.strip()
        elif not line.strip():
            if core is not None:
                pairs.add((phys, core))
            phys = core = None
    if core is not None:
        pairs.add((phys, core))
    return len(pairs) or None


def cell_key(row: dict[str, Any]) -> tuple:
    """The row's cell: its SETTINGS values in order (missing -> None). ``--resume`` skips a cell
    once it has ``repetitions`` rows with status ok; ``compare`` matches cells on this."""
    return tuple(_hashable(row.get(k)) for k in SETTINGS)


def done_repetitions(rows: list[dict[str, Any]]) -> dict[tuple, set[int]]:
    """``--resume``: cell_key -> repetition indices already finished with status ok (failed and
    interrupted repetitions are run again)."""
    done: dict[tuple, set[int]] = {}
    for r in rows:
        if r.get("status") == "ok" and type(r.get("repetition")) is int:
            done.setdefault(cell_key(r), set()).add(r["repetition"])
    return done


def _hashable(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _hashable(x)) for k, x in v.items()))
    return v


def _type_ok(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return False
    if float in types and isinstance(value, float) and not math.isfinite(value):
        return False
    return isinstance(value, types)


def _tname(types: tuple[type, ...]) -> str:
    return {_STR: "a string", _INT: "an integer", _NUM: "a number", _LIST: "a list", _DICT: "an object"}.get(
        types, "/".join(t.__name__ for t in types)
    )


def validate_row(row: dict[str, Any]) -> list[str]:
    """Problems of one row against ``SCHEMA``, as short sentences; ``[]`` means valid.

    Reported: not an object, a different schema version, missing required columns, unknown
    columns, wrong types (NaN/inf are wrong), bad ``status``/``spec``, negative counts or
    rates, fractions outside [0, 1], a failed row without ``error``."""
    if not isinstance(row, dict):
        return [f"row is {type(row).__name__}, not a JSON object"]
    problems: list[str] = []
    schema = row.get("schema")
    if schema != SCHEMA:
        if isinstance(schema, str) and schema.startswith(SCHEMA_PREFIX):
            problems.append(f"schema {schema!r} is not {SCHEMA!r} (written by another turbospec version)")
        else:
            problems.append(f"schema {schema!r} is not {SCHEMA!r} (not a turbospec results row)")
    missing = [k for k in REQUIRED if k not in row]
    if missing:
        problems.append("missing column(s): " + ", ".join(missing))
    unknown = [k for k in row if k not in COLUMN_BY_NAME]
    if unknown:
        problems.append("unknown column(s): " + ", ".join(sorted(unknown)))
    for name, value in row.items():
        col = COLUMN_BY_NAME.get(name)
        if col is None:
            continue
        if value is None:
            if not col.nullable:
                problems.append(f"{name} is null")
            continue
        if not _type_ok(value, col.types):
            problems.append(f"{name} must be {_tname(col.types)}, got {value!r}")
            continue
        if name in _NON_NEGATIVE and value < 0:
            problems.append(f"{name} is negative ({value!r})")
        if name in _FRACTIONS and not 0.0 <= value <= 1.0:
            problems.append(f"{name} must lie in [0, 1], got {value!r}")
        if name == "tau" and value < 1.0:
            problems.append(f"tau must be >= 1, got {value!r}")
    pp = row.get("per_position")
    if isinstance(pp, list) and not all(_type_ok(p, _NUM) and 0.0 <= p <= 1.0 for p in pp):
        problems.append("per_position must be a list of numbers in [0, 1]")
    status = row.get("status")
    if isinstance(status, str) and status not in STATUSES:
        problems.append(f"status {status!r} is not one of {', '.join(STATUSES)}")
    if status == "failed" and not row.get("error"):
        problems.append("a failed row needs its error")
    spec = row.get("spec")
    if isinstance(spec, str) and spec not in SPECS:
        problems.append(f"spec {spec!r} is not one of {', '.join(SPECS)}")
    return problems


def _clean(value: Any) -> Any:
    """NaN/inf -> None (JSON has no NaN), tuples -> lists, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def encode_row(row: dict[str, Any]) -> bytes:
    """One JSON line (ends with a newline, no newline inside), columns in COLUMNS order first."""
    ordered = {k: row[k] for k in COLUMN_NAMES if k in row}
    ordered.update({k: v for k, v in row.items() if k not in ordered})
    text = json.dumps(_clean(ordered), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return (text + "\n").encode()


def append_row(path: str | os.PathLike[str], row: dict[str, Any], *, validate: bool = True) -> None:
    """Append ``row`` to the JSONL file ``path`` atomically: one ``write`` of one whole line on
    an ``O_APPEND`` descriptor, then ``fsync``. An interrupt before the write leaves nothing, after
    it the whole row. Creates the parent folder. If the file ends in a half line (an earlier
    writer killed mid-write, or a hand edit) the row starts on a new line so it stays readable.

    Raises ``ValueError`` listing the problems when ``validate`` and the row is invalid (a bug in
    the writer; NaN/inf are stored as null before validation)."""
    row = _clean(row)
    if validate:
        problems = validate_row(row)
        if problems:
            raise ValueError("invalid result row: " + "; ".join(problems))
    data = encode_row(row)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size > 0:
            with open(p, "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    data = b"\n" + data
        view = memoryview(data)
        while view:  # a regular file takes the whole buffer in one write; loop only for safety
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)


def read_rows(path: str | os.PathLike[str], *, validate: bool = True) -> tuple[list[dict[str, Any]], list[str]]:
    """Read a results JSONL file. Returns ``(rows, problems)``.

    ``rows`` are the lines that parse as JSON objects, in file order (rows with validation
    problems are kept: a reader decides what it can use). ``problems`` are one-line messages
    ``"<path>:<line>: <problem>"`` for malformed lines, non-object lines, a half-written last
    line, and (when ``validate``) each row's ``validate_row`` problems. Blank lines are skipped.
    A missing or unreadable path raises ``UserError``."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{p}: no such file; pass an existing results file (see sweep --results)") from None
    except IsADirectoryError:
        raise UserError(f"{p} is a folder; pass the results .jsonl file inside it") from None
    except OSError as e:
        raise UserError(f"{p}: cannot read ({e.strerror}); check the path and its permissions") from None
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    lines = raw.split(b"\n")
    last = len(lines) - 1  # lines[last] is b"" when the file ends with a newline
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            why = "half-written last line (interrupted write?)" if i == last else "malformed JSON"
            problems.append(f"{p}:{i + 1}: {why}, skipped")
            continue
        if not isinstance(obj, dict):
            problems.append(f"{p}:{i + 1}: not a JSON object, skipped")
            continue
        if validate:
            problems.extend(f"{p}:{i + 1}: {msg}" for msg in validate_row(obj))
        rows.append(obj)
    return rows, problems


def example_row(**overrides: Any) -> dict[str, Any]:
    """A complete valid row (a plain decode of 64 tokens on the CPU); tests and docs start here."""
    row: dict[str, Any] = {
        "schema": SCHEMA, "run_id": "20260101T000000Z-000000", "test_time": "2026-01-01T00:00:00Z",
        "repetition": 0, "build_commit": None, "version": "0.1.0", "versions": {"turbospec": "0.1.0"},
        "cpu_info": "cpu", "gpu_info": None, "backends": "CPU",
        "machine": {"cpu_model": "cpu", "n_cores": 2, "n_threads": 2, "blas": None},
        "model_filename": "model.gguf", "model_type": "gemma3 270M Q4_K_M", "model_size": 253_000_000,
        "model_n_params": 268_000_000, "model_sha256": None, "backend": "numpy", "device": "cpu",
        "n_threads": 2, "type_k": "f16", "type_v": "f16", "spec": "none", "draft_block_size": None,
        "draft_max": None, "pipeline_depth": 1, "n_prompt": 16, "n_gen": 64, "prompt_kind": "synthetic",
        "prompt_index": None, "avg_ns": 1_000_000_000, "stddev_ns": 0.0, "avg_ts": 64.0, "stddev_ts": 0.0,
        "prefill_tok_s": 160.0, "decode_tok_s": 64.0, "draft_acceptance_rate": None, "tau": None,
        "per_position": None, "kv_bytes": 1_474_560, "kv_bytes_per_token": 18432.0,
        "peak_mem_bytes": 500_000_000,
        "wall_s": 1.2, "status": "ok", "error": None, "trace_path": None,
    }  # fmt: skip
    row.update(overrides)
    return row


# --------------------------------------------------------------------------------------------
# The sweep's printed summary (llama-bench's -o md|csv|json|jsonl), stdlib only
# --------------------------------------------------------------------------------------------

SUMMARY_METRICS: tuple[str, ...] = ("avg_ts", "prefill_tok_s", "decode_tok_s", "draft_acceptance_rate", "tau")
SUMMARY_FORMATS = ("md", "csv", "json", "jsonl")


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per cell (rows grouped by ``cell_key``, ok rows only, first-seen order): the
    SETTINGS, ``model_type``, ``n`` (repetitions), and for each SUMMARY_METRICS ``<m>`` its mean
    (``avg_ts`` keeps llama-bench's name) with ``<m>_std`` (sample std; 0.0 for one repetition;
    ``avg_ts``'s is ``stddev_ts``). A metric no row has is None."""
    import statistics

    cells: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("status", "ok") == "ok":
            cells.setdefault(cell_key(r), []).append(r)
    out = []
    for group in cells.values():
        rec: dict[str, Any] = {k: group[0].get(k) for k in SETTINGS}
        rec["model_type"] = group[0].get("model_type")
        rec["n"] = len(group)
        for m in SUMMARY_METRICS:
            vals = [float(r[m]) for r in group if _type_ok(r.get(m), _NUM)]
            mean = statistics.fmean(vals) if vals else None
            std = statistics.stdev(vals) if len(vals) > 1 else (0.0 if vals else None)
            rec[m] = mean
            rec["stddev_ts" if m == "avg_ts" else f"{m}_std"] = std
        out.append(rec)
    return out


def _fmt_metric(m: str, mean: Any, std: Any) -> str:
    if mean is None:
        return ""
    if m == "draft_acceptance_rate":
        return f"{100 * mean:.1f}% ± {100 * (std or 0.0):.1f}"
    digits = 2
    return f"{mean:.{digits}f} ± {(std or 0.0):.{digits}f}"


def format_summary(summary: list[dict[str, Any]], form: str = "md") -> str:
    """Render ``summarize()`` output. ``md``: a pipe table of the settings that vary plus each
    metric some cell has, as mean ± std (acceptance in %, one decimal); ``csv``/``json``/``jsonl``:
    every field, numbers unformatted."""
    if form not in SUMMARY_FORMATS:
        raise UserError(f"unknown output format {form!r}; use one of {', '.join(SUMMARY_FORMATS)}")
    if form == "json":
        return json.dumps(summary, indent=2, allow_nan=False) + "\n"
    if form == "jsonl":
        return "".join(json.dumps(r, separators=(",", ":"), allow_nan=False) + "\n" for r in summary)
    if form == "csv":
        import csv
        import io

        buf = io.StringIO()
        fields = list(summary[0]) if summary else list(SETTINGS)
        w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        w.writerows(summary)
        return buf.getvalue()
    keys = [k for k in ("model_type",) + SETTINGS if len({str(r.get(k)) for r in summary}) > 1]
    if not keys:
        keys = ["type_k", "type_v", "spec"]
    mets = [m for m in SUMMARY_METRICS if any(r.get(m) is not None for r in summary)]
    names = {"avg_ts": "t/s", "draft_acceptance_rate": "accept", "tau": "τ"}
    head = keys + ["n"] + [names.get(m, m) for m in mets]
    align = ["---"] * len(keys) + ["---:"] * (1 + len(mets))
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    for r in summary:
        cells = ["" if r.get(k) is None else str(r.get(k)) for k in keys] + [str(r["n"])]
        cells += [_fmt_metric(m, r.get(m), r.get("stddev_ts" if m == "avg_ts" else f"{m}_std")) for m in mets]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
