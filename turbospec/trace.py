"""The NDJSON trace contract (schema ``turbospec.trace/1``): writer, parser, aggregator, tailer.

Compatible with the fork's ``LLAMA_MTP_ACC_TRACE`` tracer (see DESIGN.md, "Trace format"). The
fork writes two line shapes, keys in this order::

    {"evt":"mtp_draft","iter":42,"path":"lazy","seq_id":0,"id_last":128006,"h_idx":3,
     "attn_pos":17,"n_steps":2,"h_l2":142.3000,"drafts":[882,441]}
    {"evt":"mtp_accept","iter":42,"n_accepted":1,"n_drafted_prev":2}

turbospec writes the same two events with the fork's keys first (same order), then appended
fields, then ``t_us`` and ``run`` on every line; plus its own events (run_start, prefill,
decode, run_end). Readers accept bare fork lines, ignore unknown events and fields, and count
(never crash on) malformed or half-written lines.

This module imports nothing from the engine, numpy or textual: a trace from another machine or
from llama.cpp can be analysed anywhere.
"""

from __future__ import annotations

import json
import math
import os
import select
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from turbospec.errors import UserError

SCHEMA = "turbospec.trace/1"
ENV_VAR = "LLAMA_MTP_ACC_TRACE"

# The fork's keys, in the fork's order.
MTP_DRAFT_KEYS = (
    "evt", "iter", "path", "seq_id", "id_last", "h_idx", "attn_pos", "n_steps", "h_l2", "drafts",
)
MTP_ACCEPT_KEYS = ("evt", "iter", "n_accepted", "n_drafted_prev")
PATHS = ("sync", "lazy", "skip-streak", "skip-nsteps")
EVENTS = ("run_start", "prefill", "decode", "mtp_draft", "mtp_accept", "run_end")
RUN_STATUSES = ("ok", "interrupted", "error")

# Metric names: used identically in stats, the dashboard and the reports.
METRIC_LABELS = {
    "draft_acceptance_rate": "draft acceptance rate",
    "tau": "acceptance length τ",
    "per_position": "per-position acceptance p_i",
    "conditional": "conditional acceptance α_i",
    "decode_tok_s": "decode tok/s",
    "prefill_tok_s": "prefill tok/s",
}


def fmt_pct(x: float | None) -> str:
    """A rate in [0, 1] as a percentage with one decimal: 0.8321 -> '83.2%'; None -> '—'."""
    return "—" if x is None else f"{100.0 * x:.1f}%"


def fmt_tau(x: float | None) -> str:
    """τ with two decimals: 2.4667 -> '2.47'; None -> '—'."""
    return "—" if x is None else f"{x:.2f}"


def now_us() -> int:
    """Wall clock, microseconds since the Unix epoch (the ``t_us`` of every turbospec line)."""
    return time.time_ns() // 1000


