"""`make demo`: encode and decode the bundled sample photo through the real CLI.

Prints the file size, bits per pixel, PSNR against the original and the wall time of each step.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "examples" / "sample.jpg"
OUT = ROOT / "build" / "demo"


def run(*args: str) -> float:
    cmd = [sys.executable, "-m", "gqtok", *args]
    print("$ gqtok " + " ".join(args))
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    gq, png = OUT / "sample.gq", OUT / "sample.png"
    t_enc = run("encode", str(SAMPLE), "-o", str(gq), "--overwrite")
    t_dec = run("decode", str(gq), "-o", str(png), "--overwrite")
    run("info", str(gq))
    a = np.asarray(Image.open(SAMPLE).convert("RGB"), dtype=np.float64)
    b = np.asarray(Image.open(png).convert("RGB"), dtype=np.float64)
    mse = float(((a - b) ** 2).mean())
    psnr = 10 * np.log10(255.0**2 / mse) if mse > 0 else float("inf")
    size = gq.stat().st_size
    w, h = Image.open(SAMPLE).size
    print()
    print(f"sample     {SAMPLE.relative_to(ROOT)} ({w}x{h})")
    print(f"file       {gq.relative_to(ROOT)}: {size} bytes, {size * 8 / (w * h):.4f} bpp")
    print(f"PSNR       {psnr:.2f} dB (decoded {png.relative_to(ROOT)})")
    print(f"time       encode {t_enc:.2f} s, decode {t_dec:.2f} s (whole command, incl. start-up)")


if __name__ == "__main__":
    main()
