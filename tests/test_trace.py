"""The trace contract: writer byte format, parser, streaming aggregator == batch reference, tailer."""

from __future__ import annotations

import json
import os
import random

import orjson
import pytest

from turbospec.errors import UserError
from turbospec.trace import (
    MTP_ACCEPT_KEYS,
    MTP_DRAFT_KEYS,
    SCHEMA,
    Aggregator,
    Tailer,
    TraceWriter,
    aggregate_file,
    batch_metrics,
    bucket_dict,
    fmt_pct,
    fmt_tau,
    parse_line,
    per_position,
    read_trace,
    trace_target_from_env,
)
from turbospec.tui.synth import fork_accept, fork_draft, synth_lines

# ---------------------------------------------------------------------------------- writer


def _lines(p):
    return p.read_text().splitlines()


def test_writer_fork_key_order_and_h_l2_format(tmp_path):
    p = tmp_path / "t.ndjson"
    w = TraceWriter.open(str(p), run_id="r1")
    w.mtp_draft(42, "lazy", 0, 128006, 3, 17, 2, 142.3, [882, 441], drafter="mtp", draft_us=1234)
    w.mtp_accept(42, 1, 2, verify_us=30000, n_emitted=2, pos=20)
    w.close()
    d, a = _lines(p)
    fork_d = '{"evt":"mtp_draft","iter":42,"path":"lazy","seq_id":0,"id_last":128006,"h_idx":3,"attn_pos":17,' \
             '"n_steps":2,"h_l2":142.3000,"drafts":[882,441]'
    assert d.startswith(fork_d + ',"drafter":"mtp","draft_us":1234,"t_us":')
    assert d.endswith(',"run":"r1"}')
    assert a.startswith('{"evt":"mtp_accept","iter":42,"n_accepted":1,"n_drafted_prev":2,'
                        '"verify_us":30000,"n_emitted":2,"pos":20,"t_us":')
    od, oa = json.loads(d), json.loads(a)
    assert tuple(od)[: len(MTP_DRAFT_KEYS)] == MTP_DRAFT_KEYS
    assert tuple(oa)[: len(MTP_ACCEPT_KEYS)] == MTP_ACCEPT_KEYS
    assert list(od)[-2:] == ["t_us", "run"] and list(oa)[-2:] == ["t_us", "run"]
    assert isinstance(od["t_us"], int) and od["t_us"] > 1_600_000_000_000_000


@pytest.mark.parametrize("h,text", [(0.0, "0.0000"), (1.23456, "1.2346"), (1e3, "1000.0000"), (float("nan"), "null")])
def test_writer_h_l2_exactly_four_decimals(tmp_path, h, text):
    p = tmp_path / "t.ndjson"
    with TraceWriter.open(str(p)) as w:
        w.mtp_draft(0, "sync", 0, 1, -1, 5, 0, h, [])
    assert f'"h_l2":{text},"drafts":[]' in p.read_text()
    assert parse_line(p.read_text()) is not None


def test_writer_own_events_and_append(tmp_path):
    p = tmp_path / "sub" / "t.ndjson"
    p.parent.mkdir()
    with TraceWriter.open(str(p), run_id="a") as w:
        w.run_start(model="m.gguf", backend="numpy", draft_block_size=3)
        w.prefill(12, 3000)
        w.decode(1, 40000)
        w.run_end(status="ok", kv_bytes=1024, tau=2.5)
    with TraceWriter.open(str(p), run_id="b") as w:  # append, never truncate
        w.decode(1, 10)
    objs = [json.loads(x) for x in _lines(p)]
    assert [o["evt"] for o in objs] == ["run_start", "prefill", "decode", "run_end", "decode"]
    assert list(objs[0])[:3] == ["evt", "schema", "model"] and objs[0]["schema"] == SCHEMA
    assert objs[1] == {"evt": "prefill", "n_tokens": 12, "us": 3000, "t_us": objs[1]["t_us"], "run": "a"}
    assert objs[3]["tau"] == 2.5 and objs[4]["run"] == "b"
    assert all(list(o)[-2:] == ["t_us", "run"] for o in objs)


