"""Peak memory and time of a very large image (default 8000x6000) through encode and decode.

The image is photo content tiled over a smooth synthetic background (so it is not trivially
compressible); each step runs in a fresh subprocess and reports its peak RSS (/proc VmHWM),
to be read against the memory budget (--budget, default gqtok's 4 GB).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, sys, time
from gqtok.io.pipeline import passive_openmp
passive_openmp()
import numpy as np, torch
torch.set_num_threads(int(sys.argv[4]))
from gqtok import load_model
from gqtok.codec import decode_bytes, encode_pictures
from gqtok.io.images import read_image
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
step, src, gq, threads, budget = sys.argv[1:6]
model = load_model()
if step == "encode":
    pic = read_image(src, max_pixels=10**9)
    t = time.perf_counter()
    enc = encode_pictures(model, [pic], max_memory=budget)[0]
    dt = time.perf_counter() - t
    open(gq, "wb").write(enc.data)
    out = {"seconds": dt, "bpp": enc.bpp, "bytes": len(enc.data)}
else:
    data = open(gq, "rb").read()
    t = time.perf_counter()
    img, _ = decode_bytes(data, model, max_memory=budget)
    dt = time.perf_counter() - t
    peak = hwm()  # before the PSNR check below, which holds two float64 copies of the image
    a = np.asarray(read_image(src, max_pixels=10**9).rgb, dtype=np.float64)
    b = np.asarray(img.convert("RGB"), dtype=np.float64)
    out = {"seconds": dt, "psnr": float(10 * np.log10(255**2 / ((a - b) ** 2).mean()))}
out["peak_rss_mb"] = hwm() if step == "encode" else peak
print(json.dumps(out))
"""


def make_image(width: int, height: int, path: Path) -> None:
    photos = [ROOT / "examples" / "sample.jpg", *sorted((ROOT / "tests" / "data").glob("photo_*"))]
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    canvas = np.stack(
        [
            127 + 100 * np.sin(xx / 311.0),
            127 + 100 * np.cos(yy / 197.0),
            127 + 60 * np.sin((xx + yy) / 523.0),
        ],
        axis=2,
    )
    rng = np.random.default_rng(0)
    tiles = [np.asarray(Image.open(p).convert("RGB")) for p in photos]
    for y in range(0, height, 500):
        for x in range(0, width, 700):
            if rng.random() < 0.6:
                t = tiles[int(rng.integers(len(tiles)))]
                h, w = min(t.shape[0], height - y), min(t.shape[1], width - x)
                canvas[y : y + h, x : x + w] = t[:h, :w]
    Image.fromarray(canvas.clip(0, 255).astype(np.uint8)).save(path, quality=92)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", default="8000x6000")
    ap.add_argument("--budget", default="4GB")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        src, gq = Path(tmp) / "large.jpg", Path(tmp) / "large.gq"
        make_image(width, height, src)
        print(
            f"image {width}x{height} ({width * height / 1e6:.0f} Mpx), budget {args.budget},"
            f" {args.threads} threads"
        )
        for step in ("encode", "decode"):
            r = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    CHILD,
                    step,
                    str(src),
                    str(gq),
                    str(args.threads),
                    args.budget,
                ],
                capture_output=True,
                text=True,
                cwd=ROOT,
            )
            if r.returncode:
                sys.exit(f"{step} failed: {r.stderr.strip().splitlines()[-1]}")
            rec = json.loads(r.stdout.strip().splitlines()[-1])
            extra = ", ".join(
                f"{k} {v:.4g}" for k, v in rec.items() if k not in ("seconds", "peak_rss_mb")
            )
            print(
                f"{step:7s} {rec['seconds']:7.1f} s   peak RSS {rec['peak_rss_mb']:6.0f} MB"
                f"   {extra}"
            )


if __name__ == "__main__":
    main()
