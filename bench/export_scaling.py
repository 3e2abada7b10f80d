"""Export scaling: ``gqtok export`` as one process against torchrun's ranks on one CPU machine.

Makes ``--count`` photos (default 40): random crops of data/prepared/val (or ``--photos``;
else the test photos and examples/sample.jpg) at 256 to 768 px on the long side, as JPEG.
Then exports them with the ImageNet-style protocol (--resize 256 --center-crop 256) twice,
each in a fresh process as a user would run it:

* one process with ``--threads P * T``;
* ``torchrun --standalone --nproc-per-node P`` with ``--threads T`` per rank (default P = 2,
  T = 1: the same cores, split between processes instead of torch threads);
* one process with ``--threads T``, the unit that the P processes multiply.

Prints images/s of the export itself (the ``seconds`` of the JSON summary: model loading and
torchrun's start are left out; rank 0's time includes waiting for the slowest rank) and of the
whole command, and checks that both runs wrote the same shard files byte for byte.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = ["--resize", "256", "--center-crop", "256"]


def source_photos(folder: Path) -> list[Path]:
    val = sorted(folder.glob("*.jpg"))
    if len(val) >= 8:
        return val
    return sorted((ROOT / "tests" / "data").glob("photo_*")) + [ROOT / "examples" / "sample.jpg"]


def make_photos(folder: Path, count: int, seed: int, photos: Path) -> None:
    """Random crops, long side 256..768 px: every image is resized and cropped to 256 x 256
    by the protocol, so each costs the network the same and the ranks get equal work."""
    rng = np.random.default_rng(seed)
    sources = [Image.open(p).convert("RGB") for p in source_photos(photos)]
    for i in range(count):
        src = sources[i % len(sources)]
        cw, ch = (int(s * rng.uniform(0.6, 1.0)) for s in src.size)
        x0 = int(rng.integers(0, src.width - cw + 1))
        y0 = int(rng.integers(0, src.height - ch + 1))
        crop = src.crop((x0, y0, x0 + cw, y0 + ch))
        scale = int(rng.integers(256, 769)) / max(crop.size)
        size = (max(256, round(cw * scale)), max(256, round(ch * scale)))
        crop.resize(size, Image.BICUBIC).save(folder / f"img_{i:04d}.jpg", quality=90)


def run(command: list[str]) -> tuple[dict, float]:
    """The JSON summary of one export command (rank 0's under torchrun) and its wall time."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = str(ROOT)
    t0 = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1]), wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=40, help="photos to make (default 40)")
    ap.add_argument("--procs", type=int, default=2, help="torchrun processes (default 2)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per rank (default 1)")
    ap.add_argument("--shard-size", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--photos", type=Path, default=ROOT / "data" / "prepared" / "val",
                    help="JPEG photos to crop (default data/prepared/val)")  # fmt: skip
    ap.add_argument("--json", help="also write the numbers to this JSON file")
    args = ap.parse_args()
    bindir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory(prefix="gqtok-export-scaling-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        make_photos(src, args.count, args.seed, args.photos)
        common = [str(src), *PROTOCOL, "--shard-size", str(args.shard_size), "--json", "-q"]
        one_out, many_out = Path(tmp) / "one", Path(tmp) / "many"
        one, one_wall = run([
            sys.executable, "-m", "gqtok", "export", *common, "-o", str(one_out),
            "--threads", str(args.procs * args.threads),
        ])  # fmt: skip
        many, many_wall = run([
            str(bindir / "torchrun"), "--standalone", "--nproc-per-node", str(args.procs),
            "-m", "gqtok", "export", *common, "-o", str(many_out), "--threads", str(args.threads),
        ])  # fmt: skip
        unit, unit_wall = run([
            sys.executable, "-m", "gqtok", "export", *common, "-o", str(Path(tmp) / "unit"),
            "--threads", str(args.threads),
        ])  # fmt: skip
        shards = sorted(p.name for p in one_out.glob("shard-*"))
        same = shards == sorted(p.name for p in many_out.glob("shard-*")) and all(
            (one_out / n).read_bytes() == (many_out / n).read_bytes() for n in shards
        )
    n = args.count
    rows = {
        f"1 process x {args.procs * args.threads} threads": (one, one_wall),
        f"{args.procs} processes x {args.threads} thread(s) (torchrun)": (many, many_wall),
        f"1 process x {args.threads} thread(s)": (unit, unit_wall),
    }
    print(f"{n} photos -> 256x256, shard size {args.shard_size}, {os.cpu_count()} CPUs")
    result = {"count": n, "same_shards": same, "runs": {}}
    for name, (summary, wall) in rows.items():
        export_rate, wall_rate = n / summary["seconds"], n / wall
        print(f"  {name:<38} export {export_rate:6.2f} img/s ({summary['seconds']:.1f} s)"
              f"   whole command {wall_rate:6.2f} img/s ({wall:.1f} s)")  # fmt: skip
        result["runs"][name] = {"export_s": summary["seconds"], "wall_s": round(wall, 3),
                                "images_per_s": round(export_rate, 3)}  # fmt: skip
    speedup, scaling = one["seconds"] / many["seconds"], unit["seconds"] / many["seconds"]
    print(f"  {args.procs} processes against 1 process x {args.procs * args.threads} threads:"
          f" {speedup:.2f}x, against 1 x {args.threads}: {scaling:.2f}x;"
          f" shards byte-identical: {same}")  # fmt: skip
    if args.json:
        numbers = {**result, "speedup": speedup, "scaling": scaling}
        Path(args.json).write_text(json.dumps(numbers, indent=2) + "\n")
    if not same:
        sys.exit("the two exports differ")


if __name__ == "__main__":
    main()
