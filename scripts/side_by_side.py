"""docs/side_by_side.png: original | gqtok (each decoder) | JPEG | WebP | AVIF at (at most)
gqtok's bpp, one crop.

The whole photo is coded (rates are whole-file rates, header included); a crop of each result
is shown at 1:1 so the artefacts stay visible. The gqtok panels are the same .gq file decoded by
each decoder the model has (fidelity, perceptual), and the fidelity one with film grain
(`--grain S`, 0 = no such panel). Usage:
python scripts/side_by_side.py data/prepared/val/kpa__jesper.jpg --crop 300,150,256
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from gqtok import load_model
from gqtok.codec import decode_bytes, encode_pictures
from gqtok.eval.metrics.fidelity import psnr
from gqtok.io.images import read_image

FORMATS = {"JPEG": {"optimize": True}, "WEBP": {"method": 6}, "AVIF": {"max_threads": 1}}


def classical(rgb: np.ndarray, fmt: str, max_bpp: float) -> tuple[np.ndarray, float, int]:
    """Highest quality whose file stays at or below max_bpp (the fairest JPEG/WebP match)."""
    best = None
    for q in range(1, 101):
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, fmt, quality=q, **FORMATS[fmt])
        bpp = buf.tell() * 8 / (rgb.shape[0] * rgb.shape[1])
        if bpp > max_bpp:
            break
        best = (np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")), bpp, q)
    if best is None:
        raise SystemExit(f"{fmt} cannot go as low as {max_bpp:.3f} bpp on this image")
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("image", type=Path)
    ap.add_argument("--crop", default="0,0,256", help="x,y,size of the shown square")
    ap.add_argument("-o", "--output", type=Path, default=Path("docs/side_by_side.png"))
    ap.add_argument("--grain", type=float, default=2.0, help="film grain panel (0: none)")
    args = ap.parse_args()
    x0, y0, size = (int(v) for v in args.crop.split(","))
    model = load_model()
    pic = read_image(str(args.image))
    rgb = pic.rgb
    enc = encode_pictures(model, [pic])[0]
    panels = [("original", rgb)]
    shown = [(name, None) for name in model.decoders]
    if args.grain:
        shown.append(("fidelity", args.grain))
    for name, grain in shown:
        out, _ = decode_bytes(enc.data, model, decoder=name, grain=grain)
        gq = np.asarray(out.convert("RGB"))
        title = f"gqtok {name}" + (f" +grain {grain:g}" if grain else "")
        panels.append((f"{title}\n{enc.bpp:.3f} bpp, {psnr(rgb, gq):.2f} dB", gq))
    for fmt in FORMATS:
        img, bpp, q = classical(rgb, fmt, enc.bpp)
        panels.append((f"{fmt} q{q}\n{bpp:.3f} bpp, {psnr(rgb, img):.2f} dB", img))
    label_h = 30
    sheet = Image.new("RGB", (len(panels) * (size + 4) - 4, size + label_h), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (label, arr) in enumerate(panels):
        crop = Image.fromarray(arr[y0 : y0 + size, x0 : x0 + size])
        sheet.paste(crop, (i * (size + 4), label_h))
        draw.text((i * (size + 4) + 2, 3), label, fill="black")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.output, optimize=True)
    print(f"wrote {args.output}: " + " | ".join(label.replace("\n", " ") for label, _ in panels))


if __name__ == "__main__":
    main()
