"""One look for every photo: RGB, EXIF orientation applied, embedded ICC profile converted to
sRGB, long side at most --max-side (Lanczos, never upscaled), JPEG 4:4:4 at --quality."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .common import warn

try:
    from PIL import ImageCms
except ImportError:  # Pillow built without littlecms: ICC profiles are then ignored
    ImageCms = None

Image.MAX_IMAGE_PIXELS = 64_000_000  # the largest listed photo has ~20 Mpx

# clockwise degrees -> Pillow transpose (Pillow's ROTATE_* turn counter-clockwise)
ROTATIONS = {
    0: None,
    90: Image.Transpose.ROTATE_270,
    180: Image.Transpose.ROTATE_180,
    270: Image.Transpose.ROTATE_90,
}


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB from any mode: 16-bit and float gray rescaled, alpha composited onto white."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(img).astype(np.float64)
        peak = 65535.0 if arr.max() > 255 else 255.0
        arr = np.clip(np.rint(arr * (255.0 / peak)), 0, 255).astype(np.uint8)
        img = Image.fromarray(arr, mode="L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 if arr.max() <= 1.0 else 1.0
        img = Image.fromarray(np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8), mode="L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA"):
        # Photos have no meaningful alpha; composite onto white so transparent areas stay clean.
        base = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(base, img.convert("RGBA"))
    return img.convert("RGB") if img.mode != "RGB" else img


def to_srgb(img: Image.Image, icc: bytes | None) -> Image.Image:
    """img converted from its embedded profile to sRGB (unchanged without a usable one)."""
    if not icc or ImageCms is None:
        return img
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        desc = (ImageCms.getProfileDescription(src) or "").lower()
        if "srgb" in desc:
            return img
        dst = ImageCms.createProfile("sRGB")
        out = ImageCms.profileToProfile(img, src, dst, outputMode="RGB")
        return out if out is not None else img
    except Exception as exc:  # a broken profile must not stop the pipeline
        warn(f"ignoring unusable ICC profile ({exc})")
        return img


def prepare_image(
    src: Path, max_side: int, quality: int, rotate: int = 0
) -> tuple[bytes, tuple[int, int], tuple[int, int]]:
    """Return (JPEG bytes, original size, prepared size); sizes are (width, height)."""
    with Image.open(src) as im:
        original_size = im.size
        icc = im.info.get("icc_profile")
        img = ImageOps.exif_transpose(im)
        img.load()
    img = to_srgb(to_rgb(img), icc)
    if ROTATIONS[rotate] is not None:
        img = img.transpose(ROTATIONS[rotate])
    w, h = img.size
    scale = max_side / max(w, h)
    if scale < 1.0:
        new = (max(1, round(w * scale)), max(1, round(h * scale)))
        img = img.resize(new, Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, subsampling=0, optimize=True)
    return buf.getvalue(), original_size, img.size
