"""The colour correction of format version 5 (gqtok.io.color): its integer map, the encoder's
fit, and what it buys on real photos coded larger than their size."""

from __future__ import annotations

import numpy as np
import pytest

from gqtok import load_model
from gqtok.codec import decode_bytes, encode_pictures
from gqtok.eval.metrics.fidelity import psnr as _psnr
from gqtok.format import container
from gqtok.io import color as col
from gqtok.io.images import read_image
from tests import gqedit
from tests.conftest import DATA

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
    """Quality 90 codes the photo enlarged (version 5): its pixels are closer to the photo than
    the same file's without the correction (the version 4 file of the same tokens), for 24
    bytes."""
    pic = read_image(str(DATA / photo))
    enc = encode_pictures(MODEL, [pic], quality=90)[0]
    assert enc.header.file_version == 5 and len(enc.header.color) == 12
    f = gqedit.fields(enc.data)
    plain = gqedit.build({k: v for k, v in f.items() if k not in gqedit.COLOR_FIELDS}
                         | {"version": 4})  # fmt: skip
    assert len(enc.data) - len(plain) == 24
    with_c = np.asarray(decode_bytes(enc.data, MODEL)[0])
    without = np.asarray(decode_bytes(plain, MODEL)[0])
    assert _psnr(pic.rgb, with_c) > _psnr(pic.rgb, without)


def test_the_cli_fits_it_above_quality_75_unless_told_not_to(tmp_path) -> None:  # noqa: ANN001
    """`gqtok encode --quality 90` writes version 5, `--no-color` the version 4 file of the
    same tokens (faster), `--bpp` landing above the image's size version 5 too; each decodes."""
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
    assert versions == {"c": 5, "n": 4, "b": 5, "l": 4}
    c, n = (container.unpack((tmp_path / f"{k}.gq").read_bytes()) for k in "cn")
    assert c[1] == n[1] and len(c[0].color) == 12 and n[0].color == ()  # same tokens
