"""What a per-image colour correction adds to gqtok's PSNR (README, "What was tried on the
CPU"; format versions 5 and 6): for each photo and quality, the real .gq file, its pixels
without a colour correction (the version 4 decoding of its tokens), the affine map of those
pixels (3 x 3 gains and 3 offsets, least squares against the original, quantised as a file
stores them: gains to 1/4096, offsets to 1/16 of a level, 24 bytes), the map with the
restoration filter of radius 2 (gqtok.io.color.fit_color, kept whatever its gain: 241 bytes),
what the file itself gives (above quality 75 the encoder's fit: version 6, or 5 where the
filter does not pay for its bytes), and, as a bound on what a local correction could add, a
per-block offset (32 px blocks, 1/4 level, not costed).
Usage: python bench/color_fit.py [FOLDER] [--quality 25,75,90,100] [--every N] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

GAIN_STEP, OFFSET_STEP, BLOCK_STEP, BLOCK = 4096, 16, 4, 32


def affine_corrected(original: np.ndarray, decoded: np.ndarray) -> np.ndarray:
    """(H, W, 3) decoded pixels through the least-squares affine map to the original, with
    the map quantised as a file would carry it, rounded and clipped to 8 bits."""
    x, d = original.reshape(-1, 3), decoded.reshape(-1, 3)
    a = np.c_[d, np.ones(len(d))]
    m, *_ = np.linalg.lstsq(a, x, rcond=None)
    m[:3] = np.round(m[:3] * GAIN_STEP) / GAIN_STEP
    m[3] = np.round(m[3] * OFFSET_STEP) / OFFSET_STEP
    return np.clip(np.rint(a @ m), 0, 255).reshape(decoded.shape)


def block_corrected(original: np.ndarray, decoded: np.ndarray) -> np.ndarray:
    """(H, W, 3) decoded pixels with each block's mean error per channel added back (an
    oracle: the offsets are not costed)."""
    out = decoded.copy()
    for top in range(0, decoded.shape[0], BLOCK):
        for left in range(0, decoded.shape[1], BLOCK):
            sl = np.s_[top : top + BLOCK, left : left + BLOCK]
            err = (original[sl] - decoded[sl]).mean(axis=(0, 1))
            out[sl] += np.round(err * BLOCK_STEP) / BLOCK_STEP
    return np.clip(np.rint(out), 0, 255)


def main(argv: list[str] | None = None) -> dict:
    import gqtok
    from gqtok.codec import decode_bytes, decode_to_array, encode_pictures, unpack_tokens
    from gqtok.eval.evaluate import collect_images
    from gqtok.eval.metrics.fidelity import psnr
    from gqtok.io.color import apply_color, fit_color
    from gqtok.io.images import read_image

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", nargs="?", default="data/prepared/val")
    ap.add_argument("--quality", default="25,75,90,100")
    ap.add_argument("--every", type=int, default=1, help="every Nth photo (quick runs)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    qualities = [float(q) for q in args.quality.split(",")]
    model = gqtok.load_model()
    rows = []
    for path in collect_images([args.folder])[:: args.every]:
        pic = read_image(path)
        x = pic.rgb.astype(np.float64)
        for q in qualities:
            enc = encode_pictures(model, [pic], quality=q)[0]
            image, _ = decode_bytes(enc.data, model)
            _, tokens, _ = unpack_tokens(model, enc.data)
            tokens.color = ()  # the same tokens decoded as version 4
            d8 = decode_to_array(model, tokens)
            d = d8.astype(np.float64)
            base = psnr(x, d)
            filtered = apply_color(d8, fit_color(pic.rgb, d8, radius=2))
            rows.append({
                "image": str(path), "quality": q, "bpp": len(enc.data) * 8 / d[..., 0].size,
                "psnr": base, "affine_gain": psnr(x, affine_corrected(x, d)) - base,
                "file_gain": psnr(x, np.asarray(image.convert("RGB"))) - base,
                "block_gain": psnr(x, block_corrected(x, d)) - base,
                "filter_gain": psnr(x, filtered) - base,
                "version": int(enc.header.file_version),
            })  # fmt: skip
        print(path.name, " ".join(f"Q{r['quality']:g} +{r['affine_gain']:.3f}"
                                  f" +{r['filter_gain']:.3f} file +{r['file_gain']:.3f}"
                                  for r in rows[-len(qualities):]), flush=True)  # fmt: skip
    summary = []
    for q in qualities:
        at = [r for r in rows if r["quality"] == q]
        gains = [r["affine_gain"] for r in at]
        summary.append({
            "quality": q, "photos": len(at), "bpp": float(np.mean([r["bpp"] for r in at])),
            "psnr": float(np.mean([r["psnr"] for r in at])), "affine_gain": float(np.mean(gains)),
            "affine_min": float(min(gains)), "affine_max": float(max(gains)),
            "block_gain": float(np.mean([r["block_gain"] for r in at])),
            "file_gain": float(np.mean([r["file_gain"] for r in at])),
            "filter_gain": float(np.mean([r["filter_gain"] for r in at])),
            "filter_min": float(min(r["filter_gain"] for r in at)),
            "filter_max": float(max(r["filter_gain"] for r in at)),
            "version_6": sum(r["version"] == 6 for r in at),
        })  # fmt: skip
    print("| quality | photos | bpp | PSNR, v4 | + affine (min, max) | + 32 px block offsets"
          " | + affine and filter (min, max) | the file's gain (version 6 files) |")
    print("|---|---|---|---|---|---|---|---|")
    for s in summary:
        print(f"| {s['quality']:g} | {s['photos']} | {s['bpp']:.4f} | {s['psnr']:.2f} |"
              f" +{s['affine_gain']:.3f} ({s['affine_min']:+.3f}, {s['affine_max']:+.3f}) |"
              f" +{s['block_gain']:.3f} |"
              f" +{s['filter_gain']:.3f} ({s['filter_min']:+.3f}, {s['filter_max']:+.3f}) |"
              f" {s['file_gain']:+.3f} ({s['version_6']}) |")  # fmt: skip
    report = {"rows": rows, "summary": summary}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
