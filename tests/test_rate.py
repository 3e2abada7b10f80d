"""Rate control (gqtok.codec.rate): the quality scale, --bpp targets, and the prior over
codebook sizes that codes every K (gqtok.format.prior), with the shipped default model on real
photos, the real GQ search, entropy coder and decoder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from gqtok import load_model
from gqtok.cli.app import app
from gqtok.codec import decode_bytes, encode_pictures
from gqtok.codec import rate as rc
from gqtok.errors import ModelError
from gqtok.format import container
from gqtok.format.prior import PriorParams
from gqtok.io.images import read_image
from gqtok.quant.codebook import codebook_view
from gqtok.zoo.load import model_for_header
from tests.conftest import DATA, REPO

MODEL = load_model()
runner = CliRunner()
PHOTOS = [DATA / "photo_a.jpg", DATA / "photo_c.jpg"]
QUALITIES = (0, 20, 40, 60, 75, 90, 100)
SAMPLE = REPO / "examples" / "sample.jpg"  # 768x512


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / mse))


def test_the_quality_scale() -> None:
    settings = [rc.quality_setting(MODEL, q) for q in range(101)]
    own = MODEL.quant.size
    assert settings[0] == rc.Setting(rc.K_LOW, rc.S_LOW)
    assert settings[25] == rc.Setting(own, rc.S_LOW)
    assert settings[75] == rc.Setting(own, 1.0) and settings[100] == rc.Setting(own, rc.S_HIGH)
    # K rises up to Q = 25, then the scale; each step raises one of them
    keys = [(s.scale, s.size) for s in settings]
    assert all(a < b for a, b in zip(keys, keys[1:], strict=False))
    assert all(s.size < own for s in settings[:25]) and all(s.size == own for s in settings[25:])
    assert all(s.size % 16 == 0 for s in settings if s.size >= 8192)
    for bad in (-1, 100.5, float("nan"), True):
        with pytest.raises(ValueError):
            rc.quality_setting(MODEL, bad)


@pytest.mark.parametrize("photo", PHOTOS, ids=lambda p: p.name)
def test_quality_is_monotone_in_rate_and_fidelity(photo: Path) -> None:
    pic = read_image(str(photo))
    points = []
    for q in QUALITIES:
        enc = encode_pictures(MODEL, [pic], quality=q)[0]
        setting = rc.quality_setting(MODEL, q)
        assert enc.header.size == setting.size
        h, w = pic.rgb.shape[:2]
        assert enc.header.coded_size == (round(w * setting.scale), round(h * setting.scale))
        # 2 unscaled; 4 coded smaller; 5 coded larger, with its colour correction
        assert enc.header.file_version in ((2,) if q == 75 else (4,) if q < 75 else (5, 6))
        assert bool(enc.header.color) == (q > 75)
        # decoded as `gqtok decode` does: the model the header names (up to Q = 10 the
        # default's coarse-codebook model, same tokens), resampled to the image's size
        image, header = decode_bytes(enc.data, model_for_header)
        assert image.size == (w, h)
        points.append((enc.bpp, _psnr(np.asarray(image), pic.rgb), header.entropy_kind))
    bpps = [p[0] for p in points]
    psnrs = [p[1] for p in points]
    assert all(a < b for a, b in zip(bpps, bpps[1:], strict=False)), points
    assert all(a < b for a, b in zip(psnrs, psnrs[1:], strict=False)), points
    # every K is coded with the context model (32 x 32 cells from K = 1024, its 32 a bins
    # below) and the prior's table for the position in the cell; never the uniform code
    assert [p[2] for p in points] == ["context"] * len(QUALITIES)


@pytest.mark.parametrize("photo", sorted(DATA.glob("photo_*")), ids=lambda p: p.name)
def test_small_codebooks_decode_better_with_the_coarse_model(photo: Path) -> None:
    """The shipped default names its coarse-codebook model for K < 6144 (qualities 0..10
    code such K): the same tokens and bytes, and a decoder that beats the default's own on
    those codewords."""
    import gqtok
    from gqtok.eval.catalog import models_table

    coarse = MODEL.card["coarse"]
    assert coarse["below"] == 6144 and rc.quality_setting(MODEL, 10).size < 6144
    row = next(r for r in models_table() if r["name"] == coarse["model"])
    assert row["kind"] == "coarse" and row["decoders"] == ["fidelity", "perceptual"]
    pic = read_image(str(photo))
    assert encode_pictures(MODEL, [pic], quality=5)[0].header.model_id == coarse["model"]
    for size in (64, 406, 1024):
        enc = encode_pictures(rc.at_size(MODEL, size), [pic])[0]
        assert enc.header.model_id == coarse["model"]
        own = gqtok.decode_array(rc.at_size(MODEL, enc.header.size, coarse=False), enc.tokens)
        ref = encode_pictures(rc.at_size(MODEL, enc.header.size, coarse=False), [pic])[0]
        n = enc.token_bytes  # the same coded tokens (the CRC after them covers the header)
        assert ref.token_bytes == n and ref.data[-n - 4 : -4] == enc.data[-n - 4 : -4]
        image, _ = decode_bytes(enc.data, model_for_header)
        gain = _psnr(np.asarray(image), pic.rgb) - _psnr(own, pic.rgb)
        assert gain > 0.05, (size, gain)  # +0.1 .. +0.9 dB on these photos, ~+2 dB held-out
    for q in (25, 50, 75):
        assert encode_pictures(MODEL, [pic], quality=q)[0].header.model_id == MODEL.name


def test_a_target_bpp_is_met_or_the_nearest_rate_is_reported() -> None:
    pic = read_image(str(REPO / "examples" / "sample.jpg"))
    for target in (0.04, 0.12, 0.24, 0.5):
        enc = encode_pictures(MODEL, [pic], bpp=target)[0]
        assert enc.rate is not None and enc.rate.met, enc.rate
        assert abs(enc.bpp - target) <= rc.TOLERANCE * target
        assert enc.header.size == enc.rate.size
        assert len(enc.rate.tried) <= rc.MAX_STEPS + rc.MAX_SCALE_STEPS
        w, h = enc.header.coded_size
        assert (w, h) == (round(768 * enc.rate.scale), round(512 * enc.rate.scale))
        # below the lowest scale's rate a smaller K; above it the model's own K
        assert (enc.header.size < MODEL.quant.size) == (target < 0.08), enc.rate
        image, _ = decode_bytes(enc.data, model_for_header)
        assert image.size == (768, 512)
    far = encode_pictures(MODEL, [pic], bpp=3.0)[0]
    assert far.rate is not None and not far.rate.met and far.rate.scale == rc.S_HIGH
    with pytest.raises(ValueError):
        encode_pictures(MODEL, [pic], bpp=0.2, quality=50)


def test_the_prior_beats_the_uniform_code_it_replaces() -> None:
    """Bits per token of real tokens at K = 4096 and 300 000 (not on the ladder): the prior's
    table against log2 K, and its weights are the same integers in every call."""
    pic = read_image(str(DATA / "photo_a.jpg"))
    for size in (4096, 300_000):
        m = rc.at_size(MODEL, size)
        assert m.entropy.kind == "prior"
        tok = encode_pictures(m, [pic], entropy="static")[0]
        assert tok.header.version == 2 and tok.entropy == "prior"
        bits = m.entropy.ideal_bits(tok.tokens.indices.numpy().reshape(-1)) / tok.header.num_tokens
        assert bits < np.log2(size) - 0.3
        again = MODEL.prior.weights(codebook_view(16, size, 42).numpy())
        assert np.array_equal(again, m.entropy.counts)


def test_coordinate_bins_and_features_follow_their_definitions() -> None:
    """The fast forms (a shift for the bin, float32 scaling for the features) give what the
    format defines: the last of EDGES at or below the integer feature, ends open; the
    codeword times 16 rounded half to even in float64, clipped to +-127."""
    from gqtok.format.context import feature_table
    from gqtok.format.prior import BINS, EDGES, coordinate_bins

    cb = codebook_view(16, 1 << 20, 42).numpy()
    want = np.clip(np.rint(cb.astype(np.float64) * 16), -127, 127).astype(np.int8)
    assert np.array_equal(feature_table(cb), want)
    halves = (np.arange(-4200, 4200) / 32).astype(np.float32).reshape(-1, 2)  # ties, clips
    assert np.array_equal(
        feature_table(halves), np.clip(np.rint(halves.astype(np.float64) * 16), -127, 127)
    )
    rule = np.searchsorted(np.asarray(EDGES), want.astype(np.int64), side="right") - 1
    assert np.array_equal(coordinate_bins(cb), np.clip(rule, 0, BINS - 1))


def test_cli_quality_and_bpp(tmp_path: Path) -> None:
    src = str(DATA / "photo_a.jpg")
    out = tmp_path / "a.gq"
    r = runner.invoke(app, ["encode", src, "-o", str(out), "--quality", "40", "--json"])
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout.strip().splitlines()[-1])
    setting = rc.quality_setting(MODEL, 40)
    assert rec["codebook_size"] == setting.size and rec["format_version"] == 4
    header = container.unpack(out.read_bytes())[0]
    assert header.size == rec["codebook_size"] and header.version == 2  # context-coded
    assert (rec["coded_width"], rec["coded_height"]) == header.coded_size
    assert rec["coded_width"] == round(rec["width"] * setting.scale)
    r = runner.invoke(app, ["decode", str(out), "-o", str(tmp_path / "a.png")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["encode", src, "-o", str(tmp_path / "b.gq"), "--bpp", "5"])
    assert r.exit_code == 0 and "out of reach" in r.output
    r = runner.invoke(app, ["encode", src, "-o", str(tmp_path / "c.gq"), "--bpp", "0.2",
                            "--quality", "50"])  # fmt: skip
    assert r.exit_code == 2 and not (tmp_path / "c.gq").exists()
    r = runner.invoke(app, ["encode", src, "-o", str(tmp_path / "c.gq"), "--quality", "50",
                            "--codebook-size", "4096"])  # fmt: skip
    assert r.exit_code == 2
    r = runner.invoke(app, ["encode", src, "-o", str(tmp_path / "c.gq"), "--quality", "50",
                            "--scale", "2"])  # fmt: skip
    assert r.exit_code == 2 and not (tmp_path / "c.gq").exists()
    # an explicit scale, with an explicit codebook size
    r = runner.invoke(app, ["encode", src, "-o", str(tmp_path / "d.gq"), "--scale", "1.5",
                            "--codebook-size", "4096", "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout.strip().splitlines()[-1])
    assert rec["codebook_size"] == 4096 and rec["format_version"] == 5  # larger: + colour
    assert (rec["coded_width"], rec["coded_height"]) == (round(317 * 1.5), round(211 * 1.5))
    r = runner.invoke(app, ["decode", str(tmp_path / "d.gq"), "-o", str(tmp_path / "d.png")])
    assert r.exit_code == 0 and Image.open(tmp_path / "d.png").size == (317, 211)


def test_eval_at_a_quality_or_a_bpp_measures_the_files_encode_writes(tmp_path: Path) -> None:
    """gqtok eval --quality Q / --bpp B: the rate and PSNR of the .gq file gqtok encode writes
    with the same option, decoded by gqtok decode (a scaled quality, a coarse one, a search)."""
    src = DATA / "photo_a.jpg"
    for option in (["--quality", "90"], ["--quality", "10"], ["--bpp", "0.1"]):
        gq, png = tmp_path / "x.gq", tmp_path / "x.png"
        r = runner.invoke(app, ["encode", str(src), "-o", str(gq), "--overwrite", *option])
        assert r.exit_code == 0, r.output
        r = runner.invoke(app, ["decode", str(gq), "-o", str(png), "--overwrite"])
        assert r.exit_code == 0, r.output
        want_psnr = _psnr(read_image(str(src)).rgb, np.asarray(Image.open(png).convert("RGB")))
        r = runner.invoke(app, ["eval", str(src), *option, "--metrics", "psnr", "--json", "-"])
        assert r.exit_code == 0, r.output
        rep = json.loads(r.stdout)
        key = {"--quality": "quality", "--bpp": "target_bpp"}[option[0]]
        assert rep["protocol"][key] == float(option[1])
        w, h = Image.open(src).size
        assert rep["summary"]["bpp"]["mean"] == pytest.approx(gq.stat().st_size * 8 / (w * h))
        assert rep["summary"]["psnr"]["mean"] == pytest.approx(want_psnr, abs=1e-9)
        if option[0] == "--quality" and float(option[1]) < rc.Q_SCALE:  # a smaller codebook
            assert rep["codebook"]["codebook_size"] == rc.quality_setting(MODEL, 10).size
    r = runner.invoke(app, ["eval", str(src), "--quality", "50", "--bpp", "0.2"])
    assert r.exit_code == 2
    from gqtok.eval.evaluate import evaluate

    for bad in ({"quality": 101.0}, {"bpp": float("nan")}, {"bpp": 0.0}):  # before any image
        with pytest.raises(ValueError, match="quality must be|target bpp must"):
            evaluate(MODEL, [src], ("psnr",), **bad)


@pytest.mark.parametrize("quality", [5, 90, 100])
def test_a_token_export_at_a_quality_holds_and_gives_back_that_qualitys_file(
    tmp_path: Path, quality: int
) -> None:
    """`gqtok export --quality Q` records the model that codes Q (the coarse-codebook one at
    Q 5) and the scale, holds the tokens of the .gq file of the same quality with the size
    before the scale, and `gqtok import` gives back that file: its pixels at the image's size
    (PNG) and its very bytes (-f gq)."""
    from gqtok.codec import unpack_tokens
    from gqtok.format.shards import iter_entries

    src = tmp_path / "in"
    src.mkdir()
    (src / "b.png").write_bytes((DATA / "photo_b.png").read_bytes())
    tok = tmp_path / "tok"
    r = runner.invoke(app, ["export", str(src), "-o", str(tok), "--quality", str(quality),
                            "--npy"])  # fmt: skip
    assert r.exit_code == 0, r.output
    manifest = json.loads((tok / "manifest.json").read_text())
    setting = rc.quality_setting(MODEL, quality)
    want = MODEL.card["coarse"]["model"] if quality < 25 else MODEL.name
    assert manifest["model"]["id"] == want and manifest["protocol"]["scale"] == setting.scale
    gq = tmp_path / "b.gq"
    r = runner.invoke(app, ["encode", str(src / "b.png"), "-o", str(gq), "--quality",
                            str(quality)])  # fmt: skip
    assert r.exit_code == 0, r.output
    header, tokens, _ = unpack_tokens(model_for_header(container.unpack(gq.read_bytes())[0]),
                                      gq.read_bytes())  # fmt: skip
    # 90: no correction pays on this 150 x 97 photo; 100: the map with its filter does
    assert header.file_version == {5: 4, 90: 4, 100: 6}[quality]
    (entry,) = iter_entries(tok)
    assert np.array_equal(entry.tokens, tokens.indices.numpy())
    assert entry.color == header.color
    assert (entry.width, entry.height) == header.coded_size != (header.width, header.height)
    assert entry.image_size == (header.width, header.height)
    assert np.load(tok / "shard-00000.image_sizes.npy").tolist() == [[header.width, header.height]]
    assert "shard-00000.image_sizes.npy" in manifest["shards"][0]["npy"]
    for fmt in ("png", "gq"):
        r = runner.invoke(app, ["import", str(tok), "-o", str(tmp_path / fmt), "-f", fmt])
        assert r.exit_code == 0, r.output
    (gq_back,) = (tmp_path / "gq").glob("*.gq")
    assert gq_back.read_bytes() == gq.read_bytes()
    r = runner.invoke(app, ["decode", str(gq), "-o", str(tmp_path / "b.png")])
    assert r.exit_code == 0, r.output
    (png_back,) = (tmp_path / "png").glob("*.png")
    assert np.array_equal(np.asarray(Image.open(png_back)),
                          np.asarray(Image.open(tmp_path / "b.png")))  # fmt: skip


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"ladder": np.array([64, 64]), "values": np.zeros((2, 16, 32), np.int64)},
         "increasing"),
        ({"ladder": np.array([64]), "values": np.zeros((1, 16, 32))}, "integer"),
        ({"ladder": np.array([64]), "values": np.zeros((1, 8, 32), np.int64)}, "shape"),
        ({"ladder": np.array([64]), "values": np.zeros((1, 16, 31), np.int64)}, "shape"),
        ({"ladder": np.array([64]), "values": np.full((1, 16, 32), 1 << 40)}, "outside"),
        ({"ladder": np.array([1 << 30]), "values": np.zeros((1, 16, 32), np.int64)}, "sizes"),
        ({"ladder": np.array([64])}, "lacks"),
    ],
)  # fmt: skip
def test_hostile_priors_are_refused(arrays: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PriorParams(arrays).check(16)


def test_a_hostile_prior_in_a_model_file_is_a_model_error(tmp_path: Path) -> None:
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    src = REPO / "weights" / "default.safetensors"
    with safe_open(str(src), framework="np") as f:
        meta = dict(f.metadata())
    state = load_file(str(src))
    state["entropy.prior.values"] = state["entropy.prior.values"][:, :8].copy()
    path = tmp_path / "m.safetensors"
    save_file(state, str(path), metadata=meta)
    from gqtok.model import load_model_file

    with pytest.raises(ModelError, match="bad entropy prior") as info:
        load_model_file(path)
    assert "\n" not in str(info.value)


def test_compare_draws_gqtok_curve_over_qualities() -> None:
    from gqtok.eval.compare import compare

    rep = compare([str(DATA / "photo_c.jpg")], [0.15, 0.3], [MODEL], codecs=["jpeg"],
                  qualities=[30, 75])  # fmt: skip
    rows = {(r["target"], r["codec"]): r for r in rep.summary}
    ours = [rows[(f"@{MODEL.name} q{q}", f"gqtok:{MODEL.name}")] for q in (30, 75)]
    assert ours[0]["bpp"] < ours[1]["bpp"] and ours[0]["psnr"] < ours[1]["psnr"]
    # JPEG is also measured at each of gqtok's rates, image by image
    assert (f"@{MODEL.name} q30", "jpeg") in rows
    pair = [b for b in rep.bd if b["curve"] == f"gqtok:{MODEL.name}" and b["reference"] == "jpeg"]
    assert len(pair) == 1


def test_compare_measures_files_with_the_colour_correction() -> None:
    from gqtok.eval.compare import compare

    def ours(color: bool | None) -> tuple[dict, list[str]]:
        rep = compare([str(SAMPLE)], [0.3], [MODEL], codecs=["jpeg"], qualities=[50],
                      color=color)  # fmt: skip
        row = next(r for r in rep.summary if r["codec"] == f"gqtok:{MODEL.name}")
        return row, rep.notes

    plain, notes = ours(False)
    fitted, fitted_notes = ours(True)
    # the correction costs bytes and buys PSNR on the same tokens; the report says it is there
    assert fitted["bpp"] > plain["bpp"] and fitted["psnr"] > plain["psnr"] + 0.05
    assert any("--color" in n for n in fitted_notes) and any("--no-color" in n for n in notes)
