"""Images coded at another scale (format version 4): the resampling filter the format specifies
(gqtok.io.resample) against hand-computed weights and Pillow's own cubic filter, the header's
extension and its limits, and every decode path (bytes, API, alpha, grayscale, CLI info)
returning the image at its own size."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import gqtok
from gqtok.cli.app import app
from gqtok.codec import decode_bytes, encode_pictures, unpack_tokens
from gqtok.codec.engine import decode_to_array
from gqtok.errors import DecompressionBombError, FormatError
from gqtok.format import container
from gqtok.io.color import apply_color
from gqtok.io.images import read_image
from gqtok.io.resample import ONE, resample, taps
from tests import gqedit
from tests.conftest import DATA, REPO

MODEL = gqtok.load_model()
runner = CliRunner()
PHOTO = DATA / "photo_b.png"


def test_the_filter_weights_are_the_hand_computed_ones() -> None:
    # 4 -> 2 samples: output 0 is centred at 1.0; reducing by 2 stretches the kernel by 2, so
    # inputs 0..3 sit at -0.25, 0.25, 0.75, 1.25; Keys' cubic (a = -1/2) there is 0.8671875,
    # 0.8671875, 0.2265625, -0.0703125 (sum 1.890625); normalised and times 2^14: 7514.98,
    # 7514.98, 1963.43, -609.32 -> 7515, 7515, 1963, -609 (sum 16384 exactly)
    first, w = taps(4, 2)
    assert first.tolist() == [0, 0]
    assert w.tolist() == [[7515, 7515, 1963, -609], [-609, 1963, 7515, 7515]]
    # 2 -> 4: output 0 is centred at 0.25, inputs at 0.25 and 1.25 (no stretch when
    # enlarging): 0.8671875 and -0.0703125 -> 17829.65, -1445.65 -> 17830, -1446
    first, w = taps(2, 4)
    assert w.tolist() == [[17830, -1446], [12990, 3394], [3394, 12990], [-1446, 17830]]
    for n_in, n_out in ((768, 480), (480, 768), (7, 3), (3, 11), (1000, 251)):
        assert (taps(n_in, n_out)[1].sum(axis=1) == ONE).all()


def test_resampling_matches_pillows_cubic_filter_within_rounding() -> None:
    """Pillow's BICUBIC is the same kernel, support and edge rule with 22-bit weights: an
    independent implementation. Two passes, each rounded, differ by a level now and then and
    by two where a first-pass difference meets a weight above 1 (enlarging); anything more
    is a bug in ours."""
    rgb = np.asarray(Image.open(REPO / "examples" / "sample.jpg").convert("RGB"))
    for size in ((480, 320), (960, 640), (1920, 1280), (767, 513), (301, 199)):
        ours = resample(rgb, *size).astype(int)
        theirs = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BICUBIC))
        diff = np.abs(ours - theirs)
        assert diff.max() <= 2 and diff.mean() < 0.002, (size, diff.max(), diff.mean())
        assert (diff > 1).mean() < 1e-5
    flat = np.full((33, 17, 3), 77, np.uint8)  # the weights sum to exactly 1: flat stays flat
    assert (resample(flat, 50, 9) == 77).all()
    assert np.array_equal(resample(rgb, 768, 512), rgb)
    gray = rgb[..., 0].copy()
    assert np.array_equal(resample(gray, 300, 200), resample(rgb, 300, 200)[..., 0])
    with pytest.raises(ValueError):
        resample(rgb.astype(np.float32), 10, 10)


def _scaled(scale: float, source: str | bytes = str(PHOTO)) -> gqtok.codec.Encoded:
    return encode_pictures(MODEL, [read_image(source)], scale=scale)[0]


@pytest.mark.parametrize("scale", [0.625, 1.5])
def test_a_scaled_file_decodes_to_its_image_size_through_the_filter(scale: float) -> None:
    pic = read_image(str(PHOTO))
    h, w = pic.rgb.shape[:2]
    enc = _scaled(scale)
    header, _, _ = container.unpack(enc.data)
    # coded larger, a file carries the colour correction the encoder fitted where it pays for
    # its bytes (versions 5, 6; not on this 150 x 97 photo at 1.5x), coded smaller none
    want = {0: 4, 12: 5}.get(len(header.color), 6)
    assert header.file_version == want and header.version == 2
    assert header.scaled and (scale > 1 or not header.color)
    assert (header.width, header.height) == (w, h)
    assert header.coded_size == (round(w * scale), round(h * scale))
    assert enc.bpp == len(enc.data) * 8 / (w * h)  # the rate is per pixel of the image
    image, _ = decode_bytes(enc.data, MODEL)
    assert image.size == (w, h)
    # exactly the network's image at the coded size, then the format's filter, then the
    # colour correction's integer map
    _, tokens, _ = unpack_tokens(MODEL, enc.data)
    assert tokens.color == header.color
    cw, ch = header.coded_size
    plain = gqtok.codec.Tokens(tokens.indices, cw, ch)
    want = apply_color(resample(decode_to_array(MODEL, plain), w, h), header.color)
    assert np.array_equal(np.asarray(image), want)
    # the Python API: tokens that remember the size, the same pixels as the file
    api = gqtok.encode(MODEL, pic.rgb, value_range=(0, 255), quality=90)
    assert api.size == (w, h) and (api.width, api.height) != (w, h)
    via_file = encode_pictures(MODEL, [pic], quality=90)[0]
    assert np.array_equal(api.indices, via_file.tokens.indices)
    assert np.array_equal(gqtok.decode_array(MODEL, api),
                          np.asarray(decode_bytes(via_file.data, MODEL)[0]))


def test_alpha_and_grayscale_survive_a_scaled_coding() -> None:
    im = Image.open(PHOTO).convert("RGBA")
    im.putalpha(Image.linear_gradient("L").resize(im.size))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    enc = _scaled(1.5, buf.getvalue())
    out, header = decode_bytes(enc.data, MODEL)
    assert out.mode == "RGBA" and out.size == im.size and header.scaled
    assert np.array_equal(np.asarray(out)[..., 3], np.asarray(im)[..., 3])  # lossless alpha
    buf = io.BytesIO()
    Image.open(PHOTO).convert("L").save(buf, format="PNG")
    out, _ = decode_bytes(_scaled(0.625, buf.getvalue()).data, MODEL)
    assert out.mode == "L" and out.size == im.size


def _refused(data: bytes, match: str, error: type = FormatError, **kw: object) -> None:
    with pytest.raises(error, match=match) as info:
        decode_bytes(data, MODEL, "s.gq", **kw)  # type: ignore[arg-type]
    assert "\n" not in str(info.value) and str(info.value).startswith("s.gq: ")


def test_the_extension_is_checked_like_every_other_field() -> None:
    f = gqedit.fields(_scaled(2.5).data)  # coded larger: version 6; without its filter, 5
    data = gqedit.build({k: v for k, v in f.items() if k not in gqedit.FILTER_FIELDS}
                        | {"version": 5})  # fmt: skip
    f = gqedit.fields(data)
    assert f["version"] == 5 and any(f[k] for k in gqedit.COLOR_FIELDS)
    assert container.unpack(gqedit.edit(data, color0=-32768))[0].color[0] == -32768
    # the colour correction only with a scaled coding: not forged onto version 4's fields
    unscaled = gqedit.build({**f, "coded_width": f["width"], "coded_height": f["height"]})
    _refused(unscaled, "coded size equals its size")
    _refused(gqedit.edit(data, coded_width=0, coded_height=0), "colour correction without")
    _refused(gqedit.edit(data, version=4), "corrupt|end marker|trailing|not ceil")
    plain = {k: v for k, v in f.items() if k not in gqedit.COLOR_FIELDS}
    data = gqedit.build(plain | {"version": 4})  # the same file without it: version 4
    assert container.unpack(data)[0].color == ()
    f = gqedit.fields(data)
    assert (f["coding_version"], f["filter"]) == (2, 0)
    w, h = f["width"], f["height"]
    _refused(gqedit.edit(data, filter=1), "unknown coding version or resampling filter")
    _refused(gqedit.edit(data, coding_version=4), "unknown coding version")
    _refused(gqedit.edit(data, coding_version=1), "context in a version 1 file")
    _refused(gqedit.edit(data, coded_width=w, coded_height=h), "coded size equals its size")
    _refused(gqedit.edit(data, width=w // 5 + 0), "factor 4|not ceil")
    _refused(gqedit.edit(data, coded_width=0), "outside 1..")
    _refused(gqedit.edit(data, coded_width=f["coded_width"] + 16), "not ceil|does not fit")
    # the pixel limit counts the larger of the two sizes: the coded one here
    _refused(data, "pixels, over the limit", DecompressionBombError,
             max_pixels=f["coded_width"] * f["coded_height"] - 1)  # fmt: skip
    assert decode_bytes(data, MODEL, max_pixels=f["coded_width"] * f["coded_height"])
    # an unscaled file forged with the extension but version 2 reads the extension as payload
    forged = gqedit.build({**f, "version": 2})
    _refused(forged, "corrupt|end marker|trailing")


def test_the_filter_is_checked_like_every_other_field() -> None:
    """Version 6: the radius must be 0..3 (0 only at the image's own size: a scaled file
    without a filter is version 5) and the taps must be there; any tap values are valid; a
    radius that disagrees with the taps moves the payload, which its own checks refuse; the
    same taps with a smaller radius's count decode as that filter."""
    data = _scaled(2.5).data  # coded larger: version 6 at this size (1.6 kB at 2.5x)
    f = gqedit.fields(data)
    assert f["version"] == 6 and f["radius"] == 2 and len(f["taps"]) == 108
    assert container.unpack(gqedit.edit(data, taps=(-32768,) * 108))[0].color[12] == -32768
    for r in (4, 255):
        _refused(gqedit.edit(data, radius=r), f"restoration filter radius {r}, not 0..3")
    for r in (1, 3):
        _refused(gqedit.edit(data, radius=r), "corrupt|end marker|trailing|truncated")
    _refused(gqedit.edit(data, radius=0, taps=()), "a scaled one is version 5")
    _refused(gqedit.edit(data, version=5), "corrupt|end marker|trailing")
    # coded size 0 x 0: the image's own, so this grid (of the coded size) does not fit it
    _refused(gqedit.edit(data, coded_width=0, coded_height=0), "not ceil")
    _refused(data[: len(data) - len(f["tokens"]) - 4 - 100], "truncated")
    small = gqedit.edit(data, radius=1, taps=f["taps"][:36])
    header = container.unpack(small)[0]
    assert header.file_version == 6 and header.color[12:] == f["taps"][:36]
    assert decode_bytes(small, MODEL)[0].size == Image.open(PHOTO).size