@pytest.mark.parametrize("spec", [None, "", "0"])
def test_writer_disabled(tmp_path, spec, capsys):
    w = TraceWriter.open(spec)
    assert not w.enabled
    w.run_start(model="x")
    w.mtp_draft(0, "sync", 0, 1, -1, 5, 2, 1.0, [1, 2])
    w.mtp_accept(0, 1, 2)
    w.close()
    assert capsys.readouterr().err == ""


def test_writer_stderr(capsys):
    w = TraceWriter.open("1", run_id="s")
    w.mtp_accept(3, 0, 2)
    w.close()
    err = capsys.readouterr().err
    assert err.startswith('{"evt":"mtp_accept","iter":3,"n_accepted":0,"n_drafted_prev":2,"t_us":')
    assert err.endswith(',"run":"s"}\n')


def test_writer_bad_path_is_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        TraceWriter.open(str(tmp_path / "missing" / "t.ndjson"))
    with pytest.raises(UserError, match="folder"):
        TraceWriter.open(str(tmp_path))


def test_trace_target_cli_wins_over_env():
    env = {"LLAMA_MTP_ACC_TRACE": "/tmp/env.ndjson"}
    assert trace_target_from_env(None, env) == "/tmp/env.ndjson"
    assert trace_target_from_env("/tmp/cli.ndjson", env) == "/tmp/cli.ndjson"
    assert trace_target_from_env("0", env) == "0"
    assert trace_target_from_env(None, {}) is None


def test_formats():
    assert fmt_pct(0.8321) == "83.2%" and fmt_pct(None) == "—"
    assert fmt_tau(2.4667) == "2.47"


# ---------------------------------------------------------------------------------- parser


def test_parse_line():
    assert parse_line(fork_accept(1, 2, 3)) == {"evt": "mtp_accept", "iter": 1, "n_accepted": 2, "n_drafted_prev": 3}
    assert parse_line(fork_draft(1, "lazy", [5, 6], 3.0).encode())["drafts"] == [5, 6]
    for bad in ['{"evt":"mtp_acc', "[1,2]", "42", "", "not json", '{"h_l2":nan}']:
        assert parse_line(bad) is None


# ---------------------------------------------------------------------------------- aggregates


def test_known_values_fork_quirks():
    lines = [
        fork_draft(0, "sync", [1, 2, 3], 100.0),
        fork_accept(0, 3, 3),
        fork_draft(1, "lazy", [1, 2, 3], 200.0),
        fork_accept(1, 1, 3),
        fork_draft(2, "skip-streak", [], 0.0),  # shares iter 2 with the next draft, no accept line
        fork_draft(2, "lazy", [4, 5, 6], 300.0),
        fork_accept(2, 0, 3),
        '{"evt":"mtp_accept","iter":2,"n_acc',  # half-written
        fork_accept(9, 2, 3),  # no draft for it: unpaired
    ]
    agg = Aggregator()
    agg.feed_lines(lines)
    m = agg.snapshot()
    assert m["rounds"] == 4 and m["n_accepted"] == 6 and m["n_drafted"] == 12
    assert m["draft_acceptance_rate"] == pytest.approx(0.5)
    assert m["tau"] == pytest.approx(1 + 6 / 4)
    # p_0 = P(acc > 0) = 3/4; p_1 = 3/4 ... counts: acc = 3,1,0,2
    assert m["per_position"] == pytest.approx([3 / 4, 2 / 4, 1 / 4])
    assert m["conditional"] == pytest.approx([3 / 4, 2 / 3, 1 / 2])
    assert m["accepted_hist"] == [1, 1, 1, 1]
    assert m["paths"] == {"lazy": 2, "skip-streak": 1, "sync": 1}
    assert m["skip_rounds"] == 1 and m["unpaired_accepts"] == 1 and m["malformed_lines"] == 1
    assert m["path_acceptance"]["lazy"]["n_accepted"] == 1 and m["path_acceptance"]["sync"]["rounds"] == 1
    assert m["n_gen"] == 4 + 6 + 1  # bonus tokens + accepted + the skipped round's plain token
    assert m["h_l2"]["mean"] == pytest.approx(200.0) and m["h_l2"]["n"] == 3
    assert m["block_size"] == 4 and m["clock"] == "arrival" and m["decode_tok_s"] is None
    assert fmt_pct(m["draft_acceptance_rate"]) == "50.0%" and fmt_tau(m["tau"]) == "2.50"


