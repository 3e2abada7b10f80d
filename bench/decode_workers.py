"""`gqtok decode` of many files at several --workers: does entropy decoding on worker threads
overlap the decoder network, and do more threads help?

Encodes --files crops (256 to 768 px) of examples/sample.jpg once, then decodes the folder
with the CLI in this process (the model loaded by a warm-up run) at each worker count,
best of --repeat. Context decoding runs wavefront by wavefront in small numpy steps that hold
the GIL, so threads overlap it with the network (whose torch ops release the GIL) more than
they add decoders; this measures both effects on the machine at hand.

    python bench/decode_workers.py --device cuda --files 96 --workers 0,1,2,4 --json out.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from typer.testing import CliRunner  # noqa: E402

from gqtok.cli.app import app  # noqa: E402


def make_files(folder: Path, count: int, device: str) -> None:
    """``count`` random crops of the sample photo as PNG, encoded into folder/gq."""
    rng = np.random.default_rng(0)
    src = Image.open(ROOT / "examples" / "sample.jpg").convert("RGB")
    png = folder / "png"
    png.mkdir()
    for i in range(count):
        w, h = int(rng.integers(256, 769)), int(rng.integers(256, 513))
        x0, y0 = int(rng.integers(0, src.width - w + 1)), int(rng.integers(0, src.height - h + 1))
        src.crop((x0, y0, x0 + w, y0 + h)).save(png / f"{i:03d}.png")
    run(["encode", str(png), "-o", str(folder / "gq"), "-q", "--device", device])


def run(args: list[str]) -> float:
    t0 = time.perf_counter()
    r = CliRunner().invoke(app, args)
    if r.exit_code != 0:
        raise SystemExit(f"gqtok {' '.join(args)} failed: {r.output}")
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--files", type=int, default=48)
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="gqtok-decode-"))
    try:
        make_files(folder, args.files, args.device)
        base = ["decode", str(folder / "gq"), "-q", "--overwrite", "--device", args.device]
        run([*base, "-o", str(folder / "warm")])
        rows = []
        for w in [int(x) for x in args.workers.split(",")]:
            out = ["-o", str(folder / f"out{w}"), "--workers", str(w)]
            best = min(run([*base, *out]) for _ in range(args.repeat))
            rows.append({"workers": w, "seconds": best, "files_per_s": args.files / best})
            print(f"--workers {w}: {best:.2f} s, {args.files / best:.1f} files/s", flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    report = {"device": args.device, "files": args.files, "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