def new_run_id() -> str:
    """A short, sortable run id: UTC time plus 6 random hex digits, e.g. '20261129T023548-3fa2c1'."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


# --------------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------------


def trace_target_from_env(cli_value: str | None, environ: dict[str, str] | None = None) -> str | None:
    """The trace target: ``--trace VALUE`` wins over $LLAMA_MTP_ACC_TRACE; None when neither is set.

    The result follows the env var's rules (None/""/"0" off, "1" stderr, else a path): pass it
    to :meth:`TraceWriter.open`.
    """
    if cli_value is not None:
        return cli_value
    env = os.environ if environ is None else environ
    return env.get(ENV_VAR)


_KEY_CACHE: dict[str, str] = {}


def _key(k: str) -> str:
    s = _KEY_CACHE.get(k)
    if s is None:
        s = _KEY_CACHE[k] = orjson.dumps(k).decode() + ":"
    return s


def _val(v: Any) -> str:
    if type(v) is int:
        return str(v)
    return orjson.dumps(v, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def _h_l2(v: float) -> str:
    f = float(v)
    return f"{f:.4f}" if math.isfinite(f) else "null"


_PATH_LIT = {p: f'"{p}"' for p in PATHS}


class TraceWriter:
    """Writes one NDJSON line per event, flushed per line; thread-safe; a no-op when disabled.

    Use :meth:`open` (``TraceWriter.open(trace_target_from_env(args.trace))``). Every line
    ends with ``"t_us":<int>,"run":"<id>"``. ``mtp_draft``/``mtp_accept`` lines start with the
    fork's keys in the fork's order (``h_l2`` with exactly 4 decimals), then ``**appended``
    fields in the order given (``drafter``, ``draft_us`` / ``verify_us``, ``n_emitted``, ``pos``).
    """

    def __init__(self, stream: IO[str] | None, run_id: str, owns_stream: bool, target: str | None = None):
        self._stream = stream
        self._owns = owns_stream
        self._lock = threading.Lock()
        self.run_id = run_id
        self.target = target
        self._tail = "," + _key("run") + orjson.dumps(run_id).decode() + "}\n"

    @classmethod
    def open(cls, spec: str | None, run_id: str | None = None) -> TraceWriter:
        """None/""/"0" -> disabled writer; "1" -> stderr; anything else -> a path opened for append."""
        rid = run_id or new_run_id()
        if spec is None or spec == "" or spec == "0":
            return cls(None, rid, False, None)
        if spec == "1":
            return cls(sys.stderr, rid, False, "stderr")
        p = Path(spec).expanduser()
        if p.is_dir():
            raise UserError(f"trace path {spec!r} is a folder; give a file path (e.g. {spec}/trace.ndjson)")
        try:
            fh = open(p, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        except FileNotFoundError:
            raise UserError(
                f"cannot open trace file {spec!r}: folder {str(p.parent)!r} does not exist; create it first"
            ) from None
        except OSError as e:
            raise UserError(
                f"cannot open trace file {spec!r}: {e.strerror}; choose a writable path"
            ) from None
        return cls(fh, rid, True, str(p))

    @property
    def enabled(self) -> bool:
        return self._stream is not None

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, head: str) -> None:
        # head: '{...' without the closing brace; t_us and run are appended here.
        line = head + ',"t_us":' + str(time.time_ns() // 1000) + self._tail
        with self._lock:
            s = self._stream
            if s is None:
                return
            s.write(line)
            s.flush()

    def _generic(self, evt: str, fields: dict[str, Any]) -> None:
        if self._stream is None:
            return
        parts = ['{"evt":"', evt, '"']
        for k, v in fields.items():
            if k in ("evt", "t_us", "run"):
                continue
            parts.append("," + _key(k) + _val(v))
        self._write("".join(parts))

    def run_start(self, **fields: Any) -> None:
        """``run_start`` with ``schema`` first, then the given fields (model, backend, type_k ...)."""
        if self._stream is None:
            return
        self._generic("run_start", {"schema": SCHEMA, **fields})

    def prefill(self, n_tokens: int, us: int, **appended: Any) -> None:
        if self._stream is None:
            return
        self._generic("prefill", {"n_tokens": n_tokens, "us": us, **appended})

    def decode(self, n_emitted: int, us: int, **appended: Any) -> None:
        """One plain (non-speculative) decode step."""
        if self._stream is None:
            return
        self._generic("decode", {"n_emitted": n_emitted, "us": us, **appended})

    def mtp_draft(
        self,
        iter: int,
        path: str,
        seq_id: int,
        id_last: int,
        h_idx: int,
        attn_pos: int,
        n_steps: int,
        h_l2: float,
        drafts: Iterable[int],
        **appended: Any,
    ) -> None:
        if self._stream is None:
            return
        pl = _PATH_LIT.get(path) or orjson.dumps(path).decode()
        head = (
            f'{{"evt":"mtp_draft","iter":{int(iter)},"path":{pl},"seq_id":{int(seq_id)},'
            f'"id_last":{int(id_last)},"h_idx":{int(h_idx)},"attn_pos":{int(attn_pos)},'
            f'"n_steps":{int(n_steps)},"h_l2":{_h_l2(h_l2)},'
            f'"drafts":[{",".join([str(int(d)) for d in drafts])}]'
        )
        if appended:
            head += "".join(["," + _key(k) + _val(v) for k, v in appended.items()])
        self._write(head)

    def mtp_accept(self, iter: int, n_accepted: int, n_drafted_prev: int, **appended: Any) -> None:
        if self._stream is None:
            return
        head = (
            f'{{"evt":"mtp_accept","iter":{int(iter)},"n_accepted":{int(n_accepted)},'
            f'"n_drafted_prev":{int(n_drafted_prev)}'
        )
        if appended:
            head += "".join(["," + _key(k) + _val(v) for k, v in appended.items()])
        self._write(head)

    def run_end(self, **fields: Any) -> None:
        """``run_end``: status, n_prompt, n_gen, prefill_tok_s, decode_tok_s, kv_bytes,
        draft_acceptance_rate, tau."""
        if self._stream is None:
            return
        self._generic("run_end", fields)

    def close(self) -> None:
        with self._lock:
            s, self._stream = self._stream, None
        if s is not None and self._owns:
            s.close()


# --------------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------------


def parse_line(line: bytes | str) -> dict[str, Any] | None:
    """One trace line -> its object, or None when it is not a JSON object (malformed/blank).

    orjson parses the fork's two flat line shapes in about a microsecond; that is the fast path.
    """
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return obj if type(obj) is dict else None


def read_trace(
    path: str | os.PathLike[str], *, chunk_bytes: int = 1 << 22
) -> Iterator[dict[str, Any] | None]:
    """Yield each non-blank line of a finished trace as a dict, or None for a malformed line.

    Reads in chunks (bounded memory); a last line without newline is parsed as is (a half-written
    line therefore yields None).
    """
    for raw in iter_file_lines(path, chunk_bytes=chunk_bytes):
        if raw.strip():
            yield parse_line(raw)


def iter_file_lines(path: str | os.PathLike[str], *, chunk_bytes: int = 1 << 22, start: int = 0,
                    end: int | None = None) -> Iterator[bytes]:
    """The lines of a file (without newlines), read in chunks; bytes [start, end) only when given
    (start must be a line start; a range ending mid-file ends at a newline)."""
    try:
        fh = open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        raise UserError(
            f"trace file {str(path)!r} not found; check the path (or start the run that writes it)"
        ) from None
    except IsADirectoryError:
        raise UserError(f"trace path {str(path)!r} is a folder; give the trace file inside it") from None
    except OSError as e:
        raise UserError(f"cannot read trace file {str(path)!r}: {e.strerror}") from None
    with fh:
        rest = b""
        if start:
            fh.seek(start)
        left = None if end is None else end - start
        while True:
            buf = fh.read(chunk_bytes if left is None else min(chunk_bytes, left))
            if not buf:
                break
            if left is not None:
                left -= len(buf)
            lines = (rest + buf).split(b"\n")
            rest = lines.pop()
            yield from lines
        if rest:
            yield rest


# --------------------------------------------------------------------------------------------
# Aggregates
# --------------------------------------------------------------------------------------------


# A time bucket is a plain list (cheap to create: one per round for clock-less traces), fields:
BUCKET_FIELDS = (
    "key",  # second of the trace clock (t_us // 1e6), or the round index for clock-less traces
    "rounds",
    "n_accepted",
    "n_drafted",
    "emitted",  # tokens emitted by decode-phase events in this bucket
    "decode_us",  # decode wall time attributed to this bucket (trace clock, or arrival for the fork)
    "timed_tokens",  # tokens whose decode time is in decode_us
    "prefill_tokens",
    "prefill_us",
    "h_l2_sum",
    "h_l2_n",
)
B_KEY, B_ROUNDS, B_ACC, B_DRAFTED, B_EMITTED, B_DECODE_US, B_TIMED, B_PREFILL_TOK, B_PREFILL_US, B_H_SUM, B_H_N = (
    range(11)
)


def new_bucket(key: int) -> list[Any]:
    return [key, 0, 0, 0, 0, 0, 0, 0, 0, 0.0, 0]


def bucket_dict(b: list[Any]) -> dict[str, Any]:
    return dict(zip(BUCKET_FIELDS, b, strict=True))


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def _num(v: Any) -> bool:
    t = type(v)
    return t is int or t is float


@dataclass
class Aggregator:
    """Streaming aggregates of one trace (any number of runs), fed raw lines or parsed objects.

    ``pipe=True`` (stderr of the fork through a pipe): lines that do not start with '{' are
    counted in ``ignored_lines``; otherwise they are malformed. Malformed = not a JSON object, or
    a known event with fields of the wrong type. ``arrival`` (time.time() seconds) is passed for
    lines that arrived live; the fork's clock-less rounds use it for decode tok/s.

    Fork quirks: a skip line (path skip-*, empty drafts) gets no accept line and shares ``iter``
    with the next draft; an accept pairs with the last non-skip draft of the same ``iter``.
    A bare fork skip line (no ``run`` key) counts one emitted plain token (the fork writes no
    decode event); turbospec writes a ``decode`` event for it instead.
    """

    pipe: bool = False
    max_buckets: int = 4096

    lines: int = 0
    malformed_lines: int = 0
    ignored_lines: int = 0
    unknown_events: int = 0
    events: dict[str, int] = field(default_factory=dict)
    rounds: int = 0
    n_accepted: int = 0
    n_drafted: int = 0
    skip_rounds: int = 0
    draft_lines: int = 0
    paths: dict[str, int] = field(default_factory=dict)
    path_stats: dict[str, list[int]] = field(default_factory=dict)  # path -> [rounds, acc, drafted]
    pair_counts: dict[tuple[int, int], int] = field(default_factory=dict)  # (n_drafted, n_accepted)
    unpaired_accepts: int = 0
    draft_len_mismatch: int = 0
    n_prompt: int = 0
    prefill_us: int = 0
    n_gen: int = 0
    decode_us: int = 0
    timed_tokens: int = 0
    arrival_decode_s: float = 0.0
    arrival_tokens: int = 0
    h_l2_n: int = 0
    h_l2_sum: float = 0.0
    h_l2_min: float | None = None
    h_l2_max: float | None = None
    h_l2_last: float | None = None
    draft_us_sum: int = 0
    draft_us_n: int = 0
    verify_us_sum: int = 0
    verify_us_n: int = 0
    clocked: bool = False
    runs: int = 0
    header: dict[str, Any] = field(default_factory=dict)
    end: dict[str, Any] = field(default_factory=dict)
    last_block_size: int | None = None
    t_first_us: int | None = None
    t_last_us: int | None = None
    buckets: deque[list[Any]] = field(default_factory=deque)

    # streaming state
    _last_draft: tuple[Any, int, str] | None = None  # (iter, len(drafts), path)
    _t_phase: int | None = None
    _arr_phase: float | None = None
    _cur: list[Any] | None = None

    def __post_init__(self) -> None:
        self.buckets = deque(maxlen=self.max_buckets)

    # -- feeding ------------------------------------------------------------------------------

    def feed_lines(self, raws: Iterable[bytes | str], arrival: float | None = None) -> None:  # noqa: C901
        """Feed complete lines (without or with their newline).

        The hot path: mtp_draft / mtp_accept lines are handled inline with the counters in
        locals (about 3x faster than :meth:`feed_obj` per line); other events go through
        :meth:`feed_obj`. Both give identical results (tested against :func:`batch_metrics`).
        """
        loads = orjson.loads
        err = orjson.JSONDecodeError
        pipe = self.pipe
        pc = self.pair_counts
        paths = self.paths
        path_stats = self.path_stats
        ev = self.events
        append = self.buckets.append
        n_lines = malformed = ignored = 0
        n_acc_ev = n_draft_ev = 0
        rounds, n_acc, n_dr, n_gen = self.rounds, self.n_accepted, self.n_drafted, self.n_gen
        last = self._last_draft
        unpaired, mismatch = self.unpaired_accepts, self.draft_len_mismatch
        v_sum, v_n, d_sum, d_n = self.verify_us_sum, self.verify_us_n, self.draft_us_sum, self.draft_us_n
        h_n, h_sum, h_min, h_max, h_last = self.h_l2_n, self.h_l2_sum, self.h_l2_min, self.h_l2_max, self.h_l2_last
        skips, d_lines, block = self.skip_rounds, self.draft_lines, self.last_block_size
        clocked, t_first, t_last = self.clocked, self.t_first_us, self.t_last_us
        t_phase, a_phase, cur = self._t_phase, self._arr_phase, self._cur
        dec_us, timed, a_s, a_tok = self.decode_us, self.timed_tokens, self.arrival_decode_s, self.arrival_tokens

        for raw in raws:
            if pipe:
                st = raw.lstrip()
                if not st:
                    continue
                if st[:1] not in (b"{", "{"):
                    ignored += 1
                    continue
            try:
                o = loads(raw)
            except err:
                if raw.strip():
                    n_lines += 1
                    malformed += 1
                continue
            if type(o) is not dict:
                n_lines += 1
                malformed += 1
                continue
            evt = o.get("evt")
            if evt == "mtp_accept":
                n_lines += 1
                na = o.get("n_accepted")
                nd = o.get("n_drafted_prev")
                if type(na) is not int or type(nd) is not int or na < 0 or nd < 0:
                    malformed += 1
                    continue
                n_acc_ev += 1
                t = o.get("t_us")
                if t is not None:
                    if type(t) is int:
                        clocked = True
                        if t_first is None:
                            t_first = t
                        t_last = t
                    else:
                        t = None
                rounds += 1
                n_acc += na
                n_dr += nd
                k = (nd, na)
                pc[k] = pc.get(k, 0) + 1
                ne = o.get("n_emitted")
                if ne is None or type(ne) is not int:
                    ne = na + 1
                n_gen += ne
                if last is not None and last[0] == o.get("iter"):
                    if last[1] != nd:
                        mismatch += 1
                    ps = path_stats.get(last[2])
                    if ps is None:
                        ps = path_stats[last[2]] = [0, 0, 0]
                    ps[0] += 1
                    ps[1] += na
                    ps[2] += nd
                else:
                    unpaired += 1
                last = None
                vu = o.get("verify_us")
                if vu is not None:
                    tv = type(vu)
                    if tv is int or tv is float:
                        v_sum += vu
                        v_n += 1
                if t is not None:
                    key = t // 1_000_000
                elif clocked and cur is not None:
                    key = cur[0]
                else:
                    key = rounds
                if cur is None or key > cur[0]:
                    cur = [key, 0, 0, 0, 0, 0, 0, 0, 0, 0.0, 0]
                    append(cur)
                cur[1] += 1
                cur[2] += na
                cur[3] += nd
                cur[4] += ne
                if t is not None:
                    if t_phase is not None:
                        dt = t - t_phase
                        if dt >= 0:
                            dec_us += dt
                            timed += ne
                            cur[5] += dt
                            cur[6] += ne
                    t_phase = t
                elif arrival is not None:
                    if a_phase is not None and arrival >= a_phase:
                        a_s += arrival - a_phase
                        a_tok += ne
                        cur[5] += int((arrival - a_phase) * 1e6)
                        cur[6] += ne
                    a_phase = arrival
            elif evt == "mtp_draft":
                drafts = o.get("drafts")
                path = o.get("path")
                if type(drafts) is not list or type(path) is not str or not drafts or path[:4] == "skip":
                    # rare (skip lines, malformed): the reference path
                    self._sync_in(locals())
                    self.lines += n_lines
                    self.malformed_lines += malformed
                    n_lines = malformed = 0
                    self.feed_obj(o, arrival)
                    (rounds, n_acc, n_dr, n_gen, last, unpaired, mismatch, v_sum, v_n, d_sum, d_n, h_n, h_sum,
                     h_min, h_max, h_last, skips, d_lines, block, clocked, t_first, t_last, t_phase, a_phase,
                     cur, dec_us, timed, a_s, a_tok) = self._sync_out()
                    continue
                n_lines += 1
                n_draft_ev += 1
                t = o.get("t_us")
                if t is not None:
                    if type(t) is int:
                        clocked = True
                        if t_first is None:
                            t_first = t
                        t_last = t
                    else:
                        t = None
                paths[path] = paths.get(path, 0) + 1
                d_lines += 1
                last = (o.get("iter"), len(drafts), path)
                ns = o.get("n_steps")
                if type(ns) is int and ns > 0:
                    block = ns + 1
                du = o.get("draft_us")
                if du is not None:
                    tv = type(du)
                    if tv is int or tv is float:
                        d_sum += du
                        d_n += 1
                h = o.get("h_l2")
                tv = type(h)
                if tv is int or tv is float:
                    h_n += 1
                    h_sum += h
                    h_last = h
                    if h_min is None or h < h_min:
                        h_min = h
                    if h_max is None or h > h_max:
                        h_max = h
                    if t is not None:
                        key = t // 1_000_000
                    elif clocked and cur is not None:
                        key = cur[0]
                    else:
                        key = rounds + 1
                    if cur is None or key > cur[0]:
                        cur = [key, 0, 0, 0, 0, 0, 0, 0, 0, 0.0, 0]
                        append(cur)
                    cur[9] += h
                    cur[10] += 1
            else:
                self._sync_in(locals())
                self.lines += n_lines
                self.malformed_lines += malformed
                n_lines = malformed = 0
                self.feed_obj(o, arrival)
                (rounds, n_acc, n_dr, n_gen, last, unpaired, mismatch, v_sum, v_n, d_sum, d_n, h_n, h_sum,
                 h_min, h_max, h_last, skips, d_lines, block, clocked, t_first, t_last, t_phase, a_phase,
                 cur, dec_us, timed, a_s, a_tok) = self._sync_out()

        self._sync_in(locals())
        self.lines += n_lines
        self.malformed_lines += malformed
        self.ignored_lines += ignored
        if n_acc_ev:
            ev["mtp_accept"] = ev.get("mtp_accept", 0) + n_acc_ev
        if n_draft_ev:
            ev["mtp_draft"] = ev.get("mtp_draft", 0) + n_draft_ev

    def _sync_in(self, v: dict[str, Any]) -> None:
        """Store feed_lines' local counters back on self (before a feed_obj call and at the end)."""
        self.rounds, self.n_accepted, self.n_drafted, self.n_gen = v["rounds"], v["n_acc"], v["n_dr"], v["n_gen"]
        self._last_draft, self.unpaired_accepts, self.draft_len_mismatch = v["last"], v["unpaired"], v["mismatch"]
        self.verify_us_sum, self.verify_us_n, self.draft_us_sum, self.draft_us_n = (
            v["v_sum"], v["v_n"], v["d_sum"], v["d_n"])
        self.h_l2_n, self.h_l2_sum, self.h_l2_min, self.h_l2_max, self.h_l2_last = (
            v["h_n"], v["h_sum"], v["h_min"], v["h_max"], v["h_last"])
        self.skip_rounds, self.draft_lines, self.last_block_size = v["skips"], v["d_lines"], v["block"]
        self.clocked, self.t_first_us, self.t_last_us = v["clocked"], v["t_first"], v["t_last"]
        self._t_phase, self._arr_phase, self._cur = v["t_phase"], v["a_phase"], v["cur"]
        self.decode_us, self.timed_tokens, self.arrival_decode_s, self.arrival_tokens = (
            v["dec_us"], v["timed"], v["a_s"], v["a_tok"])

    def _sync_out(self) -> tuple[Any, ...]:
        return (self.rounds, self.n_accepted, self.n_drafted, self.n_gen, self._last_draft, self.unpaired_accepts,
                self.draft_len_mismatch, self.verify_us_sum, self.verify_us_n, self.draft_us_sum, self.draft_us_n,
                self.h_l2_n, self.h_l2_sum, self.h_l2_min, self.h_l2_max, self.h_l2_last, self.skip_rounds,
                self.draft_lines, self.last_block_size, self.clocked, self.t_first_us, self.t_last_us,
                self._t_phase, self._arr_phase, self._cur, self.decode_us, self.timed_tokens,
                self.arrival_decode_s, self.arrival_tokens)

    def feed_line(self, raw: bytes | str, arrival: float | None = None) -> None:
        self.feed_lines((raw,), arrival)

    def _bucket(self, key: int) -> list[Any]:
        cur = self._cur
        if cur is not None and key <= cur[0]:
            return cur  # same bucket, or a clock that went back: attribute to the latest
        b = [key, 0, 0, 0, 0, 0, 0, 0, 0, 0.0, 0]
        self.buckets.append(b)
        self._cur = b
        return b

    def feed_obj(self, o: dict[str, Any], arrival: float | None = None) -> None:  # noqa: C901
        """Feed one parsed line (a dict)."""
        self.lines += 1
        evt = o.get("evt")
        t = o.get("t_us")
        if type(t) is not int:
            t = None
        ev = self.events
        if evt == "mtp_accept":
            na = o.get("n_accepted")
            nd = o.get("n_drafted_prev")
            if type(na) is not int or type(nd) is not int or na < 0 or nd < 0:
                self.malformed_lines += 1
                return
            ev[evt] = ev.get(evt, 0) + 1
            self._clock(t)
            self.rounds += 1
            self.n_accepted += na
            self.n_drafted += nd
            pc = self.pair_counts
            k = (nd, na)
            pc[k] = pc.get(k, 0) + 1
            ne = o.get("n_emitted")
            if type(ne) is not int:
                ne = na + 1
            self.n_gen += ne
            ld = self._last_draft
            if ld is not None and ld[0] == o.get("iter"):
                if ld[1] != nd:
                    self.draft_len_mismatch += 1
                ps = self.path_stats.get(ld[2])
                if ps is None:
                    ps = self.path_stats[ld[2]] = [0, 0, 0]
                ps[0] += 1
                ps[1] += na
                ps[2] += nd
            else:
                self.unpaired_accepts += 1
            self._last_draft = None
            vu = o.get("verify_us")
            if _num(vu):
                self.verify_us_sum += vu
                self.verify_us_n += 1
            b = self._bucket(self._key_for(t, self.rounds))
            b[1] += 1
            b[2] += na
            b[3] += nd
            b[4] += ne
            self._decode_time(b, t, arrival, ne)
        elif evt == "mtp_draft":
            drafts = o.get("drafts")
            path = o.get("path")
            if type(drafts) is not list or type(path) is not str:
                self.malformed_lines += 1
                return
            ev[evt] = ev.get(evt, 0) + 1
            self._clock(t)
            self.paths[path] = self.paths.get(path, 0) + 1
            ns = o.get("n_steps")
            if not drafts or path.startswith("skip"):
                self.skip_rounds += 1
                self._last_draft = None
                if "run" not in o:  # bare fork line: the skipped round decodes one plain token
                    self.n_gen += 1
                    b = self._bucket(self._key_for(None, self.rounds + 1))
                    b[4] += 1
                    self._decode_time(b, t, arrival, 1)
                return
            self.draft_lines += 1
            self._last_draft = (o.get("iter"), len(drafts), path)
            if type(ns) is int and ns > 0:
                self.last_block_size = ns + 1
            h = o.get("h_l2")
            du = o.get("draft_us")
            if _num(du):
                self.draft_us_sum += du
                self.draft_us_n += 1
            if _num(h):
                self.h_l2_n += 1
                self.h_l2_sum += h
                self.h_l2_last = h
                if self.h_l2_min is None or h < self.h_l2_min:
                    self.h_l2_min = h
                if self.h_l2_max is None or h > self.h_l2_max:
                    self.h_l2_max = h
                b = self._bucket(self._key_for(t, self.rounds + 1))
                b[9] += h
                b[10] += 1
        elif evt == "decode":
            ne = o.get("n_emitted", 1)
            us = o.get("us")
            if type(ne) is not int or not _num(us):
                self.malformed_lines += 1
                return
            ev[evt] = ev.get(evt, 0) + 1
            self._clock(t)
            self.n_gen += ne
            b = self._bucket(t // 1_000_000 if t is not None else (self._cur[0] if self._cur else 0))
            b[4] += ne
            self._decode_time(b, t, arrival, ne, us)
        elif evt == "prefill":
            nt = o.get("n_tokens")
            us = o.get("us")
            if type(nt) is not int or not _num(us):
                self.malformed_lines += 1
                return
            ev[evt] = ev.get(evt, 0) + 1
            self._clock(t)
            self.n_prompt += nt
            self.prefill_us += int(us)
            b = self._bucket(t // 1_000_000 if t is not None else (self._cur[0] if self._cur else 0))
            b[7] += nt
            b[8] += int(us)
            self._t_phase = t
            self._arr_phase = arrival
        elif evt == "run_start":
            ev[evt] = ev.get(evt, 0) + 1
            self._clock(t)
            self.runs += 1
            self.header = {k: v for k, v in o.items() if k != "evt"}
            self.end = {}
            self._last_draft = None
            self._t_phase = t
            self._arr_phase = None
            bs = o.get("draft_block_size")
            if type(bs) is int:
                self.last_block_size = bs
        elif evt == "run_end":
            ev[evt] = ev.get(evt, 0) + 1
            self._clock(t)
            self.end = {k: v for k, v in o.items() if k != "evt"}
        else:
            self.unknown_events += 1

    def _key_for(self, t: int | None, rnd: int) -> int:
        """Bucket key: the second of the trace clock; for clock-less lines the round index."""
        if t is not None:
            return t // 1_000_000
        cur = self._cur
        return cur[0] if self.clocked and cur is not None else rnd

    def _clock(self, t: int | None) -> None:
        if t is not None:
            self.clocked = True
            if self.t_first_us is None:
                self.t_first_us = t
            self.t_last_us = t

    def _decode_time(self, b: list[Any], t: int | None, arrival: float | None, ne: int, us: Any = None) -> None:
        """Decode wall time of one decode-phase event: the gap since the previous phase event."""
        if t is not None:
            tp = self._t_phase
            dt = t - tp if tp is not None else (int(us) if us is not None else None)
            self._t_phase = t
            if dt is not None and dt >= 0:
                self.decode_us += dt
                self.timed_tokens += ne
                b[5] += dt
                b[6] += ne
        elif arrival is not None:
            ap = self._arr_phase
            self._arr_phase = arrival
            if ap is not None and arrival >= ap:
                dt_s = arrival - ap
                self.arrival_decode_s += dt_s
                self.arrival_tokens += ne
                b[5] += int(dt_s * 1e6)
                b[6] += ne

    # -- results ------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Every metric of DESIGN.md as a plain JSON-able dict (the `stats --json` object)."""
        return compute_metrics(self)

    _SUMMED = (
        "lines", "malformed_lines", "ignored_lines", "unknown_events", "rounds", "n_accepted", "n_drafted",
        "skip_rounds", "draft_lines", "unpaired_accepts", "draft_len_mismatch", "n_prompt", "prefill_us", "n_gen",
        "decode_us", "timed_tokens", "arrival_decode_s", "arrival_tokens", "h_l2_n", "h_l2_sum", "draft_us_sum",
        "draft_us_n", "verify_us_sum", "verify_us_n", "runs",
    )

    def add_counts(self, b: Aggregator) -> None:
        """Add b's counters, event/path/pair counts and per-path stats to ours."""
        for name in self._SUMMED:
            setattr(self, name, getattr(self, name) + getattr(b, name))
        for src, dst in ((b.events, self.events), (b.paths, self.paths), (b.pair_counts, self.pair_counts)):
            for k, v in src.items():
                dst[k] = dst.get(k, 0) + v
        for k, v in b.path_stats.items():
            ps = self.path_stats.setdefault(k, [0, 0, 0])
            for i in range(3):
                ps[i] += v[i]

    def concat(self, b: Aggregator) -> None:
        """Append the aggregates of the lines that follow this aggregator's, where ``b`` was fed
        those lines starting from :func:`aggregator_at` of the split (so its streaming state at
        the start equals ours at the end). Afterwards self is what feeding every line here gives."""
        self.add_counts(b)
        if b.h_l2_n:
            self.h_l2_min = b.h_l2_min if self.h_l2_min is None else min(self.h_l2_min, b.h_l2_min)
            self.h_l2_max = b.h_l2_max if self.h_l2_max is None else max(self.h_l2_max, b.h_l2_max)
            self.h_l2_last = b.h_l2_last
        self.clocked = self.clocked or b.clocked
        if self.t_first_us is None:
            self.t_first_us = b.t_first_us
        if b.t_last_us is not None:
            self.t_last_us = b.t_last_us
        if b.runs:
            self.header, self.end = b.header, b.end
        elif b.end:
            self.end = b.end
        if b.last_block_size is not None:
            self.last_block_size = b.last_block_size
        bb = list(b.buckets)
        if self.buckets:  # b's buckets at or before our last key are our last bucket (as _bucket does)
            cur = self.buckets[-1]
            while bb and bb[0][0] <= cur[0]:
                first = bb.pop(0)
                for i in range(1, len(cur)):
                    cur[i] += first[i]
                if b._cur is first:
                    b._cur = cur
        self.buckets.extend(bb)
        self._last_draft, self._t_phase, self._arr_phase = b._last_draft, b._t_phase, b._arr_phase
        self._cur = b._cur


def per_position(pair_counts: dict[tuple[int, int], int]) -> tuple[list[float | None], list[float | None]]:
    """p_i = P(n_accepted > i | n_drafted > i) for i = 0..max_drafted-1, and α_i = p_i / p_(i-1)."""
    max_nd = max((nd for nd, _ in pair_counts), default=0)
    ps: list[float | None] = []
    for i in range(max_nd):
        den = sum(c for (nd, _), c in pair_counts.items() if nd > i)
        num = sum(c for (nd, na), c in pair_counts.items() if nd > i and na > i)
        ps.append(num / den if den else None)
    alphas: list[float | None] = []
    for i, p in enumerate(ps):
        prev = 1.0 if i == 0 else ps[i - 1]
        alphas.append(None if p is None or not prev else p / prev)
    return ps, alphas


def compute_metrics(a: Aggregator) -> dict[str, Any]:
    ps, alphas = per_position(a.pair_counts)
    hist_len = max((na for _, na in a.pair_counts), default=-1) + 1
    hist = [0] * hist_len
    for (_, na), c in a.pair_counts.items():
        hist[na] += c
    if a.clocked:
        decode_s = a.decode_us / 1e6
        decode_tok_s = a.timed_tokens / decode_s if decode_s > 0 else None
        clock = "trace"
    else:
        decode_s = a.arrival_decode_s
        decode_tok_s = a.arrival_tokens / decode_s if decode_s > 0 else None
        clock = "arrival"
    prefill_s = a.prefill_us / 1e6
    return {
        "schema": SCHEMA,
        "draft_acceptance_rate": a.n_accepted / a.n_drafted if a.n_drafted else None,
        "tau": 1.0 + a.n_accepted / a.rounds if a.rounds else None,
        "per_position": ps,
        "conditional": alphas,
        "rounds": a.rounds,
        "n_accepted": a.n_accepted,
        "n_drafted": a.n_drafted,
        "skip_rounds": a.skip_rounds,
        "draft_lines": a.draft_lines,
        "paths": dict(sorted(a.paths.items())),
        "path_acceptance": {
            p: {"rounds": r, "n_accepted": acc, "n_drafted": d, "draft_acceptance_rate": _ratio(acc, d)}
            for p, (r, acc, d) in sorted(a.path_stats.items())
        },
        "accepted_hist": hist,
        "block_size": a.last_block_size,
        "unpaired_accepts": a.unpaired_accepts,
        "draft_len_mismatch": a.draft_len_mismatch,
        "n_prompt": a.n_prompt,
        "n_gen": a.n_gen,
        "prefill_s": prefill_s,
        "prefill_tok_s": a.n_prompt / prefill_s if prefill_s > 0 else None,
        "decode_s": decode_s,
        "decode_tok_s": decode_tok_s,
        "clock": clock,
        "h_l2": {
            "n": a.h_l2_n,
            "mean": a.h_l2_sum / a.h_l2_n if a.h_l2_n else None,
            "min": a.h_l2_min,
            "max": a.h_l2_max,
            "last": a.h_l2_last,
        },
        "draft_us_mean": a.draft_us_sum / a.draft_us_n if a.draft_us_n else None,
        "verify_us_mean": a.verify_us_sum / a.verify_us_n if a.verify_us_n else None,
        "draft_us_total": a.draft_us_sum,
        "verify_us_total": a.verify_us_sum,
        "lines": a.lines,
        "malformed_lines": a.malformed_lines,
        "ignored_lines": a.ignored_lines,
        "unknown_events": a.unknown_events,
        "events": dict(sorted(a.events.items())),
        "runs": a.runs,
        "header": a.header,
        "end": a.end,
        "kv_bytes": a.end.get("kv_bytes"),
        "t_first_us": a.t_first_us,
        "t_last_us": a.t_last_us,
    }


def aggregate_file(
    path: str | os.PathLike[str], *, pipe: bool = False, chunk_bytes: int = 1 << 22,
    parallel_min_bytes: int | None = None,
) -> Aggregator:
    """Read a finished trace from disk into an Aggregator (chunked: bounded memory).

    A trace of ``parallel_min_bytes`` or more (default PARALLEL_MIN_BYTES) is read by two
    processes: a worker aggregates the second half while this one reads the first (see
    :func:`parallel_split`); the result is identical to the sequential read (tested)."""
    agg = Aggregator(pipe=pipe)
    split = None
    if not pipe:
        split = parallel_split(path, PARALLEL_MIN_BYTES if parallel_min_bytes is None else parallel_min_bytes)
    if split is None:
        feed_range(agg, path, 0, None, chunk_bytes)
        return agg
    worker = RangeWorker(path, split)
    try:
        feed_range(agg, path, 0, split.offset, chunk_bytes)
        tail = worker.result()
    except BaseException:
        worker.kill()
        raise
    if tail is None:  # the worker failed (e.g. no interpreter): read the rest here
        feed_range(agg, path, split.offset, split.end, chunk_bytes)
        return agg
    agg.concat(tail)
    return agg


def feed_range(agg: Aggregator, path: str | os.PathLike[str], start: int, end: int | None,
               chunk_bytes: int = 1 << 22, notify: Any = None) -> None:
    """Feed the lines of bytes [start, end) of a file (start at a line start) in batches of 8192;
    the last line is fed only when the range ends the file or at a newline."""
    it = iter_file_lines(path, chunk_bytes=chunk_bytes, start=start, end=end)
    batch: list[bytes] = []
    for raw in it:
        batch.append(raw)
        if len(batch) >= 8192:
            agg.feed_lines(batch)
            if notify is not None:
                notify(batch)
            batch = []
    agg.feed_lines(batch)
    if notify is not None and batch:
        notify(batch)


# -- reading a big trace with two processes ---------------------------------------------------------
#
# Napkin: a 1M-line turbospec trace (194 MB) costs ~0.4 s to read and split, ~1 s of orjson and
# ~1.5 s of aggregation in one process; two processes each take half (the worker's interpreter
# start is ~0.1 s). The split is exact: it lies before an mtp_draft line that follows a clocked
# mtp_accept, where the aggregator's streaming state is known from that accept line alone
# (no draft pending, the decode clock at its t_us, the current bucket = its second), so the
# worker starts from that state and Aggregator.concat adds the two halves.

PARALLEL_MIN_BYTES = 32 << 20
_SPLIT_SEARCH = 1 << 20


@dataclass
class Split:
    offset: int  # byte offset of the mtp_draft line that starts the second half
    end: int  # file size when the split was chosen: the worker reads [offset, end)
    t_us: int  # t_us of the mtp_accept line just before it


def parallel_split(path: str | os.PathLike[str], min_bytes: int) -> Split | None:
    """Where to split a big clocked trace for two readers, or None (small, clock-less, no spot)."""
    try:
        size = os.path.getsize(path)
    except OSError:
        return None
    if size < max(min_bytes, 1) or size < 4096:
        return None
    with open(path, "rb") as fh:
        fh.seek(size // 2)
        buf = fh.read(_SPLIT_SEARCH)
    base = size // 2
    i = buf.find(b"\n")
    while 0 <= i < len(buf):
        j = buf.find(b"\n", i + 1)
        if j < 0:
            return None
        line = buf[i + 1 : j]
        if line.startswith(b'{"evt":"mtp_accept"'):
            k = buf.find(b"\n", j + 1)
            if k < 0:
                return None
            if buf[j + 1 : k].startswith(b'{"evt":"mtp_draft"'):
                try:
                    o = orjson.loads(line)
                except orjson.JSONDecodeError:
                    o = None
                if type(o) is dict:
                    t, na, nd = o.get("t_us"), o.get("n_accepted"), o.get("n_drafted_prev")
                    if type(t) is int and type(na) is int and type(nd) is int and na >= 0 and nd >= 0:
                        return Split(offset=base + j + 1, end=size, t_us=t)
        i = j
    return None


def aggregator_at(split: Split, max_buckets: int = 4096) -> Aggregator:
    """A fresh aggregator in the streaming state the file's aggregator has at ``split``."""
    a = Aggregator(max_buckets=max_buckets)
    a.clocked = True
    a._t_phase = split.t_us
    a._cur = new_bucket(split.t_us // 1_000_000)
    a.buckets.append(a._cur)
    return a


def _range_worker_main() -> None:  # pragma: no cover - runs in the worker process (tested through it)
    import pickle

    path, offset, end, t_us = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    a = aggregator_at(Split(offset, end, t_us))
    feed_range(a, path, offset, end)
    sys.stdout.buffer.write(pickle.dumps(a, protocol=pickle.HIGHEST_PROTOCOL))


class RangeWorker:
    """Aggregates bytes [split.offset, split.end) of a trace in a child interpreter."""

    def __init__(self, path: str | os.PathLike[str], split: Split):
        import subprocess

        code = "from turbospec.trace import _range_worker_main; _range_worker_main()"
        try:
            self.proc: Any = subprocess.Popen(
                [sys.executable, "-c", code, os.fspath(path), str(split.offset), str(split.end), str(split.t_us)],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        except OSError:
            self.proc = None

    def result(self) -> Aggregator | None:
        """The worker's aggregator, or None when it failed (the caller reads the range itself)."""
        import pickle

        if self.proc is None:
            return None
        out, _ = self.proc.communicate()
        if self.proc.returncode != 0:
            return None
        try:
            a = pickle.loads(out)
        except Exception:
            return None
        return a if isinstance(a, Aggregator) else None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# --------------------------------------------------------------------------------------------
# Batch reference (the test oracle): plain, two passes, stdlib json
# --------------------------------------------------------------------------------------------


def _json_or_none(raw: bytes | str) -> Any:
    def bad_const(name: str) -> Any:
        raise ValueError(name)

    try:
        return json.loads(raw, parse_constant=bad_const)
    except (ValueError, UnicodeDecodeError):
        return None


def batch_metrics(
    raws: list[bytes | str],
    arrivals: list[float | None] | None = None,
    *,
    pipe: bool = False,
    max_buckets: int = 4096,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Reference: the same metrics and buckets as Aggregator, computed plainly from a list of lines."""
    if arrivals is None:
        arrivals = [None] * len(raws)
    # pass 1: classify lines
    ignored = 0
    malformed = 0
    objs: list[tuple[dict[str, Any], float | None]] = []
    for raw, arr in zip(raws, arrivals, strict=True):
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        if not text.strip():
            continue
        if pipe and not text.lstrip().startswith("{"):
            ignored += 1
            continue
        o = _json_or_none(raw)
        if not isinstance(o, dict):
            malformed += 1
            continue
        objs.append((o, arr))

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def is_num(v: Any) -> bool:
        return is_int(v) or isinstance(v, float)

    def valid(o: dict[str, Any]) -> bool:
        e = o.get("evt")
        if e == "mtp_accept":
            return (is_int(o.get("n_accepted")) and is_int(o.get("n_drafted_prev"))
                    and o["n_accepted"] >= 0 and o["n_drafted_prev"] >= 0)
        if e == "mtp_draft":
            return isinstance(o.get("drafts"), list) and isinstance(o.get("path"), str)
        if e == "decode":
            return is_int(o.get("n_emitted", 1)) and is_num(o.get("us"))
        if e == "prefill":
            return is_int(o.get("n_tokens")) and is_num(o.get("us"))
        return True

    n_lines = len(objs) + malformed
    malformed += sum(1 for o, _ in objs if not valid(o))
    objs = [(o, a) for o, a in objs if valid(o)]
    known = [(o, a) for o, a in objs if o.get("evt") in EVENTS]
    unknown = len(objs) - len(known)

    def t_of(o: dict[str, Any]) -> int | None:
        return o["t_us"] if is_int(o.get("t_us")) else None

    clocked = any(t_of(o) is not None for o, _ in known)
    accepts = [o for o, _ in known if o["evt"] == "mtp_accept"]
    drafts = [o for o, _ in known if o["evt"] == "mtp_draft"]
    is_skip = lambda o: (not o["drafts"]) or o["path"].startswith("skip")
    pair_counts: dict[tuple[int, int], int] = {}
    for o in accepts:
        k = (o["n_drafted_prev"], o["n_accepted"])
        pair_counts[k] = pair_counts.get(k, 0) + 1

    # pass 2: sequential state (pairing, decode time, buckets)
    buckets: list[dict[str, Any]] = []
    path_stats: dict[str, list[int]] = {}
    unpaired = mismatch = 0
    last = None
    t_phase: int | None = None
    a_phase: float | None = None
    decode_us = timed = 0
    arr_s = 0.0
    arr_tok = 0
    n_gen = 0
    rounds_seen = 0
    seen_clock = False
    header: dict[str, Any] = {}
    end: dict[str, Any] = {}
    block = None
    t_first = t_last = None

    def bucket(key: int) -> dict[str, Any]:
        if buckets and key <= buckets[-1]["key"]:
            return buckets[-1]
        b = bucket_dict(new_bucket(key))
        buckets.append(b)
        return b

    def cur_key(default: int) -> int:
        return buckets[-1]["key"] if buckets else default

    def key_for(t: int | None, rnd: int) -> int:
        if t is not None:
            return t // 1_000_000
        return cur_key(rnd) if seen_clock else rnd

    def dtime(b: dict[str, Any], t: int | None, arr: float | None, ne: int, us: Any = None) -> None:
        nonlocal t_phase, a_phase, decode_us, timed, arr_s, arr_tok
        if t is not None:
            if t_phase is not None:
                dt = t - t_phase
            else:
                dt = int(us) if us is not None else None
            t_phase = t
            if dt is not None and dt >= 0:
                decode_us += dt
                timed += ne
                b["decode_us"] += dt
                b["timed_tokens"] += ne
        elif arr is not None:
            prev, a_phase = a_phase, arr
            if prev is not None and arr >= prev:
                arr_s += arr - prev
                arr_tok += ne
                b["decode_us"] += int((arr - prev) * 1e6)
                b["timed_tokens"] += ne

    for o, arr in known:
        e = o["evt"]
        t = t_of(o)
        if t is not None:
            seen_clock = True
            t_first = t if t_first is None else t_first
            t_last = t
        if e == "mtp_accept":
            rounds_seen += 1
            na, nd = o["n_accepted"], o["n_drafted_prev"]
            ne = o["n_emitted"] if is_int(o.get("n_emitted")) else na + 1
            n_gen += ne
            if last is not None and last[0] == o.get("iter"):
                mismatch += last[1] != nd
                ps = path_stats.setdefault(last[2], [0, 0, 0])
                ps[0] += 1
                ps[1] += na
                ps[2] += nd
            else:
                unpaired += 1
            last = None
            b = bucket(key_for(t, rounds_seen))
            b["rounds"] += 1
            b["n_accepted"] += na
            b["n_drafted"] += nd
            b["emitted"] += ne
            dtime(b, t, arr, ne)
        elif e == "mtp_draft":
            if is_skip(o):
                last = None
                if "run" not in o:
                    n_gen += 1
                    b = bucket(key_for(None, rounds_seen + 1))
                    b["emitted"] += 1
                    dtime(b, t, arr, 1)
                continue
            last = (o.get("iter"), len(o["drafts"]), o["path"])
            if is_int(o.get("n_steps")) and o["n_steps"] > 0:
                block = o["n_steps"] + 1
            if is_num(o.get("h_l2")):
                b = bucket(key_for(t, rounds_seen + 1))
                b["h_l2_sum"] += o["h_l2"]
                b["h_l2_n"] += 1
        elif e == "decode":
            ne = o.get("n_emitted", 1)
            n_gen += ne
            b = bucket(t // 1_000_000 if t is not None else cur_key(0))
            b["emitted"] += ne
            dtime(b, t, arr, ne, o["us"])
        elif e == "prefill":
            b = bucket(t // 1_000_000 if t is not None else cur_key(0))
            b["prefill_tokens"] += o["n_tokens"]
            b["prefill_us"] += int(o["us"])
            t_phase, a_phase = t, arr
        elif e == "run_start":
            header = {k: v for k, v in o.items() if k != "evt"}
            end = {}
            last = None
            t_phase, a_phase = t, None
            if is_int(o.get("draft_block_size")):
                block = o["draft_block_size"]
        elif e == "run_end":
            end = {k: v for k, v in o.items() if k != "evt"}

    n_acc = sum(o["n_accepted"] for o in accepts)
    n_dr = sum(o["n_drafted_prev"] for o in accepts)
    ps, alphas = per_position(pair_counts)
    hist = [0] * (max((na for _, na in pair_counts), default=-1) + 1)
    for (_, na), c in pair_counts.items():
        hist[na] += c
    hs = [o["h_l2"] for o in drafts if not is_skip(o) and is_num(o.get("h_l2"))]
    dus = [o["draft_us"] for o in drafts if not is_skip(o) and is_num(o.get("draft_us"))]
    vus = [o["verify_us"] for o in accepts if is_num(o.get("verify_us"))]
    paths: dict[str, int] = {}
    for o in drafts:
        paths[o["path"]] = paths.get(o["path"], 0) + 1
    events: dict[str, int] = {}
    for o, _ in known:
        events[o["evt"]] = events.get(o["evt"], 0) + 1
    n_prompt = sum(o["n_tokens"] for o, _ in known if o["evt"] == "prefill")
    prefill_us = sum(int(o["us"]) for o, _ in known if o["evt"] == "prefill")
    decode_s = decode_us / 1e6 if clocked else arr_s
    dtok = timed if clocked else arr_tok
    metrics = {
        "schema": SCHEMA,
        "draft_acceptance_rate": n_acc / n_dr if n_dr else None,
        "tau": 1.0 + n_acc / len(accepts) if accepts else None,
        "per_position": ps,
        "conditional": alphas,
        "rounds": len(accepts),
        "n_accepted": n_acc,
        "n_drafted": n_dr,
        "skip_rounds": sum(1 for o in drafts if is_skip(o)),
        "draft_lines": sum(1 for o in drafts if not is_skip(o)),
        "paths": dict(sorted(paths.items())),
        "path_acceptance": {
            p: {"rounds": r, "n_accepted": acc, "n_drafted": d, "draft_acceptance_rate": _ratio(acc, d)}
            for p, (r, acc, d) in sorted(path_stats.items())
        },
        "accepted_hist": hist,
        "block_size": block,
        "unpaired_accepts": unpaired,
        "draft_len_mismatch": mismatch,
        "n_prompt": n_prompt,
        "n_gen": n_gen,
        "prefill_s": prefill_us / 1e6,
        "prefill_tok_s": n_prompt / (prefill_us / 1e6) if prefill_us > 0 else None,
        "decode_s": decode_s,
        "decode_tok_s": dtok / decode_s if decode_s > 0 else None,
        "clock": "trace" if clocked else "arrival",
        "h_l2": {
            "n": len(hs),
            "mean": sum(hs) / len(hs) if hs else None,
            "min": min(hs) if hs else None,
            "max": max(hs) if hs else None,
            "last": hs[-1] if hs else None,
        },
        "draft_us_mean": sum(dus) / len(dus) if dus else None,
        "verify_us_mean": sum(vus) / len(vus) if vus else None,
        "draft_us_total": sum(dus),
        "verify_us_total": sum(vus),
        "lines": n_lines,
        "malformed_lines": malformed,
        "ignored_lines": ignored,
        "unknown_events": unknown,
        "events": dict(sorted(events.items())),
        "runs": events.get("run_start", 0),
        "header": header,
        "end": end,
        "kv_bytes": end.get("kv_bytes"),
        "t_first_us": t_first,
        "t_last_us": t_last,
    }
    return metrics, buckets[-max_buckets:]


# --------------------------------------------------------------------------------------------
# Tailer
# --------------------------------------------------------------------------------------------


class Tailer:
    """Follow a trace like ``tail -F``: from the beginning, then as it grows.

    ``poll()`` returns the complete lines read since the last call (never blocks on a file).
    It survives a file that does not exist yet, truncation (reads again from the start),
    rotation/re-creation (inode change: drains the old file, then opens the new one from the
    start) and a half-written last line (kept until its newline arrives). ``path == "-"`` reads
    standard input (a pipe): ``poll()`` waits at most ``timeout`` seconds for data.
    """

    def __init__(self, path: str, *, max_bytes: int = 1 << 22, stdin_fd: int | None = None, max_line: int = 1 << 20):
        self.path = path
        self.pipe = path == "-"
        self.max_bytes = max_bytes
        self._fh: IO[bytes] | None = None
        self._ino: tuple[int, int] | None = None
        self._pos = 0
        self._partial = b""
        self._skip_to_nl = False
        self.max_line = max_line
        self._fd = (sys.stdin.fileno() if stdin_fd is None else stdin_fd) if self.pipe else None
        self.truncations = 0
        self.rotations = 0
        self.eof = False  # pipe closed
        self.caught_up = False  # the last poll reached the end of the data available
        self.status = "waiting" if not self.pipe else "pipe"

    @property
    def exists(self) -> bool:
        return self.pipe or self._fh is not None

    def _open(self) -> bool:
        try:
            fh = open(self.path, "rb")  # noqa: SIM115
        except (FileNotFoundError, NotADirectoryError):
            self.status = "waiting for file"
            return False
        except OSError as e:
            self.status = f"cannot read: {e.strerror}"
            return False
        st = os.fstat(fh.fileno())
        self._fh, self._ino, self._pos, self._partial = fh, (st.st_dev, st.st_ino), 0, b""
        self._skip_to_nl = False
        self.status = "following"
        return True

    def _split(self, data: bytes) -> list[bytes]:
        if not data:
            return []
        if self._skip_to_nl:  # the rest of an overlong line
            nl = data.find(b"\n")
            if nl < 0:
                return []
            data, self._skip_to_nl = data[nl + 1 :], False
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > self.max_line:
            # a line longer than any trace line: keep memory bounded, report its head (it will not
            # parse: counted as malformed, or ignored in a pipe when it is not JSON) and skip the rest
            lines.append(self._partial[:64])
            self._partial, self._skip_to_nl = b"", True
        return lines

    def poll(self, timeout: float = 0.0) -> list[bytes]:
        if self.pipe:
            return self._poll_pipe(timeout)
        if self._fh is None and not self._open():
            self.caught_up = True
            return []
        fh = self._fh
        assert fh is not None
        out: list[bytes] = []
        try:
            st = os.stat(self.path)
            same = (st.st_dev, st.st_ino) == self._ino
        except OSError:
            st, same = None, True  # deleted, not yet re-created: keep draining the old file
        if same and st is not None and st.st_size < self._pos:
            self.truncations += 1
            fh.seek(0)
            self._pos, self._partial, self._skip_to_nl = 0, b"", False
        data = fh.read(self.max_bytes)
        self._pos += len(data)
        out = self._split(data)
        if len(data) == self.max_bytes:
            self.caught_up = False
            return out
        if not same:
            # rotated: the old file is drained; a half line left there was never finished
            rest = self._partial
            fh.close()
            self._fh = None
            self.rotations += 1
            if rest:
                out.append(rest)  # counted as malformed unless it happens to parse
            if self._open():
                more = self.poll()
                return out + more
        self.caught_up = True
        return out

    def _poll_pipe(self, timeout: float) -> list[bytes]:
        if self.eof:
            self.caught_up = True
            return []
        fd = self._fd
        assert fd is not None
        out: list[bytes] = []
        total = 0
        wait = timeout
        while total < self.max_bytes:
            r, _, _ = select.select([fd], [], [], wait)
            if not r:
                break
            data = os.read(fd, 1 << 16)
            if not data:
                self.eof = True
                self.status = "pipe closed"
                if self._partial:
                    out.append(self._partial)
                    self._partial = b""
                break
            total += len(data)
            out.extend(self._split(data))
            wait = 0.0
        self.caught_up = total < self.max_bytes
        return out

    def flush_partial(self) -> list[bytes]:
        """The half-written last line, if any (for a finished file that will not grow)."""
        rest, self._partial = self._partial, b""
        return [rest] if rest else []

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def merge_aggregators(aggs: list[Aggregator]) -> Aggregator:
    """Whole-run totals of several traces (counters summed; header/end/buckets of the last one)."""
    out = Aggregator()
    for a in aggs:
        out.add_counts(a)
        for name, pick in (("h_l2_min", min), ("h_l2_max", max)):
            vals = [x for x in (getattr(out, name), getattr(a, name)) if x is not None]
            setattr(out, name, pick(vals) if vals else None)
        out.h_l2_last = a.h_l2_last if a.h_l2_last is not None else out.h_l2_last
        out.clocked = out.clocked or a.clocked
        out.header, out.end = a.header or out.header, a.end or out.end
        out.last_block_size = a.last_block_size or out.last_block_size
    return out