def test_per_position_plain():
    ps, al = per_position({(2, 0): 1, (2, 2): 1, (1, 1): 2})
    assert ps == [3 / 4, 1 / 2] and al == [3 / 4, (1 / 2) / (3 / 4)]
    assert per_position({}) == ([], [])


def test_clocked_throughput():
    t0 = 1_700_000_000_000_000
    lines = [
        {"evt": "run_start", "schema": SCHEMA, "model": "m", "draft_block_size": 3, "t_us": t0, "run": "r"},
        {"evt": "prefill", "n_tokens": 100, "us": 200_000, "t_us": t0 + 200_000, "run": "r"},
        {"evt": "mtp_draft", "iter": 0, "path": "sync", "drafts": [1, 2], "h_l2": 1.0, "draft_us": 5000,
         "t_us": t0 + 210_000, "run": "r"},
        {"evt": "mtp_accept", "iter": 0, "n_accepted": 2, "n_drafted_prev": 2, "verify_us": 30000, "n_emitted": 3,
         "t_us": t0 + 250_000, "run": "r"},
        {"evt": "decode", "n_emitted": 1, "us": 40_000, "t_us": t0 + 300_000, "run": "r"},
        {"evt": "run_end", "status": "ok", "kv_bytes": 4096, "t_us": t0 + 310_000, "run": "r"},
    ]
    raws = [orjson.dumps(o) for o in lines]
    agg = Aggregator()
    agg.feed_lines(raws)
    m = agg.snapshot()
    assert m["prefill_tok_s"] == pytest.approx(500.0)
    assert m["decode_s"] == pytest.approx(0.1) and m["decode_tok_s"] == pytest.approx(40.0)
    assert m["n_gen"] == 4 and m["n_prompt"] == 100 and m["clock"] == "trace"
    assert m["draft_us_mean"] == 5000 and m["verify_us_mean"] == 30000
    assert m["header"]["model"] == "m" and m["kv_bytes"] == 4096 and m["runs"] == 1
    assert batch_metrics(raws)[0] == m


def _random_extras(rng: random.Random, lines: list[str]) -> list[str]:
    """Sprinkle quirks the aggregator must survive: unknown events, wrong types, CRLF, blank lines."""
    out = []
    for line in lines:
        r = rng.random()
        if r < 0.01:
            out.append('{"evt":"something_new","x":1}')
        elif r < 0.02:
            out.append('{"evt":"mtp_accept","iter":1,"n_accepted":"two","n_drafted_prev":2}')
        elif r < 0.025:
            out.append('{"evt":"mtp_draft","iter":1,"path":"sync","drafts":"x"}')
        elif r < 0.03:
            out.append("")
        elif r < 0.035:
            out.append('{"no_evt":true}')
        elif r < 0.04:
            out.append('{"evt":"decode","us":"slow"}')
        elif r < 0.045:
            out.append("[1,2,3]")
        out.append(line + ("\r" if r > 0.99 else ""))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("fmt", ["turbospec", "fork"])
