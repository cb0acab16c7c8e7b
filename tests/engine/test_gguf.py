"""GGUF parsing, dequantization against gguf.quants, and one-line errors for bad files."""

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from tinymodel import TinySpec, write_tiny_gguf

from turbospec.cli import main
from turbospec.engine.gguf import GGUFFile, dequantize
from turbospec.errors import UserError


def _random_f16(rng, n):
    return (rng.standard_normal(n) * 0.05).astype(np.float16).view(np.uint8).reshape(n, 2)


def _random_blocks(qtype: Q, n: int, rng) -> np.ndarray:
    """Random raw blocks with finite f16 scales (the other bytes fully random)."""
    blk, size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, (n, size), dtype=np.uint8)
    if qtype in (Q.Q8_0, Q.Q4_0, Q.Q5_0):
        raw[:, 0:2] = _random_f16(rng, n)
    elif qtype == Q.Q4_K:
        raw[:, 0:2] = _random_f16(rng, n)
        raw[:, 2:4] = _random_f16(rng, n)
    elif qtype == Q.Q6_K:
        raw[:, 208:210] = _random_f16(rng, n)
    elif qtype == Q.F16:
        raw = rng.standard_normal(n * blk).astype(np.float16).view(np.uint8).reshape(n, size)
    elif qtype == Q.BF16:
        f = rng.standard_normal(n * blk).astype(np.float32)
        raw = (f.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).reshape(n, size)
    elif qtype == Q.F32:
        raw = rng.standard_normal(n * blk).astype(np.float32).view(np.uint8).reshape(n, size)
    return raw


@pytest.mark.parametrize("qtype", [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q5_0, Q.Q4_K, Q.Q6_K])
def test_dequantize_matches_gguf_quants(qtype):
    rng = np.random.default_rng()
    blk, size = gguf.GGML_QUANT_SIZES[qtype]
    n_blocks = 64
    raw = _random_blocks(qtype, n_blocks, rng)
    row = blk * 4
    raw2 = raw.reshape(-1, 4 * size)
    want = gguf.quants.dequantize(raw2, qtype).astype(np.float32)
    got = dequantize(raw2, int(qtype), (n_blocks // 4, row))
    assert got.shape == want.shape
    assert np.array_equal(got, want, equal_nan=True)


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q5_0, Q.Q4_0])
def test_dequantize_quantized_rows(qtype):
    rng = np.random.default_rng()
    x = rng.standard_normal((8, 256)).astype(np.float32)
    raw = gguf.quants.quantize(x, qtype)
    assert np.array_equal(dequantize(raw, int(qtype), x.shape), gguf.quants.dequantize(raw, qtype))


def test_parse_tiny(tiny_gguf):
    g = GGUFFile.open(tiny_gguf)
    assert g.arch == "gemma3"
    assert g.metadata["gemma3.block_count"] == 3
    assert g.info("token_embd.weight").shape == (TinySpec().n_vocab, TinySpec().n_embd)
    assert g.info("token_embd.weight").type_name == "Q8_0"
    assert len(g.metadata["tokenizer.ggml.tokens"]) == TinySpec().n_vocab
    r = gguf.GGUFReader(str(tiny_gguf))
    for t in r.tensors:
        want = gguf.quants.dequantize(t.data, t.tensor_type).reshape(g.info(t.name).shape)
        assert np.array_equal(g.dequantize(t.name), want)


def _error_line(capsys, argv):
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) >= 1 and err[-1].startswith("turbospec: error: ")
    assert "Traceback" not in "\n".join(err)
    return err[-1]


def test_missing_path(capsys, tmp_path):
    msg = _error_line(capsys, ["run", "-m", str(tmp_path / "nope.gguf"), "-p", "hi", "--backend", "numpy"])
    assert "not found" in msg and "-m/--model" in msg


def test_not_a_gguf(capsys, tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"hello world, this is not a model file at all")
    assert "not a GGUF" in _error_line(capsys, ["run", "-m", str(p), "-p", "hi", "--backend", "numpy"])


def test_truncated_gguf(capsys, tmp_path, tiny_gguf):
    data = tiny_gguf.read_bytes()
    for cut in (30, len(data) // 3, len(data) - 100):
        p = tmp_path / f"cut{cut}.gguf"
        p.write_bytes(data[:cut])
        assert "truncated" in _error_line(capsys, ["run", "-m", str(p), "-p", "hi", "--backend", "numpy"])


def test_unsupported_arch(capsys, tmp_path):
    p = write_tiny_gguf(tmp_path / "llama.gguf", TinySpec(n_layer=1), arch="llama")
    msg = _error_line(capsys, ["run", "-m", str(p), "-p", "hi", "--backend", "numpy"])
    assert "architecture 'llama' is not supported" in msg


def test_missing_tensor(capsys, tmp_path):
    p = write_tiny_gguf(tmp_path / "hole.gguf", TinySpec(n_layer=2), drop=("blk.1.ffn_up.weight",))
    msg = _error_line(capsys, ["run", "-m", str(p), "-p", "hi", "--backend", "numpy"])
    assert "missing tensor 'blk.1.ffn_up.weight'" in msg


def test_unknown_tensor_type_is_one_line(tmp_path, tiny_gguf):
    # patch the first tensor info's type id to an unknown value
    g = GGUFFile.open(tiny_gguf)
    data = bytearray(tiny_gguf.read_bytes())
    name = b"token_embd.weight"
    i = data.index(name) + len(name)
    n_dims = int.from_bytes(data[i : i + 4], "little")
    type_at = i + 4 + 8 * n_dims
    data[type_at : type_at + 4] = (77).to_bytes(4, "little")
    p = tmp_path / "bad.gguf"
    p.write_bytes(bytes(data))
    with pytest.raises(UserError, match="unknown GGML tensor type id 77"):
        GGUFFile.open(p)
    g.close()
