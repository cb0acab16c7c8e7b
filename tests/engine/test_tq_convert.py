"""`turbospec quantize` on tiny GGUFs written here: layout, kept bytes, recipes, errors, atomicity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize as gguf_quantize

from turbospec.cli import main
from turbospec.engine.quant import convert, tq
from turbospec.engine.quant.container import open_layout
from turbospec.engine.quant.convert import QuantizeConfig, quantize_gguf
from turbospec.errors import UserError

N_LAYERS = 5
EMBD, FFN, VOCAB = 64, 96, 50


def _tiny_model(path: Path, seed: int = 0, extra_q81: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = GGUFWriter(str(path), "gemma3")
    w.add_block_count(N_LAYERS)
    w.add_embedding_length(EMBD)
    w.add_token_list([f"t{i}" for i in range(VOCAB)])
    w.add_string("general.name", "tiny")
    floats: dict[str, np.ndarray] = {}

    def f32(name, shape):
        a = rng.standard_normal(shape).astype(np.float32)
        floats[name] = a
        w.add_tensor(name, a)

    def q8(name, shape):
        a = rng.standard_normal(shape).astype(np.float32)
        q = gguf_quantize(a, GGMLQuantizationType.Q8_0)
        floats[name] = a
        w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=GGMLQuantizationType.Q8_0)

    q8("token_embd.weight", (VOCAB, EMBD))
    for i in range(N_LAYERS):
        f32(f"blk.{i}.attn_norm.weight", (EMBD,))
        f32(f"blk.{i}.attn_q.weight", (EMBD, EMBD))
        f32(f"blk.{i}.attn_output.weight", (EMBD, EMBD))
        q8(f"blk.{i}.ffn_gate.weight", (FFN, EMBD))
        w.add_tensor(f"blk.{i}.ffn_up.weight", rng.standard_normal((FFN, EMBD)).astype(np.float16))
        f32(f"blk.{i}.ffn_down.weight", (EMBD, FFN))
    f32("output_norm.weight", (EMBD,))
    w.add_tensor("mtp.token_ordering.weight", np.arange(VOCAB, dtype=np.int32))
    f32("odd.weight", (3, 40))  # rows not a multiple of 32
    if extra_q81:
        w.add_tensor(
            "blk.0.weird.weight",
            np.zeros((4, 40), np.uint8),
            raw_shape=(4, 40),
            raw_dtype=GGMLQuantizationType.Q8_1,
        )
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return floats


def _run(src, dst, **kw):
    return quantize_gguf(QuantizeConfig(src=src, dst=dst, **kw))


@pytest.mark.parametrize("type_name, type_id", [("tq4_1s", 46), ("tq3_1s", 45)])
def test_all_recipe_converts_linear_weights_and_keeps_the_rest(tmp_path, type_name, type_id):
    src, dst = tmp_path / "in.gguf", tmp_path / "out.gguf"
    _tiny_model(src)
    res = _run(src, dst, type_name=type_name)
    assert res.n_converted == 5 * N_LAYERS
    with open_layout(src) as a, open_layout(dst) as b:
        assert [t.name for t in a.tensors] == [t.name for t in b.tensors]
        # every source key/value is carried byte for byte; two provenance keys are added
        assert [kv.raw for kv in b.kvs[: len(a.kvs)]] == [kv.raw for kv in a.kvs]
        assert b.get("turbospec.quantize.type") == type_name.upper()
        for ta, tb in zip(a.tensors, b.tensors, strict=True):
            assert ta.ne == tb.ne
            assert tb.offset % b.alignment == 0
            linear = any(k in ta.name for k in ("attn_q", "attn_output", "ffn_"))
            if not linear:
                assert tb.type_id == ta.type_id
                assert np.array_equal(a.raw(ta), b.raw(tb)), ta.name
                continue
            assert tb.type_id == type_id
            src_rows = convert._source_rows(a, ta, 0, ta.n_elements // ta.ne[0])
            assert np.array_equal(b.raw(tb), tq.quantize(src_rows, type_id)), ta.name


def test_output_loads_in_the_engine_loader(tmp_path):
    gg = pytest.importorskip("turbospec.engine.gguf")
    src, dst = tmp_path / "in.gguf", tmp_path / "out.gguf"
    floats = _tiny_model(src)
    _run(src, dst, type_name="tq4_1s")
    f = gg.GGUFFile.open(dst)
    try:
        x = floats["blk.2.ffn_down.weight"]
        y = f.dequantize("blk.2.ffn_down.weight")
        assert y.shape == x.shape
        assert np.sum((y - x) ** 2) / np.sum(x**2) < 0.01
    finally:
        f.close()


def test_mixed_recipe_keep_globs_and_embedding(tmp_path):
    src, dst = tmp_path / "in.gguf", tmp_path / "out.gguf"
    _tiny_model(src)
    _run(src, dst, type_name="tq4_1s", recipe="mixed", keep=["blk.2.attn_*"], embedding=True)
    with open_layout(dst) as b:
        types = {t.name: t.type_id for t in b.tensors}
    assert types["token_embd.weight"] == 46
    for i in range(N_LAYERS):
        for kind in ("attn_q", "attn_output", "ffn_gate", "ffn_up"):
            converted = i == 2 and kind.startswith("ffn")  # layers 0,1 and 3,4 kept; blk.2.attn_* by glob
            assert (types[f"blk.{i}.{kind}.weight"] == 46) == converted, (i, kind)
        assert types[f"blk.{i}.ffn_down.weight"] == 0
    assert types["mtp.token_ordering.weight"] == 26 and types["odd.weight"] == 0


def test_user_errors_are_one_line(tmp_path):
    src, dst = tmp_path / "in.gguf", tmp_path / "out.gguf"
    _tiny_model(src)
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a model at all\n" * 3)
    with pytest.raises(UserError, match="not a GGUF"):
        _run(text, dst, type_name="tq4_1s")
    with pytest.raises(UserError, match="no such file"):
        _run(tmp_path / "missing.gguf", dst, type_name="tq4_1s")
    dst.write_bytes(b"old")
    with pytest.raises(UserError, match="--force"):
        _run(src, dst, type_name="tq4_1s")
    assert dst.read_bytes() == b"old"
    _run(src, dst, type_name="tq4_1s", force=True)
    assert dst.stat().st_size > 1000
    weird = tmp_path / "weird.gguf"
    _tiny_model(weird, extra_q81=True)
    with pytest.raises(UserError, match="cannot convert.*--keep"):
        _run(weird, tmp_path / "w.gguf", type_name="tq4_1s")
    assert not (tmp_path / "w.gguf").exists()
    _run(weird, tmp_path / "w.gguf", type_name="tq4_1s", keep=["blk.0.weird.weight"])


def test_cli_reports_errors_in_one_line(tmp_path, capsys):
    src = tmp_path / "in.gguf"
    _tiny_model(src)
    out = tmp_path / "o.gguf"
    assert main(["quantize", str(src), str(out), "--type", "tq3_1s"]) == 0
    assert out.exists()
    capsys.readouterr()
    assert main(["quantize", str(src), str(out), "--type", "tq3_1s"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"turbospec: error: {out} already exists; pass --force to overwrite it"]


def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    src, dst = tmp_path / "in.gguf", tmp_path / "out.gguf"
    _tiny_model(src)
    calls = {"n": 0}
    real = tq.quantize

    def flaky(x, type_id, progress=None):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(x, type_id, progress)

    monkeypatch.setattr(convert.tq, "quantize", flaky)
    with pytest.raises(KeyboardInterrupt):
        _run(src, dst, type_name="tq4_1s")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.gguf"]


def test_container_is_readable_by_gguf_py_when_nothing_is_converted(tmp_path):
    # gguf-py's reader refuses ids 45/46, so check the writer's container on a run that keeps all
    from gguf import GGUFReader

    src, dst = tmp_path / "in.gguf", tmp_path / "out.gguf"
    _tiny_model(src)
    res = _run(src, dst, type_name="tq3_1s", keep=["*"])
    assert res.n_converted == 0
    a, b = GGUFReader(src), GGUFReader(dst)
    assert [t.name for t in a.tensors] == [t.name for t in b.tensors]
    for ta, tb in zip(a.tensors, b.tensors, strict=True):
        assert ta.tensor_type == tb.tensor_type and list(ta.shape) == list(tb.shape)
        assert np.array_equal(np.asarray(ta.data), np.asarray(tb.data)), ta.name
    assert b.fields["turbospec.quantize.type"].contents() == "TQ3_1S"
    assert b.fields["tokenizer.ggml.tokens"].contents() == a.fields["tokenizer.ggml.tokens"].contents()


def test_write_failure_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    import errno

    src, dst = tmp_path / "in.gguf", tmp_path / "out.gguf"
    _tiny_model(src)

    def full(self, chunk):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(convert.GGUFStreamWriter, "write_data", full)
    with pytest.raises(UserError, match="No space left on device.*free space"):
        _run(src, dst, type_name="tq4_1s")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.gguf"]