@pytest.mark.parametrize("pipe", [False, True])
def test_streaming_equals_batch(seed, fmt, pipe):
    rng = random.Random(seed * 7 + (fmt == "fork"))
    lines: list[str] = []
    for run in range(2):  # two runs appended to one file
        lines += list(synth_lines(
            rng.randint(50, 400), fmt=fmt, block_size=rng.randint(2, 6), p_accept=rng.random(),
            skip_every=rng.choice([0, 3, 7]), malformed_every=rng.choice([0, 11, 29]),
            noise_every=rng.choice([0, 5]) if pipe else 0, seed=seed * 10 + run, run=f"r{run}",
            t0_us=1_700_000_000_000_000 + run * 60_000_000, step_us=rng.choice([40_000, 900_000]),
        ))
    lines = _random_extras(rng, lines)
    raws: list[bytes | str] = [x.encode() if rng.random() < 0.5 else x for x in lines]
    arrivals = None
    if fmt == "fork":
        t = 1000.0
        arrivals = []
        for _ in raws:
            t += rng.choice([0.0, 0.0, 0.01, 0.3])
            arrivals.append(t)
    max_b = rng.choice([8, 64, 4096])
    want, want_buckets = batch_metrics(raws, arrivals, pipe=pipe, max_buckets=max_b)

    # streaming, in random batches; arrivals constant within a batch (as the tailer posts them)
    agg = Aggregator(pipe=pipe, max_buckets=max_b)
    i = 0
    arr_b = list(arrivals) if arrivals else None
    while i < len(raws):
        n = rng.randint(1, 40)
        if arr_b is not None:
            for j in range(i, min(i + n, len(raws))):
                arr_b[j] = arrivals[i]
            agg.feed_lines(raws[i : i + n], arr_b[i])
        else:
            agg.feed_lines(raws[i : i + n])
        i += n
    if arr_b is not None:
        want, want_buckets = batch_metrics(raws, arr_b, pipe=pipe, max_buckets=max_b)
    assert agg.snapshot() == want
    assert [bucket_dict(b) for b in agg.buckets] == want_buckets

    # the object path (feed_obj) gives the same
    agg2 = Aggregator(pipe=pipe, max_buckets=max_b)
    for j, raw in enumerate(raws):
        agg2.feed_line(raw, arr_b[j] if arr_b else None)
    assert agg2.snapshot() == want
    assert want["malformed_lines"] > 0 or not any(x.startswith('{"evt":"mtp_acc') and "two" in x for x in lines)


def test_aggregate_file_and_read_trace(tmp_path):
    p = tmp_path / "t.ndjson"
    lines = list(synth_lines(300, fmt="turbospec", skip_every=5, malformed_every=17))
    p.write_text("\n".join(lines) + "\n" + '{"evt":"mtp_accept","it')  # half-written last line
    agg = aggregate_file(p, chunk_bytes=1000)
    want, _ = batch_metrics([x.encode() for x in lines] + [b'{"evt":"mtp_accept","it'])
    assert agg.snapshot() == want
    objs = list(read_trace(p, chunk_bytes=777))
    assert len(objs) == len(lines) + 1 and objs[-1] is None and objs[0]["evt"] == "run_start"
    with pytest.raises(UserError, match="not found"):
        aggregate_file(tmp_path / "nope.ndjson")
    with pytest.raises(UserError, match="folder"):
        list(read_trace(tmp_path))


def test_writer_output_aggregates(tmp_path):
    p = tmp_path / "w.ndjson"
    rng = random.Random(5)
    tot_acc = 0
    with TraceWriter.open(str(p)) as w:
        w.run_start(model="m", draft_block_size=4)
        w.prefill(10, 1000)
        for it in range(200):
            if it % 9 == 8:
                w.mtp_draft(it, "skip-streak", 0, 1, -1, it, 0, 0.0, [])
                w.decode(1, 100)
            w.mtp_draft(it, "lazy", 0, 1, -1, it, 3, rng.uniform(1, 9), [1, 2, 3], drafter="mtp", draft_us=10)
            na = rng.randint(0, 3)
            tot_acc += na
            w.mtp_accept(it, na, 3, verify_us=20, n_emitted=na + 1, pos=it)
        w.run_end(status="ok")
    m = aggregate_file(p).snapshot()
    assert m["rounds"] == 200 and m["n_accepted"] == tot_acc and m["malformed_lines"] == 0
    assert m["unpaired_accepts"] == 0 and m["draft_len_mismatch"] == 0 and m["skip_rounds"] == 22
    assert m["n_gen"] == tot_acc + 200 + 22


