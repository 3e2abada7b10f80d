"""The colour correction of format versions 5 and 6 (gqtok.io.color): its integer map with and
without the restoration filter, the encoder's fit, and what each part buys on real photos coded
larger than their size."""

from __future__ import annotations

import numpy as np
import pytest

from gqtok import load_model
from gqtok.codec import decode_bytes, encode_pictures, unpack_tokens
from gqtok.eval.metrics.fidelity import psnr as _psnr
from gqtok.format import container
from gqtok.io import color as col
from gqtok.io.images import read_image
from tests import gqedit
from tests.conftest import DATA, REPO

MODEL = load_model()


def test_the_map_is_the_integer_formula_of_the_format() -> None:
    assert col.VALUES == container.COLOR_VALUES
    px = np.array([[[0, 100, 255], [7, 8, 9]]], dtype=np.uint8)
    # offsets in 1/16 level: +1, -1, +0.5 (rounds up: floor(x + 0.5 + 0.5))
    shift = (0,) * 9 + (16, -16, 8)
    assert col.apply_color(px, shift).tolist() == [[[1, 99, 255], [8, 7, 10]]]
    # gain 2 on red (G00 = 4096 + 4096), clipped at 255
    double = (4096,) + (0,) * 11
    assert col.apply_color(px, double)[..., 0].tolist() == [[0, 14]]
    assert col.apply_color(np.full((1, 1, 3), 200, np.uint8), double)[0, 0, 0] == 255
    assert col.apply_color(px, ()) is px  # no correction: the pixels as they are
    # any 12 int16 values: the formula, in exact integers, on random pixels
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (37, 29, 3), dtype=np.uint8)
    for _ in range(20):
        c = tuple(int(v) for v in rng.integers(-32768, 32768, 12))
        g = np.array(c[:9]).reshape(3, 3) + 4096 * np.eye(3, dtype=np.int64)
        want = (rgb.reshape(-1, 3).astype(np.int64) @ g.T + 256 * np.array(c[9:]) + 2048) // 4096
        assert np.array_equal(col.apply_color(rgb, c).reshape(-1, 3), np.clip(want, 0, 255))
    with pytest.raises(ValueError, match="12 int16"):
        col.apply_color(px, (1, 2, 3))
    with pytest.raises(ValueError, match="12 int16"):
        col.apply_color(px, (40000,) + (0,) * 11)
    with pytest.raises(ValueError, match="radius 1, 2, 3"):
        col.apply_color(px, (0,) * 13)


