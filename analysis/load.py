"""Read report inputs: sweep result rows, ``turbospec ppl --json`` objects and NDJSON traces.

Each path is sniffed by content (a folder is searched for *.jsonl, *.json, *.ndjson). Nothing
here raises on bad content: problems become messages and the rest is still read. Only a path
that does not exist raises ``UserError`` (one line). Traces are read with ``turbospec.trace``.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from turbospec import results as R
from turbospec.errors import UserError

SUFFIXES = (".jsonl", ".json", ".ndjson")
PPL_KEYS = ("ppl", "n_tokens", "ctx", "type_k", "type_v", "kld_mean", "top1_agreement", "model")


@dataclass
class TraceInput:
    path: Path
    summary: Any  # turbospec.analysis.tracestats.TraceStats


@dataclass
class Inputs:
    rows: list[dict[str, Any]] = field(default_factory=list)  # result rows (each has "_source")
    ppl: list[dict[str, Any]] = field(default_factory=list)  # ppl objects (each has "_source")
    traces: list[TraceInput] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)


def expand(paths: list[str | Path]) -> list[Path]:
    """Files named, and the *.jsonl/*.json/*.ndjson files under folders named (sorted)."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise UserError(f"{p}: no such file or folder; pass sweep results, ppl --json output or a trace")
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in SUFFIXES)
            out.extend(found)
        else:
            out.append(p)
    return out


def _kind(obj: Any) -> str | None:
    if not isinstance(obj, dict):
        return None
    if "evt" in obj:
        return "trace"
    schema = obj.get("schema")
    if isinstance(schema, str) and schema.startswith(R.SCHEMA_PREFIX):
        return "results"
    if "ppl" in obj:
        return "ppl"
    if "type_k" in obj and ("status" in obj or "decode_tok_s" in obj or "avg_ts" in obj):
        return "results"  # a results row without (or with a mangled) schema
    return None


def summarize_problems(problems: list[str]) -> list[str]:
    """Group "<path>:<line>: <msg>" lines by (path, msg): one message per kind, with line numbers."""
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    order: list[tuple[str, str]] = []
    for p in problems:
        m = re.match(r"^(.*):(\d+): (.*)$", p)
        key, line = ((m.group(1), m.group(3)), m.group(2)) if m else (("", p), "")
        if key not in groups:
            order.append(key)
        groups[key].append(line)
    out = []
    for path, msg in order:
        lines = [x for x in groups[(path, msg)] if x]
        where = ""
        if lines:
            shown = ", ".join(lines[:5]) + (f" and {len(lines) - 5} more" if len(lines) > 5 else "")
            where = f" (line{'s' if len(lines) > 1 else ''} {shown})"
        out.append(f"{path}: {msg}{where}" if path else msg)
    return out


def load(paths: list[str | Path]) -> Inputs:
    """Read every input; classify; collect messages. Raises UserError only for missing paths."""
    inputs = Inputs()
    files = expand(paths)
    if not files:
        inputs.messages.append("no .jsonl/.json/.ndjson files found in the given folder(s)")
    trace_files: list[Path] = []
    for f in files:
        kind = _load_file(f, inputs)
        if kind == "trace":
            trace_files.append(f)
    referenced = {_resolve(r.get("trace_path"), r["_source"]) for r in inputs.rows if r.get("trace_path")}
    from turbospec.analysis import tracestats

    for f in trace_files:
        if f.resolve() in referenced:
            continue  # a sweep's per-repetition trace: read on demand for costs, not a section of its own
        stats = tracestats.read(f)
        inputs.messages.extend(stats.messages)
        inputs.traces.append(TraceInput(f, stats))
    return inputs


def _resolve(trace_path: Any, source: str) -> Path | None:
    if not isinstance(trace_path, str) or not trace_path:
        return None
    p = Path(trace_path)
    if not p.is_absolute():
        p = Path(source).parent / p
    return p.resolve()


def trace_of_row(row: dict[str, Any]) -> Path | None:
    """The row's trace file if it exists (``trace_path`` relative to the results file)."""
    p = _resolve(row.get("trace_path"), row.get("_source", "."))
    return p if p is not None and p.is_file() else None


def _load_file(path: Path, inputs: Inputs) -> str | None:
    try:
        raw = path.read_bytes()
    except OSError as e:
        inputs.messages.append(f"{path}: cannot read ({e.strerror}); skipped")
        return None
    if not raw.strip():
        inputs.messages.append(f"{path}: empty file; nothing to report from it")
        return None
    text = raw.decode("utf-8", errors="replace")
    # a whole-file JSON document: `turbospec ppl --json > x.json` (possibly pretty-printed) or a list
    stripped = text.strip()
    if stripped[0] in "{[" and "\n" in stripped:
        try:
            doc = json.loads(stripped)
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            return _take_objects(path, [(1, doc)], inputs)
        if isinstance(doc, list):
            return _take_objects(path, list(enumerate(doc, 1)), inputs)
    kind = None
    for line in text.splitlines():
        try:
            kind = _kind(json.loads(line))
        except ValueError:
            continue
        if kind:
            break
    if kind == "trace":
        return "trace"
    if kind == "results":
        rows, problems = R.read_rows(path)
        inputs.messages.extend(summarize_problems(problems))
        _take_rows(path, rows, inputs)
        return "results"
    if kind == "ppl":
        objs, bad = [], []
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                objs.append((i, json.loads(line)))
            except ValueError:
                bad.append(f"{path}:{i}: malformed JSON, skipped")
        inputs.messages.extend(summarize_problems(bad))
        return _take_objects(path, objs, inputs)
    inputs.messages.append(
        f"{path}: not a results file, ppl --json output or trace (no line has 'evt', a "
        f"'{R.SCHEMA_PREFIX}' schema or 'ppl'); skipped"
    )
    return None


def _take_objects(path: Path, objs: list[tuple[int, Any]], inputs: Inputs) -> str | None:
    kinds = {_kind(o) for _, o in objs}
    if "trace" in kinds:
        return "trace"
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    for i, o in objs:
        k = _kind(o)
        if k == "ppl":
            _take_ppl(path, i, o, inputs)
        elif k == "results":
            problems.extend(f"{path}:{i}: {m}" for m in R.validate_row(o))
            rows.append(o)
        else:
            problems.append(f"{path}:{i}: neither a results row nor a ppl result, skipped")
    inputs.messages.extend(summarize_problems(problems))
    _take_rows(path, rows, inputs)
    return "results" if rows else ("ppl" if inputs.ppl else None)


def _take_ppl(path: Path, line: int, obj: dict[str, Any], inputs: Inputs) -> None:
    ppl = obj.get("ppl")
    if not isinstance(ppl, int | float) or isinstance(ppl, bool):
        inputs.messages.append(f"{path}:{line}: ppl result without a numeric 'ppl'; skipped")
        return
    missing = [k for k in ("type_k", "type_v") if k not in obj]
    if missing:
        inputs.messages.append(f"{path}:{line}: ppl result without {', '.join(missing)}; read as f16")
    row = {k: obj.get(k) for k in PPL_KEYS}
    row["type_k"] = obj.get("type_k") or "f16"
    row["type_v"] = obj.get("type_v") or "f16"
    row["_source"] = str(path)
    inputs.ppl.append(row)


def _take_rows(path: Path, rows: list[dict[str, Any]], inputs: Inputs) -> None:
    usable = 0
    for r in rows:
        if not isinstance(r.get("type_k"), str) or not isinstance(r.get("type_v"), str):
            continue  # validate_row already said why
        r = dict(r)
        r["_source"] = str(path)
        inputs.rows.append(r)
        usable += 1
    if rows and not usable:
        inputs.messages.append(f"{path}: no row has type_k and type_v; nothing usable in it")
