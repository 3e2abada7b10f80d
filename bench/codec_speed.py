"""Encode / decode wall time and peak memory for a 768x512 photo with the default model
(`--decoder perceptual` times the other decoder of the same tokens; `--entropy static` the
version-1 coding), with the time of each stage: network, GQ search and entropy coding when
encoding; entropy decoding (container parse included) and the decoder network when decoding.

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
from gqtok.codec import decode_bytes, encode_pictures, unpack_tokens
from gqtok.codec.engine import decode_to_array
from gqtok.io.images import read_image
m = load_model(sys.argv[4])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
pic = read_image(sys.argv[2])
entropy = sys.argv[7]
data = encode_pictures(m, [pic], entropy=entropy)[0].data  # also a warm-up (codebook, allocator)
dec = m.with_decoder(sys.argv[6])
decode_bytes(data, dec)  # warm-up of the decoder
dt, extra = float("inf"), {}
for _ in range(int(sys.argv[5])):
    t = time.perf_counter()
    if sys.argv[1] == "encode":
        enc = encode_pictures(m, [pic], entropy=entropy)[0]
    else:
        _, tokens, _ = unpack_tokens(dec, data)
        t1 = time.perf_counter()
        decode_to_array(dec, tokens)
        t2 = time.perf_counter()
    if time.perf_counter() - t < dt:
        dt = time.perf_counter() - t
        if sys.argv[1] == "encode":
            extra = {"bpp": enc.bpp, "bytes": len(enc.data), "timings": enc.timings}
        else:
            extra = {"timings": {"entropy": t1 - t, "network": t2 - t1}}
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
    ap.add_argument("--entropy", default="context", choices=("context", "static"))
    args = ap.parse_args()
    for step in ("encode", "decode"):
        out = subprocess.run(
            [sys.executable, "-c", CHILD, step, args.image, str(args.threads), args.model,
             str(args.repeat), args.decoder, args.entropy],
            capture_output=True,
            text=True,
            check=True,
        )
        r = json.loads(out.stdout)
        line = f"{step:7s} {r['seconds'] * 1000:7.0f} ms   peak RSS {r['peak_rss_mb']:6.0f} MB"
        t = r["timings"]
        if step == "encode":
            line += (
                f"   (network {t['network'] * 1000:.0f} ms, GQ search {t['search'] * 1000:.0f} ms,"
                f" entropy {t['entropy'] * 1000:.0f} ms; {r['bpp']:.4f} bpp)"
            )
        else:
            line += (
                f"   (entropy {t['entropy'] * 1000:.0f} ms, network {t['network'] * 1000:.0f} ms)"
            )
        print(line)
    print(f"image {args.image}, {args.threads} threads, model {args.model}, "
          f"decoder {args.decoder}, entropy {args.entropy}, best of {args.repeat}")


if __name__ == "__main__":
    main()