# ---------------------------------------------------------------------------------- tailer


def test_tailer_missing_then_appears_half_line_truncate_rotate(tmp_path):
    p = tmp_path / "t.ndjson"
    t = Tailer(str(p))
    assert t.poll() == [] and "waiting" in t.status
    p.write_bytes(b'{"a":1}\n{"b":')
    assert t.poll() == [b'{"a":1}']
    assert t.poll() == []
    with p.open("ab") as f:
        f.write(b'2}\n{"c":3}\n')
    assert t.poll() == [b'{"b":2}', b'{"c":3}']
    # truncation: starts over
    p.write_bytes(b'{"d":4}\n')
    assert t.poll() == [b'{"d":4}'] and t.truncations == 1
    # rotation: the old file is drained, then the new one is read from its start
    with p.open("ab") as f:
        f.write(b'{"e":5}\n')
    os.rename(p, tmp_path / "t.ndjson.1")
    p.write_bytes(b'{"f":6}\n')
    assert t.poll() == [b'{"e":5}', b'{"f":6}'] and t.rotations == 1
    # deleted: keeps the old handle; re-created: switches
    os.unlink(p)
    assert t.poll() == []
    p.write_bytes(b'{"g":7}\n')
    assert t.poll() == [b'{"g":7}'] and t.rotations == 2
    t.close()


def test_tailer_bounded_reads(tmp_path):
    p = tmp_path / "big.ndjson"
    p.write_bytes(b"".join(b'{"i":%d}\n' % i for i in range(5000)))
    t = Tailer(str(p), max_bytes=4096)
    got: list[bytes] = []
    for _ in range(1000):
        got += t.poll()
        if t.caught_up:
            break
    assert [json.loads(x)["i"] for x in got] == list(range(5000))


def test_tailer_pipe_mode_ignores_chatter():
    r, w = os.pipe()
    t = Tailer("-", stdin_fd=r)
    os.write(w, b'llama_model_loader: loaded\n{"evt":"mtp_accept","iter":0,"n_accepted":1,"n_drafted_prev":2}\n{"x"')
    lines = t.poll(timeout=1.0)
    assert lines == [b"llama_model_loader: loaded", b'{"evt":"mtp_accept","iter":0,"n_accepted":1,"n_drafted_prev":2}']
    os.write(w, b":1}\n{broken\n")
    os.close(w)
    lines += t.poll(timeout=1.0)
    lines += t.poll(timeout=1.0)
    assert t.eof
    agg = Aggregator(pipe=True)
    agg.feed_lines(lines)
    m = agg.snapshot()
    assert m["ignored_lines"] == 1 and m["malformed_lines"] == 1 and m["rounds"] == 1 and m["unknown_events"] == 1
    os.close(r)


def test_tailer_overlong_line_is_bounded(tmp_path):
    p = tmp_path / "t.ndjson"
    p.write_bytes(b'{"a":1}\n{"junk":"' + b"x" * 5000)
    t = Tailer(str(p), max_line=1000, max_bytes=700)
    got: list[bytes] = []
    for _ in range(50):
        got += t.poll()
    assert got[0] == b'{"a":1}' and len(got) == 2 and len(got[1]) == 64 and parse_line(got[1]) is None
    with p.open("ab") as f:
        f.write(b'xxx"}\n{"b":2}\n')
    got = t.poll() + t.poll()
    assert got == [b'{"b":2}']  # the tail of the overlong line was skipped


def test_writer_accepts_numpy_scalars(tmp_path):
    np = pytest.importorskip("numpy")
    p = tmp_path / "np.ndjson"
    with TraceWriter.open(str(p), run_id="n") as w:
        w.mtp_draft(np.int64(3), "sync", 0, np.int32(5), -1, np.int64(9), 2, np.float32(1.5), np.array([1, 2]),
                    draft_us=np.int64(7))
        w.mtp_accept(np.int64(3), np.int64(1), 2, verify_us=np.float64(10.5), pos=np.int32(4))
        w.run_end(status="ok", tau=np.float64(2.5), draft_acceptance_rate=None)
    d, a, e = (json.loads(x) for x in _lines(p))
    assert d["drafts"] == [1, 2] and d["h_l2"] == 1.5 and d["draft_us"] == 7
    assert a["verify_us"] == 10.5 and a["pos"] == 4 and e["tau"] == 2.5 and e["draft_acceptance_rate"] is None
    assert '"h_l2":1.5000,' in p.read_text()


