"""Decode-time film grain (`--grain S`, gqtok.io.grain): reproducible pixels, the noise it
promises, and every decode path (API, .gq bytes, tiled decoding, the coarse member, the CLI,
eval) applying it the same way."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import gqtok
from gqtok.cli.app import app
from gqtok.cli.common import parse_decoders
from gqtok.codec import decode_bytes, encode_pictures
from gqtok.eval.metrics.fidelity import psnr
from gqtok.io.grain import BAND, add_grain, check_grain
from gqtok.io.images import read_image
from tests.conftest import REPO

SAMPLE = REPO / "examples" / "sample.jpg"


@pytest.fixture(scope="module")
def net() -> gqtok.Model:
    return gqtok.load_model("default")


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.asarray(Image.open(SAMPLE).convert("RGB"))


def test_grain_is_gaussian_of_the_asked_level_and_reproducible() -> None:
    grey = np.full((300, 257, 3), 128, np.uint8)
    a = add_grain(grey.copy(), 2.0, seed=7)
    noise = a.astype(np.float64) - 128
    assert abs(noise.std() - 2.0) < 0.05 and abs(noise.mean()) < 0.02
    assert np.array_equal(a, add_grain(grey.copy(), 2.0, seed=7))
    assert not np.array_equal(a, add_grain(grey.copy(), 2.0, seed=8))
    assert np.array_equal(add_grain(grey.copy(), 0.0, seed=7), grey)
    # a pure function of (seed, row): a shorter image is the top of the taller one, so the
    # grain does not depend on how the picture was cut (tiled decoding, crops of one height)
    short = add_grain(grey[: BAND + 10].copy(), 2.0, seed=7)
    assert np.array_equal(short, a[: BAND + 10])
    # clipped, never wrapped
    edges = add_grain(np.tile(np.array([0, 255], np.uint8), (64, 32, 3))[:, :64], 8.0, seed=1)
    assert edges[..., 0].max() > 0 and edges[:, 1::2].min() < 255  # moved inwards only
    for bad in (-1.0, float("nan"), 33.0):
        with pytest.raises(ValueError, match="grain"):
            check_grain(bad)
    with pytest.raises(TypeError, match="grain"):
        check_grain(True)  # type: ignore[arg-type]


def test_api_and_gq_bytes_decode_with_grain(net: gqtok.Model, photo: np.ndarray) -> None:
    tokens = gqtok.encode(net, photo, value_range=(0, 255))
    plain = gqtok.decode_array(net, tokens)
    grainy = gqtok.decode_array(net, tokens, grain=2)
    assert np.array_equal(grainy, gqtok.decode_array(net, tokens, grain=2))
    assert np.array_equal(gqtok.decode_array(net, tokens, grain=0), plain)
    diff = grainy.astype(np.float64) - plain
    assert 1.9 < diff.std() < 2.05
    drop = psnr(plain, photo) - psnr(grainy, photo)
    assert 0.3 < drop < 1.0  # sigma^2 = 4 of MSE on top of ~29 at 33.5 dB
    # the .gq path: the same grain as the API for the same tokens
    data = encode_pictures(net, [read_image(str(SAMPLE))])[0].data
    img, _ = decode_bytes(data, net, grain=2)
    assert np.array_equal(np.asarray(img), grainy)
    img, _ = decode_bytes(data, net)
    assert np.array_equal(np.asarray(img), plain)
    # tiled decoding (a small memory budget) gets the same noise on its own pixels
    tiled = gqtok.decode_array(net, tokens, max_memory="440MB")
    tiled_grainy = gqtok.decode_array(net, tokens, max_memory="440MB", grain=2)
    inside = (plain > 8) & (plain < 247) & (tiled > 8) & (tiled < 247)
    assert np.array_equal((tiled_grainy.astype(int) - tiled)[inside],
                          (grainy.astype(int) - plain)[inside])
    # the choice is part of the model variant: label, describe, and the decoder is shared
    chosen = net.with_decoder(grain=2)
    assert chosen.label.endswith("+grain2") and chosen.describe()["grain"] == 2.0
    assert chosen.decoder is net.decoder
    assert net.with_decoder("perceptual", 0.5, 1.5).label.endswith("+perceptual@0.5+grain1.5")


def test_coarse_member_files_get_the_grain_too(net: gqtok.Model) -> None:
    """At Q 5 the file names the coarse-codebook model, which decodes it (found from the
    header, as `gqtok decode` does), and is coded at a smaller scale: the grain asked for
    applies to that model too, after the resampling (its full strength)."""
    from gqtok.zoo.load import model_for_header

    enc = encode_pictures(net, [read_image(str(SAMPLE))], quality=5)[0]
    assert enc.header.model_id.endswith("-coarse") and enc.header.scaled
    plain, _ = decode_bytes(enc.data, model_for_header)
    grainy, _ = decode_bytes(enc.data, model_for_header, grain=2)
    diff = np.asarray(grainy).astype(np.float64) - np.asarray(plain)
    assert 1.9 < diff.std() < 2.05


def test_cli_decode_eval_and_compare_rows_take_grain(tmp_path: Path, net: gqtok.Model) -> None:
    runner = CliRunner()
    gq = tmp_path / "s.gq"
    assert runner.invoke(app, ["encode", str(SAMPLE), "-o", str(gq)]).exit_code == 0
    out = tmp_path / "g.png"
    r = runner.invoke(app, ["decode", str(gq), "-o", str(out), "--grain", "2", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["grain"] == 2.0
    expected, _ = decode_bytes(gq.read_bytes(), net, grain=2)
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(expected))
    r = runner.invoke(app, ["decode", str(gq), "-o", str(tmp_path / "x.png"), "--grain", "40"])
    assert r.exit_code == 2 and "grain" in r.output and not (tmp_path / "x.png").exists()
    reports = {}
    for grain in ("0", "2"):
        path = tmp_path / f"ev{grain}.json"
        r = runner.invoke(app, ["eval", str(SAMPLE), "--metrics", "psnr", "--grain", grain,
                                "--json", str(path), "--quiet"])
        assert r.exit_code == 0, r.output
        reports[grain] = json.loads(path.read_text())
    assert reports["2"]["grain"] == 2.0 and reports["0"]["grain"] == 0.0
    psnrs = {g: rep["summary"]["psnr"]["mean"] for g, rep in reports.items()}
    assert 0.3 < psnrs["0"] - psnrs["2"] < 1.0
    # compare's rows are the labels: NAME[@R][+grainS]
    assert parse_decoders(["fidelity,fidelity+grain2", "perceptual@0.5+grain1.5"]) == [
        ("fidelity", None, None), ("fidelity", None, 2.0), ("perceptual", 0.5, 1.5)]
    import typer

    with pytest.raises(typer.BadParameter, match="grain"):
        parse_decoders(["fidelity+grainx"])
    with pytest.raises(typer.BadParameter, match="grain"):
        parse_decoders(["fidelity+grain99"])
