"""Image reading/writing and atomic file output, on real files written by Pillow."""

from __future__ import annotations

import io
import os
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gqtok.errors import DecompressionBombError, InputError, OutputError
from gqtok.io.files import atomic_write_bytes, read_input_bytes, same_file_guard
from gqtok.io.images import (
    Picture,
    crop,
    encode_image_bytes,
    format_from_path,
    from_tensor,
    pad_to_multiple,
    picture_to_pil,
    read_image,
    to_tensor,
)

ORIENTATION = 0x0112


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth gradients plus noise: enough texture to exercise real decoders."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / max(w - 1, 1), y * 255 / max(h - 1, 1), (x + y) * 2 % 256], -1)
    return np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)


def _save(img: Image.Image, path: Path, fmt: str | None = None, **kw: object) -> Path:
    img.save(path, format=fmt, **kw)
    return path


def _bytes(img: Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _raw_png(width: int, height: int, depth: int, color: int, rows: bytes) -> bytes:
    """A PNG built by hand, for layouts Pillow cannot write (16-bit RGB, absurd sizes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(rows))
        + _png_chunk(b"IEND", b"")
    )


# --- reading ---------------------------------------------------------------------------------


def test_rgb_png_round_trips_exactly(tmp_path: Path) -> None:
    rgb = _photo(23, 31)
    path = _save(Image.fromarray(rgb), tmp_path / "a.png")
    pic = read_image(path)
    assert (pic.mode, pic.source_format, pic.bit_depth) == ("RGB", "PNG", 8)
    assert (pic.width, pic.height) == (31, 23) and pic.alpha is None
    assert pic.rgb.dtype == np.uint8 and np.array_equal(pic.rgb, rgb)
    out = picture_to_pil(pic)
    assert out.mode == "RGB" and np.array_equal(np.asarray(out), rgb)
    # every source kind gives the same picture
    assert np.array_equal(read_image(str(path)).rgb, rgb)
    assert np.array_equal(read_image(path.read_bytes()).rgb, rgb)
    with open(path, "rb") as f:
        assert np.array_equal(read_image(f).rgb, rgb)


def test_grayscale_restores_as_l(tmp_path: Path) -> None:
    gray = Image.fromarray(_photo(17, 9)).convert("L")
    pic = read_image(_save(gray, tmp_path / "g.png"))
    assert pic.mode == "L" and pic.alpha is None
    assert np.array_equal(pic.rgb[..., 0], np.asarray(gray))
    assert np.array_equal(pic.rgb[..., 0], pic.rgb[..., 2])
    out = picture_to_pil(pic)
    assert out.mode == "L" and np.array_equal(np.asarray(out), np.asarray(gray))


def test_one_bit_and_cmyk_are_converted(tmp_path: Path) -> None:
    rgb = _photo(12, 12)
    bw = read_image(_save(Image.fromarray(rgb).convert("1"), tmp_path / "bw.png"))
    assert bw.mode == "L" and set(np.unique(bw.rgb)) <= {0, 255}
    cmyk = read_image(_save(Image.fromarray(rgb).convert("CMYK"), tmp_path / "c.tif"))
    assert cmyk.mode == "RGB" and cmyk.rgb.shape == (12, 12, 3)
    assert np.abs(cmyk.rgb.astype(int) - rgb).max() <= 2


def test_palette_with_transparency_keeps_alpha(tmp_path: Path) -> None:
    pal = Image.new("P", (4, 3), 0)
    pal.putpalette([10, 20, 30, 200, 0, 0, 0, 200, 0])
    pal.putpixel((1, 1), 1)
    pal.putpixel((2, 2), 2)
    pic = read_image(_save(pal, tmp_path / "p.png", transparency=1))
    assert pic.mode == "RGBA" and pic.alpha is not None
    expect = np.full((3, 4), 255, np.uint8)
    expect[1, 1] = 0
    assert np.array_equal(pic.alpha, expect)
    assert tuple(pic.rgb[2, 2]) == (0, 200, 0) and tuple(pic.rgb[0, 0]) == (10, 20, 30)
    # an opaque palette is plain RGB
    assert read_image(_save(pal, tmp_path / "o.png")).mode == "RGB"


def test_gray_palette_gif_reads_as_gray(tmp_path: Path) -> None:
    gray = Image.fromarray(_photo(8, 8)).convert("L")
    pic = read_image(_save(gray, tmp_path / "g.gif"))
    assert pic.source_format == "GIF" and pic.mode == "L"
    assert np.array_equal(pic.rgb[..., 0], np.asarray(gray))


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_varied_alpha_round_trips(tmp_path: Path, mode: str) -> None:
    rgb = _photo(15, 21)
    alpha = np.tile(np.linspace(0, 255, 21).astype(np.uint8), (15, 1))
    img = Image.fromarray(np.dstack([rgb, alpha]), "RGBA").convert(mode)
    pic = read_image(_save(img, tmp_path / "a.png"))
    assert pic.mode == mode and pic.alpha is not None
    assert np.array_equal(pic.alpha, alpha)
    out = picture_to_pil(pic)
    assert out.mode == mode and np.array_equal(np.asarray(out), np.asarray(img))


def test_fully_opaque_alpha_counts_as_absent(tmp_path: Path) -> None:
    rgba = Image.fromarray(_photo(6, 6)).convert("RGBA")
    pic = read_image(_save(rgba, tmp_path / "o.png"))
    assert pic.alpha is None and pic.mode == "RGB"
    la = Image.fromarray(_photo(6, 6)).convert("LA")
    pic = read_image(_save(la, tmp_path / "la.png"))
    assert pic.alpha is None and pic.mode == "L"


def test_sixteen_bit_gray_is_scaled_not_clipped(tmp_path: Path) -> None:
    k = np.arange(256, dtype=np.uint16).reshape(16, 16)
    values = k * 257
    values[0, 1] = 1000  # would clip to 255 if Pillow's plain convert were used
    values[0, 2] = 65535
    path = _save(Image.fromarray(values), tmp_path / "g16.png")
    with Image.open(path) as probe:
        assert probe.mode.startswith("I")
    pic = read_image(path)
    assert (pic.mode, pic.bit_depth) == ("L", 16)
    expect = k.astype(np.uint8)
    expect[0, 1] = 4  # 1000 / 257 = 3.9
    expect[0, 2] = 255
    assert np.array_equal(pic.rgb[..., 0], expect)
    tif = read_image(_save(Image.fromarray(values), tmp_path / "g16.tif"))
    assert tif.bit_depth == 16 and np.array_equal(tif.rgb[..., 0], expect)


def test_sixteen_bit_rgb_and_la_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    rgb16 = rng.integers(0, 65536, (5, 6, 3)).astype(">u2")
    rows = b"".join(b"\x00" + row.tobytes() for row in rgb16)
    pic = read_image(_raw_png(6, 5, 16, 2, rows))
    assert (pic.mode, pic.bit_depth) == ("RGB", 16)
    assert np.abs(pic.rgb.astype(int) - rgb16.astype(int) / 257).max() <= 1
    la16 = rng.integers(0, 65536, (5, 6, 2)).astype(">u2")
    rows = b"".join(b"\x00" + row.tobytes() for row in la16)
    pic = read_image(_raw_png(6, 5, 16, 4, rows))
    assert (pic.mode, pic.bit_depth) == ("LA", 16) and pic.alpha is not None
    assert np.abs(pic.alpha.astype(int) - la16[..., 1].astype(int) / 257).max() <= 1
    assert np.abs(pic.rgb[..., 1].astype(int) - la16[..., 0].astype(int) / 257).max() <= 1


def _halves(h: int, w: int) -> np.ndarray:
    """Red left half, blue right half: survives JPEG and shows where a rotation put things."""
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[:, : w // 2] = (255, 0, 0)
    rgb[:, w // 2 :] = (0, 0, 255)
    return rgb


@pytest.mark.parametrize(("orientation", "red_on_top"), [(6, True), (8, False)])
def test_exif_rotated_jpeg_is_turned_upright(
    tmp_path: Path, orientation: int, red_on_top: bool
) -> None:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    path = _save(Image.fromarray(_halves(16, 32)), tmp_path / "r.jpg", quality=95, exif=exif)
    pic = read_image(path)
    assert (pic.width, pic.height) == (16, 32)
    top, bottom = pic.rgb[4, 8].astype(int), pic.rgb[28, 8].astype(int)
    red, blue = (top, bottom) if red_on_top else (bottom, top)
    assert red[0] > 200 and red[2] < 60 and blue[2] > 200 and blue[0] < 60


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_exif_rotation_moves_alpha_with_colour(tmp_path: Path, fmt: str) -> None:
    rgb = _photo(6, 10)
    alpha = np.zeros((6, 10), np.uint8)
    alpha[:, :3] = 255  # opaque left edge only
    alpha[:, 3:] = 40
    img = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    path = _save(img, tmp_path / f"r.{fmt.lower()}", fmt, exif=exif, lossless=True)
    with Image.open(path) as probe:
        if probe.getexif().get(ORIENTATION) != 6:
            pytest.skip(f"this Pillow writes no EXIF into {fmt}")
    pic = read_image(path)
    upright = np.asarray(img.transpose(Image.Transpose.ROTATE_270))
    assert (pic.width, pic.height) == (6, 10) and pic.alpha is not None
    assert np.array_equal(pic.alpha, upright[..., 3])
    assert np.array_equal(pic.alpha[:3], np.full((3, 6), 255))  # left edge went to the top
    assert np.array_equal(pic.rgb, upright[..., :3])


@pytest.mark.parametrize(
    ("fmt", "suffix", "kw"),
    [("WEBP", "webp", {"lossless": True}), ("BMP", "bmp", {}), ("TIFF", "tif", {})],
)
def test_other_formats_read_exactly(tmp_path: Path, fmt: str, suffix: str, kw: dict) -> None:
    rgb = _photo(13, 11)
    pic = read_image(_save(Image.fromarray(rgb), tmp_path / f"x.{suffix}", fmt, **kw))
    assert pic.source_format == fmt and pic.mode == "RGB"
    assert np.array_equal(pic.rgb, rgb)


def test_lossy_jpeg_and_webp_are_close(tmp_path: Path) -> None:
    rgb = _photo(32, 32)
    for fmt in ("JPEG", "WEBP"):
        pic = read_image(_save(Image.fromarray(rgb), tmp_path / "x", fmt, quality=95))
        assert pic.source_format == fmt and pic.rgb.shape == rgb.shape
        assert np.abs(pic.rgb.astype(int) - rgb).mean() < 8


# --- refusing bad input ----------------------------------------------------------------------


def test_decompression_bomb_is_refused_with_the_limit(tmp_path: Path) -> None:
    path = _save(Image.fromarray(_photo(20, 30)), tmp_path / "big.png")
    with pytest.raises(DecompressionBombError, match=r"600 pixels.*limit of 500.*--max-pixels"):
        read_image(path, max_pixels=500)
    assert read_image(path, max_pixels=600).width == 30


def test_bomb_header_is_refused_before_decoding() -> None:
    # 100000 x 100000 pixels declared, a few bytes of data: only the header may be read
    bomb = _raw_png(100_000, 100_000, 8, 0, b"\x00" * 64)
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(DecompressionBombError, match="10000000000 pixels") as err:
        read_image(bomb, name="bomb.png", max_pixels=1_000_000)
    assert str(err.value).startswith("bomb.png: ") and "\n" not in str(err.value)
    assert Image.MAX_IMAGE_PIXELS == before  # Pillow's global limit is restored


def test_our_limit_replaces_pillows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)
    pic = read_image(_bytes(Image.fromarray(_photo(8, 8))))
    assert pic.width == 8 and Image.MAX_IMAGE_PIXELS == 10


def _truncated_inputs() -> dict[str, bytes]:
    rgb = Image.fromarray(_photo(40, 40))
    png, jpeg = _bytes(rgb, "PNG"), _bytes(rgb, "JPEG")
    return {
        "empty": b"",
        "random": np.random.default_rng(2).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "text": b"hello, this is not an image\n",
        "png header only": png[:40],
        "png cut": png[: len(png) // 2],
        "jpeg header only": jpeg[:200],
        "jpeg cut": jpeg[: len(jpeg) // 2],
        "svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
    }


@pytest.mark.parametrize("case", list(_truncated_inputs()))
def test_broken_input_is_a_one_line_input_error(tmp_path: Path, case: str) -> None:
    path = tmp_path / "bad.png"
    path.write_bytes(_truncated_inputs()[case])
    with pytest.raises(InputError) as err:
        read_image(path)
    assert not isinstance(err.value, DecompressionBombError)
    msg = str(err.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg
    assert any(word in msg for word in ("empty", "not a recognised image", "truncated"))


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(InputError, match="folder"):
        read_image(tmp_path)


# --- tensors and padding ---------------------------------------------------------------------


def test_tensor_round_trip_is_exact() -> None:
    rgb = np.arange(256 * 3, dtype=np.int64).reshape(16, 16, 3) % 256
    rgb = rgb.astype(np.uint8)
    x = to_tensor(rgb)
    assert x.shape == (1, 3, 16, 16) and x.dtype == torch.float32
    assert x.min().item() == -1.0 and x.max().item() == 1.0
    assert np.array_equal(from_tensor(x), rgb)
    assert np.array_equal(from_tensor(x[0]), rgb)
    # nearest rounding and clamping
    nudged = x + (torch.rand_like(x) - 0.5) * (0.9 / 127.5)
    assert np.array_equal(from_tensor(nudged), rgb)
    assert from_tensor(torch.full((3, 1, 2), 5.0)).tolist() == [[[255] * 3] * 2]
    assert from_tensor(torch.full((3, 1, 2), -5.0)).max() == 0


def _mirror_index(i: int, n: int) -> int:
    """Reference for reflect padding extended forever: a period of 2(n - 1) samples."""
    if n == 1:
        return 0
    j = i % (2 * n - 2)
    return j if j < n else 2 * n - 2 - j


@pytest.mark.parametrize("mode", ["replicate", "reflect"])
def test_pad_to_multiple_values_and_crop_back(mode: str) -> None:
    for h in range(1, 18):
        for w in range(1, 18):
            x = torch.arange(2 * 3 * h * w, dtype=torch.float32).reshape(2, 3, h, w)
            padded, (ph, pw) = pad_to_multiple(x, 8, mode)
            hh, ww = -(-h // 8) * 8, -(-w // 8) * 8
            assert padded.shape == (2, 3, hh, ww) and (ph, pw) == (hh - h, ww - w)
            if mode == "replicate":
                rows = [min(i, h - 1) for i in range(hh)]
                cols = [min(j, w - 1) for j in range(ww)]
            else:
                rows = [_mirror_index(i, h) for i in range(hh)]
                cols = [_mirror_index(j, w) for j in range(ww)]
            expect = x[:, :, rows][:, :, :, cols]
            assert torch.equal(padded, expect), (mode, h, w)
            assert torch.equal(crop(padded, h, w), x)


def test_pad_unbatched_and_noop() -> None:
    x = torch.rand(3, 16, 24)
    same, pads = pad_to_multiple(x, 8, "reflect")
    assert same is x and pads == (0, 0)
    padded, pads = pad_to_multiple(torch.rand(3, 5, 3), 4, "reflect")
    assert padded.shape == (3, 8, 4) and pads == (3, 1)
    with pytest.raises(ValueError):
        pad_to_multiple(x, 8, "zeros")


# --- writing ---------------------------------------------------------------------------------


def test_encode_image_bytes_keeps_or_flattens_alpha() -> None:
    rgba = np.dstack([_photo(32, 32), np.full((32, 32), 255, np.uint8)])
    rgba[:16, :16] = (0, 0, 0, 0)  # a fully transparent black JPEG macroblock
    img = Image.fromarray(rgba, "RGBA")
    for fmt in ("png", "webp", "tiff"):
        back = Image.open(io.BytesIO(encode_image_bytes(img, fmt, quality=100)))
        assert back.mode == "RGBA" and back.getpixel((0, 0))[3] == 0
    png = Image.open(io.BytesIO(encode_image_bytes(img, "png")))
    assert np.array_equal(np.asarray(png), rgba)
    for fmt in ("jpeg", "bmp"):
        back = Image.open(io.BytesIO(encode_image_bytes(img, fmt)))
        assert back.mode == "RGB" and min(back.getpixel((5, 5))) > 240  # flattened onto white
    la = Image.fromarray(np.dstack([_photo(4, 4)[..., 0], np.full((4, 4), 9, np.uint8)]), "LA")
    assert Image.open(io.BytesIO(encode_image_bytes(la, "bmp"))).mode == "L"
    assert Image.open(io.BytesIO(encode_image_bytes(la, "jpeg"))).mode == "L"
    with pytest.raises(OutputError, match="unsupported output format"):
        encode_image_bytes(img, "xcf")


def test_picture_to_pil_fills_missing_alpha() -> None:
    pic = Picture(_photo(3, 4), None, "RGBA", "PNG", 8)
    assert picture_to_pil(pic).getchannel("A").getextrema() == (255, 255)


def test_format_from_path() -> None:
    assert format_from_path("a/b.PNG") == "png"
    assert format_from_path(Path("x.jpg")) == "jpeg"
    assert format_from_path("x.tif") == "tiff"
    assert format_from_path("x.webp") == "webp" and format_from_path("x.bmp") == "bmp"
    assert format_from_path("x.gq") is None and format_from_path("noext") is None


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_atomic_write_creates_refuses_and_overwrites(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "er" / "out.gq"
    atomic_write_bytes(target, b"one")
    assert target.read_bytes() == b"one"
    with pytest.raises(OutputError, match=r"exists \(use --overwrite\)"):
        atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"one"
    atomic_write_bytes(target, b"two", overwrite=True)
    assert target.read_bytes() == b"two" and _leftovers(target.parent) == []
    with pytest.raises(OutputError, match="folder"):
        atomic_write_bytes(tmp_path, b"x", overwrite=True)


def test_atomic_write_keeps_umask_permissions_when_the_writer_replaces_the_file(
    tmp_path: Path,
) -> None:
    """safetensors' save_file swaps in a 0600 file of its own; a model file written by gqtok
    gets the umask's permissions like any other output."""
    import torch
    from safetensors.torch import save_file

    from gqtok.io.files import atomic_write

    old = os.umask(0o022)
    try:
        target = tmp_path / "m.safetensors"
        atomic_write(target, lambda tmp: save_file({"a": torch.zeros(2)}, str(tmp)))
    finally:
        os.umask(old)
    assert target.stat().st_mode & 0o777 == 0o644


def test_atomic_write_failure_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "out.png"
    target.write_bytes(b"old")

    def boom(src: object, dst: object) -> None:
        assert Path(str(src)).name.startswith(".") and str(src).endswith(".tmp")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OutputError, match="No space left"):
        atomic_write_bytes(target, b"new", overwrite=True)
    assert target.read_bytes() == b"old" and _leftovers(tmp_path) == []


def test_same_file_guard(tmp_path: Path) -> None:
    src = tmp_path / "in.png"
    src.write_bytes(b"x")
    with pytest.raises(OutputError, match="would overwrite the input"):
        same_file_guard(src, tmp_path / "." / "in.png")
    link = tmp_path / "link.png"
    link.symlink_to(src)
    with pytest.raises(OutputError, match="would overwrite the input"):
        same_file_guard(src, link)
    same_file_guard(src, tmp_path / "other.png")  # not there yet: fine
    (tmp_path / "other.png").write_bytes(b"x")
    same_file_guard(src, tmp_path / "other.png")  # same content, different file: fine


def test_read_input_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "a.gq"
    f.write_bytes(b"\x00data")
    assert read_input_bytes(str(f)) == b"\x00data"
    with pytest.raises(InputError, match="no such file"):
        read_input_bytes(str(tmp_path / "missing.gq"))
    with pytest.raises(InputError, match="folder"):
        read_input_bytes(str(tmp_path))
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"\xffpiped")))
    assert read_input_bytes("-") == b"\xffpiped"