def _trace_with_runs(p, n_rounds: int = 4000) -> list[str]:
    """Two runs (a run_start, prefill and decode events in the middle), skip and malformed
    lines, a half-written last line: every kind of state the split has to carry over."""
    a = list(synth_lines(n_rounds // 2, fmt="turbospec", skip_every=7, malformed_every=23, seed=3, step_us=90_000))
    b = list(synth_lines(n_rounds // 2, fmt="turbospec", skip_every=5, malformed_every=31, seed=4, step_us=70_000,
                         t0_us=1_764_380_000_000_000 + n_rounds * 50_000, run="run2"))
    lines = a + ['{"evt":"decode","n_emitted":1,"us":500}', "not json"] + b
    p.write_text("\n".join(lines) + "\n" + '{"evt":"mtp_accept","it')
    return lines


def _close(a, b) -> bool:
    """Equal, floats to 1e-12 relative (two halves sum h_l2 in another order)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) or isinstance(b, float):
        return a == pytest.approx(b, rel=1e-12, abs=1e-9)
    return a == b


@pytest.mark.parametrize("n_rounds", [400, 4000])
def test_parallel_aggregate_equals_sequential(tmp_path, n_rounds):
    from turbospec.trace import aggregator_at, feed_range, parallel_split

    p = tmp_path / "t.ndjson"
    _trace_with_runs(p, n_rounds)
    seq = aggregate_file(p, parallel_min_bytes=1 << 40)
    sp = parallel_split(p, 0)
    assert sp is not None and 0 < sp.offset < sp.end
    par = aggregate_file(p, parallel_min_bytes=0)  # through the worker process
    assert _close(par.snapshot(), seq.snapshot())
    assert _close([list(b) for b in par.buckets], [list(b) for b in seq.buckets])
    assert (par._t_phase, par._last_draft) == (seq._t_phase, seq._last_draft)
    # the same split in-process, at every line boundary after an accept: concat is exact
    data = p.read_bytes()
    offs = [i + 1 for i in range(len(data)) if data[i : i + 1] == b"\n"]
    checked = 0
    for off in offs[5::max(1, len(offs) // 40)]:
        prev = data[data.rfind(b"\n", 0, off - 1) + 1 : off - 1]
        if not (prev.startswith(b'{"evt":"mtp_accept"') and data[off:].startswith(b'{"evt":"mtp_draft"')):
            continue
        import orjson

        from turbospec.trace import Aggregator, Split

        try:
            o = orjson.loads(prev)
        except orjson.JSONDecodeError:
            continue  # a malformed accept line: parallel_split never splits there
        if type(o.get("t_us")) is not int or type(o.get("n_accepted")) is not int:
            continue
        checked += 1
        head = Aggregator()
        feed_range(head, p, 0, off)
        tail = aggregator_at(Split(off, len(data), o["t_us"]))
        feed_range(tail, p, off, None)
        head.concat(tail)
        assert _close(head.snapshot(), seq.snapshot())
        assert _close([list(b) for b in head.buckets], [list(b) for b in seq.buckets])
    assert checked >= 3


def test_parallel_split_refuses_small_and_clockless(tmp_path):
    from turbospec.trace import parallel_split

    p = tmp_path / "f.ndjson"
    p.write_text("\n".join(synth_lines(3000, fmt="fork", skip_every=5)) + "\n")
    assert parallel_split(p, 0) is None  # fork lines have no t_us: no exact split, read in one go
    assert parallel_split(p, 1 << 40) is None
    assert parallel_split(tmp_path / "missing", 0) is None
