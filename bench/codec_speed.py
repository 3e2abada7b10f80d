"""Encode / decode wall time and peak memory for a 768x512 photo with the default model
(`--decoder perceptual` times the other decoder of the same tokens, `fidelity+grain2` the
decode with film grain; `--entropy static` the version-1 coding; `--quality Q` rate control's
setting for Q: codebook size and scale), with the time of each stage: network, GQ search, the
colour correction's fit (coded larger than the image, above quality 75, or at any quality with
`--color always`) and entropy coding when encoding; entropy decoding (container parse included)
and the decoder network when decoding. "first" is a fresh process's first call, from the model
file on: model load and the tables of its codebook size (codebook, search order, entropy
tables) included, i.e. what one `gqtok encode` / `decode` of one image pays after start-up;
decode's first call never saw an encode (the file comes from the encoding process).

Each measurement runs in a fresh subprocess so that peak RSS (ru_maxrss) belongs to one step;
times are the best of --repeat runs after a warm-up (shared machines are noisy: the best run is
the one least disturbed by other tenants).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from gqtok.cli.common import parse_decoders

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, resource, sys, time, torch
torch.set_num_threads(int(sys.argv[3]))
from gqtok import load_model
from gqtok.codec import decode_bytes, encode_pictures, unpack_tokens
from gqtok.codec.engine import decode_to_array
from gqtok.io.images import read_image
from gqtok.zoo.load import model_for_header
step, gq_file, entropy, quality = sys.argv[1], sys.argv[9], sys.argv[7], sys.argv[8]
color = {"auto": None, "always": True, "never": False}[sys.argv[10]]
pic = read_image(sys.argv[2])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
if step == "encode":
    m = load_model(sys.argv[4])
    rate = {} if quality == "none" else {"quality": float(quality)}
    rate["color"] = color
    data = encode_pictures(m, [pic], entropy=entropy, **rate)[0].data
    first = time.perf_counter() - t0
    with open(gq_file, "wb") as f:
        f.write(data)
else:
    with open(gq_file, "rb") as f:
        data = f.read()
    dec = None
    def pick(header):
        global dec
        name, realism, grain = json.loads(sys.argv[6])
        dec = model_for_header(header).with_decoder(name, realism, grain)
        return dec
    decode_bytes(data, pick)
    first = time.perf_counter() - t0
dt, extra = float("inf"), {}
for _ in range(int(sys.argv[5])):
    t = time.perf_counter()
    if step == "encode":
        enc = encode_pictures(m, [pic], entropy=entropy, **rate)[0]
    else:
        _, tokens, _ = unpack_tokens(dec, data)
        t1 = time.perf_counter()
        decode_to_array(dec, tokens)
        t2 = time.perf_counter()
    if time.perf_counter() - t < dt:
        dt = time.perf_counter() - t
        if step == "encode":
            extra = {"bpp": enc.bpp, "bytes": len(enc.data), "timings": enc.timings}
        else:
            extra = {"timings": {"entropy": t1 - t, "network": t2 - t1}}
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": dt, "first": first, "peak_rss_mb": peak / 1024,
                  "model_rss_mb": base / 1024, **extra}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--image", default=str(ROOT / "examples" / "sample.jpg"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="default")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs; the best is shown")
    ap.add_argument("--decoder", default="fidelity",
                    help="decoder timed by decode, as a compare row: NAME[@R][+grainS]")
    ap.add_argument("--entropy", default="context", choices=("context", "static"))
    ap.add_argument("--quality", type=float, default=None,
                    help="rate control's quality 0..100 (default: the model's own setting)")
    ap.add_argument("--color", default="auto", choices=("auto", "always", "never"),
                    help="colour correction: as gqtok encode, --color, --no-color")
    args = ap.parse_args()
    quality = "none" if args.quality is None else str(args.quality)
    decoders = parse_decoders([args.decoder])  # the grammar of gqtok compare's rows
    if len(decoders) != 1:
        raise SystemExit("--decoder: one decoder at a time")
    tmp = tempfile.TemporaryDirectory()
    gq_file = str(Path(tmp.name) / "speed.gq")
    for step in ("encode", "decode"):
        out = subprocess.run(
            [sys.executable, "-c", CHILD, step, args.image, str(args.threads), args.model,
             str(args.repeat), json.dumps(decoders[0]), args.entropy, quality, gq_file,
             args.color],
            capture_output=True,
            text=True,
            check=True,
        )
        r = json.loads(out.stdout)
        line = (f"{step:7s} {r['seconds'] * 1000:7.0f} ms (first {r['first'] * 1000:5.0f} ms)"
                f"   peak RSS {r['peak_rss_mb']:6.0f} MB")
        t = r["timings"]
        if step == "encode":
            fit = f" colour fit {t['color_fit'] * 1000:.0f} ms," if "color_fit" in t else ""
            line += (
                f"   (network {t['network'] * 1000:.0f} ms, GQ search {t['search'] * 1000:.0f} ms,"
                f"{fit} entropy {t['entropy'] * 1000:.0f} ms; {r['bpp']:.4f} bpp)"
            )
        else:
            line += (
                f"   (entropy {t['entropy'] * 1000:.0f} ms, network {t['network'] * 1000:.0f} ms)"
            )
        print(line)
    tmp.cleanup()
    q = "" if args.quality is None else f", quality {args.quality:g}"
    q += "" if args.color == "auto" else f", colour {args.color}"
    print(f"image {args.image}, {args.threads} threads, model {args.model}{q}, "
          f"decoder {args.decoder}, entropy {args.entropy}, best of {args.repeat}")


if __name__ == "__main__":
    main()
