"""Put what a GPU training session carries besides data/prepared into one folder (default
.gpu-carry/): the ST-LPIPS AlexNet weight file, laid out as the stlpips_pytorch package's.

Why: the device tool carries at most 64 MiB and the stlpips-pytorch wheel alone is 64 MB
(its VGG weights); the perceptual GAN stage needs only the 9.9 MB AlexNet file. With the
folder on PYTHONPATH (scripts/gpu_train_session.sh puts it there) gqtok.nets.stlpips finds the
file as the package's (a namespace package) and checks its sha256 when it loads it.
Usage: python scripts/gpu_carry.py [--out DIR]   (make gpu-carry)
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from gqtok.nets.stlpips import PACKAGE, weights_file


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(".gpu-carry"))
    args = ap.parse_args(argv)
    src = weights_file("alex")  # <package>/weights/<version>/<file>
    dst = args.out / PACKAGE / src.relative_to(src.parents[2])
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    print(f"wrote {dst} ({dst.stat().st_size} bytes)")
    return dst


if __name__ == "__main__":
    main()
