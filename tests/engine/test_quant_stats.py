"""``turbospec quant-stats``: JSON contract, padding, equalization columns, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from turbospec.cli import main
from turbospec.engine.kv.codecs import CODECS, get_codec
from turbospec.engine.kv.stats import (
    QuantStatsConfig,
    codec_stats,
    outlier_channels,
    outlier_vectors,
    roundtrip,
)


def run_json(capsys, *argv: str) -> tuple[list[dict], str, str]:
    rc = main(["quant-stats", *argv, "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    last = out.strip().splitlines()[-1]
    return json.loads(last), out, err


def test_all_types_json_last_line(capsys):
    rows, out, _ = run_json(capsys, "--n", "400", "--seed", "3")
    assert [r["type"] for r in rows] == list(CODECS)
    by = {r["type"]: r for r in rows}
    for r in rows:
        for key in ("type", "mse", "mse_outlier", "ip_mse", "ip_bias", "bits_per_value", "paper_dmse", "floor"):
            assert key in r
        assert r["mse"] >= r["floor"]
    # ordering that any sound codec set shows, and the paper's levels within sampling noise
    assert by["f16"]["mse"] < 1e-6 < by["q8_0"]["mse"] < 1e-4 < by["q4_0"]["mse"]
    assert by["turbo4lm"]["mse"] < by["turbo4"]["mse"] < by["turbo3"]["mse"] < by["turbo2"]["mse"]
    assert 0.10 < by["turbo2"]["mse"] < 0.14 and 0.028 < by["turbo3"]["mse"] < 0.040
    assert 0.0075 < by["turbo4lm"]["mse"] < 0.011
    assert by["turbo2"]["paper_dmse"] == 0.117 and by["q4_0"]["paper_dmse"] is None
    # inner-product error of a random unit query ~ mse / dim; an aligned query is underscored
    assert by["turbo3"]["ip_mse"] == pytest.approx(by["turbo3"]["mse"] / 128, rel=0.35)
    assert by["turbo2"]["ip_bias_aligned"] < 0
    assert "paper D_mse" in out and "turbo4lm" in out


def test_subset_dim_padding_and_equalization(capsys):
    rows, _, err = run_json(capsys, "--type", "q4_0,turbo3", "--dim", "100", "--n", "300", "--kv-equalize")
    assert [r["type"] for r in rows] == ["q4_0", "turbo3"]
    assert "zero-padded to 128" in err
    assert rows[1]["padded_dim"] == 128 and rows[0]["padded_dim"] == 128 and rows[0]["dim"] == 100
    assert rows[1]["bits_per_value_effective"] == pytest.approx(50 * 8 / 100)
    q4 = rows[0]
    assert q4["equalize"] == 0.5
    assert q4["mse_outlier_eq"] < 0.6 * q4["mse_outlier"]  # equalization tames the block scale
    rows, _, _ = run_json(capsys, "--type", "turbo2", "--n", "200", "--kv-equalize=1.0")
    assert rows[0]["equalize"] == 1.0 and "mse_outlier_eq" in rows[0]
    rows, _, _ = run_json(capsys, "--type", "turbo2", "--n", "200")
    assert "mse_outlier_eq" not in rows[0] and "decode_mvals" not in rows[0]


def test_speed_columns(capsys):
    rows, out, _ = run_json(capsys, "--type", "turbo3", "--n", "50", "--speed")
    r = rows[0]
    for key in ("encode_row_us", "encode_512_ms", "decode_8192_ms", "decode_mvals", "scores_4x8192_ms"):
        assert r[key] > 0
    assert "KV codec speed" in out


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--type", "turbo9"], "valid types: f16, q8_0"),
        (["--type", ","], "--type is empty"),
        (["--n", "1"], "--n 1"),
        (["--dim", "0"], "--dim 0"),
        (["--kv-equalize=-2", "--n", "10"], "strength"),
    ],
)
def test_user_errors(capsys, argv, needle):
    assert main(["quant-stats", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("turbospec: error: ") and needle in err and len(err.strip().splitlines()) == 1


def test_stats_helpers():
    rng = np.random.default_rng(0)
    ch = outlier_channels(128, None, 0)
    assert len(ch) == 4 and np.array_equal(ch, outlier_channels(128, None, 0))
    x = outlier_vectors(rng, 50, 128, ch, 10.0)
    assert np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-6)
    assert np.mean(x[:, ch] ** 2) > 20 * np.mean(np.delete(x, ch, axis=1) ** 2)
    # roundtrip pads, crops and un-rotates: f16 is near-lossless whatever the padding
    y = roundtrip(get_codec("turbo4"), x[:, :100].copy())
    assert y.shape == (50, 100)
    assert np.mean(np.sum((y - x[:, :100]) ** 2, axis=1)) < 0.05
    assert np.allclose(roundtrip(get_codec("f16"), x, chunk=7), x, atol=1e-3)
    # the same seed gives the same row; a different seed gives different vectors
    cfg = QuantStatsConfig(types=("turbo3",), n=100, seed=5)
    assert codec_stats("turbo3", cfg) == codec_stats("turbo3", cfg)
    assert codec_stats("turbo3", cfg)["mse"] != codec_stats("turbo3", QuantStatsConfig(n=100, seed=6))["mse"]
