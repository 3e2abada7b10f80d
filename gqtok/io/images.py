"""Reading images into a uniform 8-bit RGB(+alpha) form and writing them back out.

Every input, whatever its mode, bit depth or orientation, becomes the same (H, W, 3) uint8
array so the network sees one kind of data; the original mode is remembered so grayscale and
transparency survive a round trip. Pillow failures never escape as tracebacks: they become
one-line `InputError`s that the CLI can print and map to an exit code.
"""

from __future__ import annotations

import io
import os
import re
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, features

from gqtok.errors import DecompressionBombError, InputError, OutputError, first_line
from gqtok.io.files import read_input_bytes

DEFAULT_MAX_PIXELS = 200_000_000

# Decoders we trust with untrusted files; Pillow's rarer plugins (EPS runs Ghostscript) are
# deliberately out of reach. MPO is what some cameras' JPEGs open as.
READ_FORMATS = ("PNG", "JPEG", "MPO", "WEBP", "BMP", "TIFF", "GIF")

_EXTENSIONS = {
    ".png": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".jpe": "jpeg",
    ".jfif": "jpeg",
    ".webp": "webp",
    ".bmp": "bmp",
    ".dib": "bmp",
    ".tif": "tiff",
    ".tiff": "tiff",
}
_NOT_AN_IMAGE = "not a recognised image (truncated, or not PNG/JPEG/WebP/BMP/TIFF/GIF)"

# Pillow's bomb limit is a module global; it is swapped for ours only while a read holds this.
_PILLOW_LIMIT_LOCK = threading.Lock()


@dataclass
class Picture:
    """A decoded image in the one layout the codec works on, plus what to restore on output."""

    rgb: np.ndarray  # (H, W, 3) uint8, EXIF orientation applied
    alpha: np.ndarray | None  # (H, W) uint8, None when absent or fully opaque
    mode: str  # "RGB", "L", "RGBA" or "LA": what picture_to_pil gives back
    source_format: str  # e.g. "PNG", "JPEG"
    bit_depth: int  # 8 or 16, of the source

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])


def _bomb(pixels: int | None, limit: int, name: str | None) -> DecompressionBombError:
    found = f"{pixels} pixels" if pixels else "too many pixels"
    return DecompressionBombError(
        f"image has {found}, over the limit of {limit} (raise it with --max-pixels)", name
    )


@contextmanager
def _pillow_limit(max_pixels: int) -> Iterator[None]:
    """Make Pillow enforce exactly our limit, also inside decoders (TIFF tiles, GIF frames).

    Pillow only warns between its limit and twice it, so the warning is made an error too.
    """
    with _PILLOW_LIMIT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _read_formats() -> list[str]:
    """Our formats that this Pillow build can decode (Image.open fails on unregistered ones)."""
    Image.init()
    return [f for f in READ_FORMATS if f in Image.OPEN]


def _open_source(
    source: str | os.PathLike[str] | bytes | BinaryIO, name: str | None
) -> tuple[BinaryIO, str | None]:
    """Turn any accepted source into a seekable stream, mapping OS errors to InputError."""
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        if not data:
            raise InputError("empty file", name)
        return io.BytesIO(data), name
    if isinstance(source, str | os.PathLike):
        name = name or os.fspath(source)
        data = read_input_bytes(source, name)
        if not data:
            raise InputError("empty file", name)
        return io.BytesIO(data), name
    return source, name


def _rawmode(im: Image.Image) -> str:
    """The packing of the stored samples: tells a 16-bit PNG apart once Pillow calls it RGB."""
    for tile in im.tile or ():
        args = tile.args
        if isinstance(args, tuple) and args and isinstance(args[0], str):
            args = args[0]
        if isinstance(args, str):
            return args
    return ""


