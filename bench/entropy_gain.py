"""File sizes of the same tokens coded with the static table (.gq version 1) and the context
model (version 2), per photo, on the held-out photos (default: data/prepared/val, `make data`).
With ``--size K`` (another codebook size, as rate control codes it): the prior's table for K
(version 2, entropy model 3) against the context model (version 2 from K = 1024, version 3
below); the JSON keys keep the names v1_* (static side) and v2_* (context side).

Every photo is encoded once through the network; its token grid is then packed both ways, both
files are decoded, and the script fails unless the tokens and the decoded pixels are identical.
Prints a markdown table and, with --json, writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gqtok import load_model  # noqa: E402
from gqtok.codec import decode_bytes, encode_pictures, pack_tokens, unpack_tokens  # noqa: E402
from gqtok.codec import rate as rc  # noqa: E402
from gqtok.io.files import IMAGE_EXTS  # noqa: E402
from gqtok.io.images import read_image  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("folder", nargs="?", default=str(ROOT / "data" / "prepared" / "val"))
    ap.add_argument("--model", default=None)
    ap.add_argument("--json", default=None, help="write the per-photo numbers here")
    ap.add_argument("--no-decode", action="store_true", help="skip the pixel comparison")
    ap.add_argument("--size", type=int, default=None, help="codebook size K (default: own)")
    args = ap.parse_args()
    model = load_model(args.model) if args.model else load_model()
    if args.size is not None:
        model = rc.at_size(model, args.size)
    if model.context_coder is None:
        sys.exit(f"{model.name} has no context model (gqtok fit-context)")
    paths = sorted(p for p in Path(args.folder).iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not paths:
        sys.exit(f"no images in {args.folder} (run `make data`)")
    rows = []
    for path in paths:
        pic = read_image(str(path))
        tok = encode_pictures(model, [pic], entropy="static")[0].tokens
        v1 = pack_tokens(model, tok, pic, entropy="static")
        v2 = pack_tokens(model, tok, pic, entropy="context")
        back = unpack_tokens(model, v2.data)[1].indices
        if not np.array_equal(back.numpy(), tok.indices.numpy()):
            sys.exit(f"{path.name}: tokens differ after the context round trip")
        if not args.no_decode:
            a = np.asarray(decode_bytes(v1.data, model)[0])
            b = np.asarray(decode_bytes(v2.data, model)[0])
            if not np.array_equal(a, b):
                sys.exit(f"{path.name}: decoded pixels differ")
        pixels = pic.rgb.shape[0] * pic.rgb.shape[1]
        rows.append({
            "photo": path.name, "width": pic.rgb.shape[1], "height": pic.rgb.shape[0],
            "tokens": v1.header.num_tokens, "v1_bytes": len(v1.data), "v2_bytes": len(v2.data),
            "v1_bpp": len(v1.data) * 8 / pixels, "v2_bpp": len(v2.data) * 8 / pixels,
            "v1_bits_per_token": v1.bits_per_token, "v2_bits_per_token": v2.bits_per_token,
            "saving_pct": 100 * (1 - len(v2.data) / len(v1.data)),
        })  # fmt: skip
    ver = (v1.header.version, v2.header.version)
    print(f"K = {model.quant.size}: static (version {ver[0]}, {v1.entropy}) against context"
          f" (version {ver[1]})\n")
    print("| photo | size | static bytes | context bytes | static bpp | context bpp | saving |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['photo']} | {r['width']}x{r['height']} | {r['v1_bytes']} | {r['v2_bytes']}"
              f" | {r['v1_bpp']:.4f} | {r['v2_bpp']:.4f} | {r['saving_pct']:.1f} % |")
    v1 = sum(r["v1_bytes"] for r in rows)
    v2 = sum(r["v2_bytes"] for r in rows)
    mean = statistics.mean(r["saving_pct"] for r in rows)
    summary = {
        "photos": len(rows),
        "mean_saving_pct": mean,
        "total_saving_pct": 100 * (1 - v2 / v1),
        "min_saving_pct": min(r["saving_pct"] for r in rows),
        "max_saving_pct": max(r["saving_pct"] for r in rows),
        "mean_v1_bpp": statistics.mean(r["v1_bpp"] for r in rows),
        "mean_v2_bpp": statistics.mean(r["v2_bpp"] for r in rows),
        "identical_pixels": not args.no_decode,
        "codebook_size": model.quant.size,
        "versions": list(ver),
        "mean_v1_bits_per_token": statistics.mean(r["v1_bits_per_token"] for r in rows),
        "mean_v2_bits_per_token": statistics.mean(r["v2_bits_per_token"] for r in rows),
    }
    s = summary
    print(f"\n{len(rows)} photos: mean saving {mean:.1f} % per photo,"
          f" {s['total_saving_pct']:.1f} % of all bytes (min {s['min_saving_pct']:.1f} %,"
          f" max {s['max_saving_pct']:.1f} %); mean bpp {s['mean_v1_bpp']:.4f}"
          f" -> {s['mean_v2_bpp']:.4f}; bits per token {s['mean_v1_bits_per_token']:.3f}"
          f" -> {s['mean_v2_bits_per_token']:.3f}")
    if args.json:
        text = json.dumps({"summary": summary, "photos": rows}, indent=1) + "\n"
        Path(args.json).write_text(text)


if __name__ == "__main__":
    main()