def _filtered(rgb: np.ndarray, c: tuple[int, ...]) -> np.ndarray:
    """docs/format.md's version 6 formula, term by term in int64 (no convolution)."""
    r = {48: 1, 120: 2, 228: 3}[len(c)]
    offs = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if (dy, dx) > (0, 0)]
    h, w, _ = rgb.shape
    p = np.pad(rgb.astype(np.int64), ((r, r), (r, r), (0, 0)), mode="edge")

    def at(dy: int, dx: int, j: int) -> np.ndarray:
        return p[r + dy : r + dy + h, r + dx : r + dx + w, j]

    g = np.array(c[:9]).reshape(3, 3) + 4096 * np.eye(3, dtype=np.int64)
    taps = np.array(c[12:]).reshape(3, 3, len(offs))
    out = np.empty_like(rgb)
    for i in range(3):
        acc = 256 * c[9 + i] + 2048 + sum(g[i, j] * at(0, 0, j) for j in range(3))
        for j in range(3):
            for t, (dy, dx) in enumerate(offs):
                acc = acc + taps[i, j, t] * (at(dy, dx, j) + at(-dy, -dx, j) - 2 * at(0, 0, j))
        out[..., i] = np.clip(acc // 4096, 0, 255)
    return out


@pytest.mark.parametrize("radius", [1, 2, 3])
def test_the_filter_is_the_integer_formula_of_version_6(radius: int, monkeypatch) -> None:  # noqa: ANN001
    """Any int16 values, extreme ones included, on random pixels: the float64 convolution gives
    the formula's integers exactly, also band by band (rows of context across band edges)."""
    rng = np.random.default_rng(radius)
    rgb = rng.integers(0, 256, (23, 17, 3), dtype=np.uint8)
    n = 12 + 18 * radius * (radius + 1)
    assert col.taps(radius) == container.filter_taps(radius) == n - 12
    cases = [tuple(int(v) for v in rng.integers(-32768, 32768, n)) for _ in range(4)]
    cases += [(32767,) * n, (-32768,) * n, (0,) * 12 + (1,) * (n - 12)]
    for c in cases:
        assert col.radius_of(c) == radius
        want = _filtered(rgb, c)
        assert np.array_equal(col.apply_color(rgb, c), want)
        monkeypatch.setattr(col, "BLOCK", 17 * 8)  # bands of two rows
        assert np.array_equal(col.apply_color(rgb, c), want)
        monkeypatch.undo()
    # zero taps: exactly the affine map of version 5
    affine = cases[0][:12]
    assert np.array_equal(col.apply_color(rgb, affine + (0,) * (n - 12)),
                          col.apply_color(rgb, affine))  # fmt: skip


def test_the_filter_fit_sharpens_a_blur_the_affine_map_cannot() -> None:
    """A blurred photo: the affine fit alone gains little, the filter of radius 2 much more,
    and the fit keeps the filter only where it pays."""
    x = read_image(str(DATA / "photo_a.jpg")).rgb
    f = x.astype(np.float64)
    blur = (2 * f + np.roll(f, 1, 0) + np.roll(f, -1, 0) + np.roll(f, 1, 1) + np.roll(f, -1, 1)) / 6
    blur = np.rint(blur).astype(np.uint8)
    affine = col.fit_color(x, blur)
    both = col.fit_color(x, blur, radius=2)
    assert len(affine) in (0, 12) and len(both) == 120
    base = _psnr(x, blur)
    plain = max(base, _psnr(x, col.apply_color(blur, affine)))
    assert _psnr(x, col.apply_color(blur, both)) > plain + 2
    assert col.fit_color(x, x, radius=2) == ()  # nothing to correct: no correction
    with pytest.raises(ValueError, match="radius"):
        col.fit_color(x, blur, radius=4)


def test_the_fit_undoes_a_colour_cast_and_is_never_worse() -> None:
    x = read_image(str(DATA / "photo_a.jpg")).rgb
    cast = np.clip(np.rint(x.astype(np.float64) * [0.9, 1.0, 1.05] + [10, -3, 0]), 0, 255)
    cast = cast.astype(np.uint8)
    c = col.fit_color(x, cast)
    assert len(c) == 12 and _psnr(x, col.apply_color(cast, c)) > _psnr(x, cast) + 10
    assert col.fit_color(x, x) == ()  # nothing to correct: no correction
    noisy = np.clip(x.astype(np.int16) + np.random.default_rng(1).integers(-3, 4, x.shape), 0, 255)
    noisy = noisy.astype(np.uint8)
    got = col.fit_color(x, noisy)
    assert got == () or _psnr(x, col.apply_color(noisy, got)) >= _psnr(x, noisy)


@pytest.mark.parametrize("photo", ["photo_a.jpg", "photo_c.jpg"])
def test_a_file_coded_larger_gains_from_its_correction(photo: str) -> None:
    """Quality 90 codes the photo enlarged (version 6): its pixels are closer to the photo than
    the same file's without the filter (version 5: the affine map, 217 bytes fewer), and that
    one's closer than the file without any correction (version 4, 24 bytes fewer again)."""
    pic = read_image(str(DATA / photo))
    enc = encode_pictures(MODEL, [pic], quality=90)[0]
    assert enc.header.file_version == 6 and len(enc.header.color) == 120
    f = gqedit.fields(enc.data)
    affine = gqedit.build({k: v for k, v in f.items() if k not in gqedit.FILTER_FIELDS}
                          | {"version": 5})  # fmt: skip
    plain = gqedit.build({k: v for k, v in f.items()
                          if k not in gqedit.COLOR_FIELDS + gqedit.FILTER_FIELDS}
                         | {"version": 4})  # fmt: skip
    assert (len(enc.data) - len(affine), len(affine) - len(plain)) == (217, 24)
    full, part, none = (_psnr(pic.rgb, np.asarray(decode_bytes(d, MODEL)[0]))
                        for d in (enc.data, affine, plain))  # fmt: skip
    assert full > part > none


def test_the_cli_fits_it_above_quality_75_unless_told_not_to(tmp_path) -> None:  # noqa: ANN001
    """`gqtok encode --quality 90` writes version 6, `--no-color` the version 4 file of the
    same tokens (faster), `--bpp` landing above the image's size version 6 too; each decodes."""
    from typer.testing import CliRunner

    from gqtok.cli.app import app

    runner = CliRunner()
    src = str(DATA / "photo_a.jpg")
    versions = {}
    for name, opts in (("c", ["--quality", "90"]), ("n", ["--quality", "90", "--no-color"]),
                       ("b", ["--bpp", "0.6"]), ("l", ["--quality", "60"])):  # fmt: skip
        out = tmp_path / f"{name}.gq"
        r = runner.invoke(app, ["encode", src, "-o", str(out), *opts])
        assert r.exit_code == 0, r.output
        header = container.unpack(out.read_bytes())[0]
        versions[name] = header.file_version
        assert decode_bytes(out.read_bytes(), MODEL)[0].size == (317, 211)
    assert versions == {"c": 6, "n": 4, "b": 6, "l": 4}
    c, n = (container.unpack((tmp_path / f"{k}.gq").read_bytes()) for k in "cn")
    assert c[1] == n[1] and len(c[0].color) == 120 and n[0].color == ()  # same tokens


def test_color_fits_at_the_images_own_size_too(tmp_path) -> None:  # noqa: ANN001
    """`gqtok encode --color` at the default setting: version 6 at the image's own size (coded
    size 0 x 0 in the extension), the same tokens as the plain version 2 file, closer to the
    photo; `gqtok info` shows no coded size; `gqtok eval --color` measures those files. On a
    thumbnail, whose file is 1.9 kB, no correction pays for its bytes: the plain file."""
    import json

    from typer.testing import CliRunner

    from gqtok.cli.app import app

    runner = CliRunner()
    small = tmp_path / "small.gq"
    r = runner.invoke(app, ["encode", str(DATA / "photo_c.jpg"), "-o", str(small), "--color"])
    assert r.exit_code == 0 and container.unpack(small.read_bytes())[0].file_version == 2
    src = REPO / "examples" / "sample.jpg"
    pic = read_image(str(src))
    paths = {k: tmp_path / f"{k}.gq" for k in ("plain", "color")}
    for name, opts in (("plain", []), ("color", ["--color"])):
        r = runner.invoke(app, ["encode", str(src), "-o", str(paths[name]), *opts])
        assert r.exit_code == 0, r.output
    plain, color = (container.unpack(paths[k].read_bytes()) for k in ("plain", "color"))
    assert plain[0].file_version == 2 and color[0].file_version == 6
    assert not color[0].scaled and len(color[0].color) in (12, 120) and plain[1] == color[1]
    f = gqedit.fields(paths["color"].read_bytes())
    assert (f["coded_width"], f["coded_height"], f["radius"]) == (0, 0, len(f["taps"]) and 2)
    got = {k: _psnr(pic.rgb, np.asarray(decode_bytes(paths[k].read_bytes(), MODEL)[0]))
           for k in paths}  # fmt: skip
    assert got["color"] > got["plain"]
    r = runner.invoke(app, ["info", str(paths["color"]), "--json"])
    rec = json.loads(r.stdout)
    assert rec["version"] == 6 and "coded_width" not in rec and rec["color"] == list(color[0].color)
    # radius 0 (the affine map alone) is valid at the image's own size
    affine = gqedit.build({k: v for k, v in f.items() if k != "taps"} | {"radius": 0})
    assert container.unpack(affine)[0].color == color[0].color[:12]
    out = tmp_path / "e.json"
    r = runner.invoke(app, ["eval", str(src), "--color", "--metrics", "psnr", "--json",
                            str(out), "-q"])  # fmt: skip
    assert r.exit_code == 0, r.output
    rep = json.loads(out.read_text())
    assert rep["protocol"]["color_correction"] is True
    assert abs(rep["per_image"][0]["psnr"] - got["color"]) < 1e-6


def test_another_decoder_takes_the_affine_map_without_the_filter() -> None:
    """The filter is fitted to the fidelity decoder: the perceptual decoder (and a realism
    blend) of the same file applies the affine part alone; the fidelity decoder with grain
    applies all of it, then the grain."""
    from gqtok.codec.engine import decode_to_array

    enc = encode_pictures(MODEL, [read_image(str(DATA / "photo_a.jpg"))], quality=90)[0]
    _, tok, _ = unpack_tokens(MODEL, enc.data)
    assert len(tok.color) == 120
    for decoder, realism in (("perceptual", None), ("fidelity", 0.5)):
        other = MODEL.with_decoder(decoder, realism, 0.0)
        got = np.asarray(decode_bytes(enc.data, other)[0])
        tok.color = ()
        raw = decode_to_array(other, tok)
        assert np.array_equal(got, col.apply_color(raw, enc.header.color[:12]))
        assert not np.array_equal(got, col.apply_color(raw, enc.header.color))
    grain = MODEL.with_decoder("fidelity", None, 2.0)
    plain = np.asarray(decode_bytes(enc.data, MODEL)[0]).astype(int)
    noisy = np.asarray(decode_bytes(enc.data, grain)[0]).astype(int)
    assert 1.5 < np.abs(noisy - plain).mean() < 2.5  # the whole map, then noise of 2 levels
