"""Encode / decode wall time and peak memory for a 768x512 photo with the default model
(`--decoder perceptual` times the other decoder of the same tokens).

Each measurement runs in a fresh subprocess so that peak RSS (ru_maxrss) belongs to one step;
times are the best of --repeat runs after a warm-up (shared machines are noisy: the best run is
the one least disturbed by other tenants).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, resource, sys, time, torch
torch.set_num_threads(int(sys.argv[3]))
from gqtok import load_model
from gqtok.codec import encode_file, decode_bytes
from gqtok.io.images import read_image
m = load_model(sys.argv[4])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
pic = read_image(sys.argv[2])
from gqtok.codec import encode_pictures
encode_pictures(m, [pic])  # warm-up (codebook build, allocator)
dt, extra = float("inf"), {}
data = encode_pictures(m, [pic])[0].data
for _ in range(int(sys.argv[5])):
    t = time.perf_counter()
    if sys.argv[1] == "encode":
        enc = encode_pictures(m, [pic])[0]
    else:
        decode_bytes(data, m, decoder=sys.argv[6])
    if time.perf_counter() - t < dt:
        dt = time.perf_counter() - t
        if sys.argv[1] == "encode":
            extra = {"bpp": enc.bpp, "bytes": len(enc.data), "timings": enc.timings}
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": dt, "peak_rss_mb": peak / 1024, "model_rss_mb": base / 1024, **extra}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--image", default=str(ROOT / "examples" / "sample.jpg"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="default")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs; the best is shown")
    ap.add_argument("--decoder", default="fidelity", help="decoder timed by decode")
    args = ap.parse_args()
    for step in ("encode", "decode"):
        out = subprocess.run(
            [sys.executable, "-c", CHILD, step, args.image, str(args.threads), args.model,
             str(args.repeat), args.decoder],
            capture_output=True,
            text=True,
            check=True,
        )
        r = json.loads(out.stdout)
        line = f"{step:7s} {r['seconds'] * 1000:7.0f} ms   peak RSS {r['peak_rss_mb']:6.0f} MB"
        if step == "encode":
            t = r["timings"]
            line += (
                f"   (network {t['network'] * 1000:.0f} ms, GQ search {t['search'] * 1000:.0f} ms,"
                f" entropy {t['entropy'] * 1000:.0f} ms; {r['bpp']:.4f} bpp)"
            )
        print(line)
    print(f"image {args.image}, {args.threads} threads, model {args.model}, "
          f"decoder {args.decoder}, best of {args.repeat}")


if __name__ == "__main__":
    main()
