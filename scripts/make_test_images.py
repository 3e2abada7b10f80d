"""Make the small test photos in tests/data/ and the README demo photo examples/sample.jpg.

All come from licence-clean originals listed in scripts/photo_manifest.json:

* tests/data/photo_a.jpg  317x211, JPEG q90: scikit-image ``coffee.png`` (CC0, Rachel Michetti)
* tests/data/photo_b.png  150x97, PNG:       scikit-image ``chelsea.png`` (CC0, Stefan van der Walt)
* tests/data/photo_c.jpg  256x256, JPEG q90: scikit-image ``astronaut.png`` (public domain, NASA)
* examples/sample.jpg     768x512, JPEG q90: lomiri-wallpapers-16.04
  ``seeding_by_Clements_Engelhardt.jpg`` (CC0-1.0); fetch_data.py keeps it in the val split

Each is converted to sRGB RGB like fetch_data.py does, then centre-cropped to the target aspect
ratio and resized with Lanczos. The originals
are taken from data/raw/ (fetched with scripts/fetchdata's own code if missing) and checked
against the manifest's SHA-256, so the outputs are reproducible with the same Pillow.

Usage: .venv/bin/python scripts/make_test_images.py [--check]
    --check   only verify that the committed files match what this script would write
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fetchdata.common import MANIFEST, ROOT, sha256_file  # noqa: E402  (scripts/ is no package)
from fetchdata.download import Downloader  # noqa: E402
from fetchdata.extract import extract_photos  # noqa: E402
from fetchdata.manifest import load_manifest  # noqa: E402
from fetchdata.normalise import to_rgb, to_srgb  # noqa: E402

RAW = ROOT / "data" / "raw"

# (output, package, path inside the package, size, format, JPEG quality)
TARGETS = [
    ("tests/data/photo_a.jpg", "python3-skimage",
     "usr/lib/python3/dist-packages/skimage/data/coffee.png", (317, 211), "JPEG", 90),
    ("tests/data/photo_b.png", "python3-skimage",
     "usr/lib/python3/dist-packages/skimage/data/chelsea.png", (150, 97), "PNG", None),
    ("tests/data/photo_c.jpg", "python3-skimage",
     "usr/lib/python3/dist-packages/skimage/data/astronaut.png", (256, 256), "JPEG", 90),
    ("examples/sample.jpg", "lomiri-wallpapers-16.04",
     "usr/share/backgrounds/seeding_by_Clements_Engelhardt.jpg", (768, 512), "JPEG", 90),
]
MAX_TEST_BYTES = 150_000


def original(package: str, path: str) -> Path:
    """The original file under data/raw/, fetched and checked against the manifest."""
    pkgs = {p.package: p for p in load_manifest(MANIFEST)}
    pkg = pkgs[package]
    photo = next(ph for ph in pkg.photos if ph.path == path)
    dest = RAW / package / path
    if not dest.is_file():
        downloader = Downloader(ROOT / "data" / "downloads", allow_download=True)
        archive = downloader.get(pkg)
        missing = extract_photos(archive, {path: dest})
        if missing:
            raise SystemExit(f"{path} is not in {archive.name}")
    if photo.sha256 and sha256_file(dest) != photo.sha256:
        raise SystemExit(f"{dest}: checksum differs from scripts/photo_manifest.json")
    return dest


def center_crop_resize(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Crop the largest centred box with the target's aspect ratio, then resize (Lanczos)."""
    w, h = img.size
    tw, th = size
    if w * th > h * tw:  # too wide: trim the sides
        cw, ch = round(h * tw / th), h
    else:  # too tall: trim top and bottom
        cw, ch = w, round(w * th / tw)
    left, top = (w - cw) // 2, (h - ch) // 2
    box = (left, top, left + cw, top + ch)
    return img.resize(size, Image.Resampling.LANCZOS, box=box)


def render(package: str, path: str, size: tuple[int, int], fmt: str, quality: int | None) -> bytes:
    with Image.open(original(package, path)) as im:
        icc = im.info.get("icc_profile")
        img = to_srgb(to_rgb(ImageOps.exif_transpose(im)), icc)
    out = center_crop_resize(img, size)
    buf = io.BytesIO()
    if fmt == "JPEG":
        out.save(buf, format="JPEG", quality=quality)
    else:
        out.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="verify instead of writing")
    args = ap.parse_args(argv)
    bad = 0
    for rel, package, path, size, fmt, quality in TARGETS:
        data = render(package, path, size, fmt, quality)
        dest = ROOT / rel
        if rel.startswith("tests/") and len(data) > MAX_TEST_BYTES:
            print(f"{rel}: {len(data)} bytes is over the {MAX_TEST_BYTES} byte limit")
            bad += 1
        if args.check:
            same = dest.is_file() and dest.read_bytes() == data
            print(f"{rel}: {'ok' if same else 'DIFFERS'}")
            bad += not same
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        print(f"wrote {rel}: {size[0]}x{size[1]} {fmt}, {len(data) / 1000:.1f} KB")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