def _sixteen_to_eight(values: np.ndarray) -> np.ndarray:
    """Scale 0..65535 to 0..255 with rounding, so 257*k maps back to exactly k."""
    v = np.clip(values.astype(np.int64), 0, 65535)
    return ((v * 255 + 32767) // 65535).astype(np.uint8)


def _gray_plane(im: Image.Image, bit_depth: int) -> np.ndarray:
    """8-bit plane of a single-channel image that Pillow cannot convert without clipping."""
    a = np.asarray(im)
    if im.mode == "F":
        a = a.astype(np.float64)
        scale = 255.0 if np.nanmax(a, initial=0.0) <= 1.0 else 1.0
        return np.clip(np.nan_to_num(a) * scale + 0.5, 0, 255).astype(np.uint8)
    if im.mode == "I" and bit_depth == 8 and int(a.max(initial=0)) <= 255:
        return np.clip(a, 0, 255).astype(np.uint8)
    return _sixteen_to_eight(a)


def _is_gray(a: np.ndarray) -> bool:
    return bool((a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all())


def _to_picture(im: Image.Image, fmt: str, rawmode: str) -> Picture:
    """Normalise any Pillow mode to RGB + optional alpha and the mode to restore."""
    bit_depth = 16 if ";16" in rawmode or im.mode.startswith("I;16") else 8
    if im.mode.startswith("I") or im.mode == "F":
        gray = _gray_plane(im, bit_depth)
        return Picture(np.repeat(gray[..., None], 3, axis=2), None, "L", fmt, bit_depth)
    from_palette = im.mode in ("P", "PA")
    if im.mode in ("1", "L"):
        im, mode = im.convert("L"), "L"
    elif im.mode in ("LA", "La") or rawmode.startswith("LA;16"):
        im, mode = im.convert("LA") if im.mode != "RGBA" else im, "LA"
    elif im.mode in ("RGBA", "RGBa", "PA") or (im.mode == "P" and im.has_transparency_data):
        im, mode = im.convert("RGBA"), "RGBA"
    else:  # RGB, RGBX, P, CMYK, YCbCr, LAB, HSV
        im, mode = im.convert("RGB"), "RGB"
    a = np.asarray(im)
    if a.ndim == 2:
        a = a[..., None]
    elif from_palette and _is_gray(a):  # a GIF/PNG with a gray palette is a gray image
        mode = "LA" if mode == "RGBA" else "L"
    if mode == "L":
        return Picture(np.repeat(a[..., :1], 3, axis=2), None, "L", fmt, bit_depth)
    if mode == "RGB":
        return Picture(np.array(a[..., :3]), None, "RGB", fmt, bit_depth)
    alpha = np.array(a[..., -1])
    rgb = np.repeat(a[..., :1], 3, axis=2) if mode == "LA" else np.array(a[..., :3])
    if bool((alpha == 255).all()):
        return Picture(rgb, None, mode[:-1], fmt, bit_depth)
    return Picture(rgb, alpha, mode, fmt, bit_depth)


def _upright(im: Image.Image) -> Image.Image:
    """Apply EXIF orientation to all channels at once; broken EXIF is ignored, not fatal."""
    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # metadata must never make a viewable image unreadable
        return im


def read_image(
    source: str | os.PathLike[str] | bytes | BinaryIO,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
) -> Picture:
    """Decode an image file, path, bytes or stream, refusing bombs before touching pixel data."""
    if max_pixels < 1:
        raise ValueError("max_pixels must be at least 1")
    stream, name = _open_source(source, name)
    try:
        with _pillow_limit(max_pixels):
            # not closed on purpose: closing frees the pixels; the stream is ours or the caller's
            im = Image.open(stream, formats=_read_formats())
            w, h = im.size
            if w * h > max_pixels:
                raise _bomb(w * h, max_pixels, name)
            fmt = im.format or "UNKNOWN"
            rawmode = _rawmode(im)
            try:
                im.load()
            except (Image.DecompressionBombError, Image.DecompressionBombWarning, MemoryError):
                raise
            except Exception as e:  # any decoder failure is bad input
                raise InputError(
                    f"corrupt or truncated {fmt} image ({first_line(e)})", name
                ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        found = re.search(r"\((\d+) pixels\)", str(e))
        raise _bomb(int(found.group(1)) if found else None, max_pixels, name) from None
    except Image.UnidentifiedImageError:
        raise InputError(_NOT_AN_IMAGE, name) from None
    except InputError:
        raise
    except MemoryError:
        raise InputError("not enough memory to decode this image", name) from None
    except Exception:  # Pillow raises many types on malformed headers
        raise InputError(_NOT_AN_IMAGE, name) from None
    return _to_picture(_upright(im), fmt, rawmode)


def picture_to_pil(p: Picture) -> Image.Image:
    """Rebuild a Pillow image in the mode the source had, so gray stays gray and alpha stays."""
    rgb = np.ascontiguousarray(p.rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must be (H, W, 3), got {rgb.shape}")
    img = Image.fromarray(rgb, mode="RGB")
    if p.mode in ("L", "LA"):
        img = img.convert("L")  # exact when R == G == B, luma otherwise
    if p.mode in ("RGBA", "LA"):
        alpha = p.alpha if p.alpha is not None else np.full(rgb.shape[:2], 255, np.uint8)
        if alpha.shape != rgb.shape[:2]:
            raise ValueError(f"alpha must be {rgb.shape[:2]}, got {alpha.shape}")
        img.putalpha(Image.fromarray(np.ascontiguousarray(alpha, dtype=np.uint8), mode="L"))
    elif p.mode not in ("RGB", "L"):
        raise ValueError(f"unknown picture mode {p.mode!r}")
    return img


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """Map uint8 (H, W, 3) to the network's (1, 3, H, W) float32 range [-1, 1]."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    t = torch.from_numpy(np.array(rgb, copy=True)).permute(2, 0, 1).unsqueeze(0)
    return t.to(torch.float32) / 127.5 - 1.0


def from_tensor(x: torch.Tensor) -> np.ndarray:
    """Inverse of to_tensor; rounds to nearest so uint8 -> tensor -> uint8 is exact."""
    if x.ndim == 4:
        if x.shape[0] != 1:
            raise ValueError(f"expected a batch of one, got {tuple(x.shape)}")
        x = x[0]
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"expected (3, H, W) or (1, 3, H, W), got {tuple(x.shape)}")
    y = ((x.detach().to("cpu", torch.float32) + 1.0) * 127.5).round().clamp(0, 255)
    return y.to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def _reflect_pad(x: torch.Tensor, amount: int, dim: int) -> torch.Tensor:
    """Mirror-pad the end of one axis; grows in steps because torch needs pad < size."""
    while amount > 0:
        size = x.shape[dim]
        if size == 1:  # a single sample mirrors onto itself
            return _edge_pad(x, amount, dim)
        step = min(amount, size - 1)
        pads = (0, step, 0, 0) if dim == -1 else (0, 0, 0, step)
        x = F.pad(x, pads, mode="reflect")
        amount -= step
    return x


def _edge_pad(x: torch.Tensor, amount: int, dim: int) -> torch.Tensor:
    pads = (0, amount, 0, 0) if dim == -1 else (0, 0, 0, amount)
    return F.pad(x, pads, mode="replicate")


def pad_to_multiple(
    x: torch.Tensor, multiple: int, mode: str = "replicate"
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad right/bottom up to the token grid; edge content avoids dark seams in the last row."""
    if multiple < 1:
        raise ValueError("multiple must be at least 1")
    if mode not in ("replicate", "reflect"):
        raise ValueError(f"pad mode must be 'replicate' or 'reflect', not {mode!r}")
    if x.ndim not in (3, 4):
        raise ValueError(f"expected (C, H, W) or (N, C, H, W), got {tuple(x.shape)}")
    pad_h = -x.shape[-2] % multiple
    pad_w = -x.shape[-1] % multiple
    if pad_h == 0 and pad_w == 0:
        return x, (0, 0)
    batched = x.ndim == 4
    y = x if batched else x.unsqueeze(0)
    pad = _reflect_pad if mode == "reflect" else _edge_pad
    if pad_w:
        y = pad(y, pad_w, -1)
    if pad_h:
        y = pad(y, pad_h, -2)
    return (y if batched else y[0]), (pad_h, pad_w)


def crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Undo pad_to_multiple."""
    if height > x.shape[-2] or width > x.shape[-1]:
        raise ValueError(f"cannot crop {tuple(x.shape[-2:])} to {(height, width)}")
    return x[..., :height, :width]


def _flatten(img: Image.Image, background: int = 255) -> Image.Image:
    """Composite onto white: formats without alpha would otherwise show hidden colours."""
    if img.mode == "P" or img.mode == "PA":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "RGBa", "LA", "La"):
        gray = img.mode.startswith("L")
        img = img.convert("LA" if gray else "RGBA")
        fill = background if gray else (background,) * 3  # a bare int only fills red
        base = Image.new(img.mode[:-1], img.size, fill)
        base.paste(img.convert(img.mode[:-1]), mask=img.getchannel("A"))
        return base
    return img


def encode_image_bytes(img: Image.Image, fmt: str, quality: int | None = None) -> bytes:
    """Serialise for output; JPEG and BMP get alpha flattened since they cannot store it."""
    key = fmt.lower().lstrip(".")
    key = {"jpg": "jpeg", "tif": "tiff"}.get(key, key)
    options: dict[str, object] = {}
    if key == "png":
        options["compress_level"] = 6
    elif key == "jpeg":
        img = _flatten(img)
        if img.mode not in ("L", "RGB", "CMYK"):
            img = img.convert("RGB")
        options["quality"] = quality if quality is not None else 95
    elif key == "webp":
        options["quality"] = quality if quality is not None else 90
        options["method"] = 4
    elif key == "bmp":
        img = _flatten(img)
        if img.mode not in ("1", "L", "P", "RGB"):
            img = img.convert("RGB")
    elif key == "tiff":
        if features.check("libtiff"):
            options["compression"] = "tiff_adobe_deflate"
    else:
        raise OutputError(f"unsupported output format {fmt!r} (png, jpeg, webp, bmp or tiff)")
    buf = io.BytesIO()
    try:
        img.save(buf, format=key.upper(), **options)
    except (OSError, ValueError, KeyError) as e:
        raise OutputError(f"cannot encode a {img.mode} image as {key}: {e}") from None
    return buf.getvalue()


def format_from_path(path: str | os.PathLike[str]) -> str | None:
    """Output format implied by the file extension, or None when it implies none."""
    return _EXTENSIONS.get(Path(path).suffix.lower())
