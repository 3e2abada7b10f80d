"""How well TDC held the target: KL per token (bits) of a model's posteriors on a photo folder.

KL(q(z|x) || N(0, I)) per token = 0.5 * sum over its G channels of (mu^2 + s^2 - 1 - log s^2),
in bits. GQ's rate argument needs it near log2 K for every token, so min and max matter as
much as the mean. Usage: python scripts/kl_stats.py data/prepared/val [--model default]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

from gqtok import load_model
from gqtok.io.images import read_image
from gqtok.quant.search import split_moments


def token_kl_bits(moments: torch.Tensor, dim: int) -> torch.Tensor:
    mu, std = split_moments(moments, dim)
    var = std.double() ** 2
    return 0.5 * (mu.double() ** 2 + var - 1.0 - var.log()).sum(dim=1) / math.log(2.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--model", default="default")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    model = load_model(args.model)
    paths = sorted(p for p in args.folder.iterdir() if p.suffix.lower() in {".jpg", ".png"})
    per_image, pooled = [], []
    for p in paths:
        rgb = read_image(str(p)).rgb
        h, w = (rgb.shape[0] // 8) * 8, (rgb.shape[1] // 8) * 8
        x = torch.from_numpy(np.ascontiguousarray(rgb[:h, :w])).permute(2, 0, 1)[None].float()
        with torch.inference_mode():
            kl = token_kl_bits(model.moments(x / 127.5 - 1.0), model.quant.dim)
        pooled.append(kl)
        per_image.append({"image": p.name, "mean": float(kl.mean()), "max": float(kl.max())})
    allkl = torch.cat(pooled)
    q = torch.quantile(
        allkl[torch.randperm(allkl.numel(), generator=torch.Generator().manual_seed(0))[:200_000]],
        torch.tensor([0.01, 0.5, 0.99], dtype=torch.float64),
    )
    out = {
        "model": model.name,
        "images": len(paths),
        "tokens": int(allkl.numel()),
        "target_bits": math.log2(model.quant.size),
        "mean": float(allkl.mean()),
        "min": float(allkl.min()),
        "max": float(allkl.max()),
        "p01": float(q[0]),
        "median": float(q[1]),
        "p99": float(q[2]),
        "image_means_min": min(r["mean"] for r in per_image),
        "image_means_max": max(r["mean"] for r in per_image),
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(
        f"{out['model']}: KL per token on {out['images']} photos ({out['tokens']} tokens),"
        f" target {out['target_bits']:.1f} bits"
    )
    print(
        f"  mean {out['mean']:.2f}  min {out['min']:.2f}  max {out['max']:.2f}  "
        f"p1 {out['p01']:.2f}  median {out['median']:.2f}  p99 {out['p99']:.2f}"
    )
    print(f"  per-image means from {out['image_means_min']:.2f} to {out['image_means_max']:.2f}")


if __name__ == "__main__":
    main()