def test_info_shows_both_sizes(tmp_path: Path) -> None:
    path = tmp_path / "s.gq"
    path.write_bytes(_scaled(2.5).data)
    r = runner.invoke(app, ["info", str(path), "--json"])
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)
    w, h = Image.open(PHOTO).size
    assert rec["version"] == 6 and rec["coding_version"] == 2 and len(rec["color"]) == 120
    assert (rec["width"], rec["height"]) == (w, h)
    assert (rec["coded_width"], rec["coded_height"]) == (round(w * 2.5), round(h * 2.5))
    with pytest.raises(ValueError, match="scale"):
        _scaled(5.0)


def test_the_extreme_scales_write_files_the_format_allows() -> None:
    """At 1/4 a side can round below a quarter of the image's (10 px -> 2): it is kept at a
    quarter, so every file written passes the reader's checks."""
    rgb = np.asarray(Image.open(PHOTO).convert("RGB"))[:10, :30].copy()
    for scale in (0.25, 4.0):
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="PNG")
        enc = _scaled(scale, buf.getvalue())
        assert decode_bytes(enc.data, MODEL)[0].size == (30, 10)
        cw, ch = enc.header.coded_size
        assert 4 * ch >= 10 and 4 * cw >= 30 and ch <= 40 and cw <= 120


def test_an_image_is_never_coded_over_the_default_pixel_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A file the default decoder would refuse is never written: the scale shrinks until the
    coded image fits the limit (here lowered to 20 000 pixels; photo_b is 150 x 97)."""
    import gqtok.codec.engine as cb

    monkeypatch.setattr(cb, "DEFAULT_MAX_PIXELS", 20_000)
    enc = _scaled(2.0)
    cw, ch = enc.header.coded_size
    assert cw * ch <= 20_000 and cw > 150 and 1.0 < cw / 150 < 2.0
    assert decode_bytes(enc.data, MODEL, max_pixels=20_000)[0].size == (150, 97)
    monkeypatch.setattr(cb, "DEFAULT_MAX_PIXELS", 10_000)  # the image itself is over it
    assert not _scaled(2.0).header.scaled and _scaled(0.625).header.scaled
