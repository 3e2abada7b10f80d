"""GPU throughput: images/s and tokens/s at 256x256 for export (network + GQ search) and decode.

Networks: the embedded default model, and an SD3-UNet-sized one (the released 0.25 bpp
config, UNetConfig's defaults: ch 128, ch_mult 1-2-4-4, 2 res blocks, attention at 32,
z 16; random weights, so its posteriors are not a trained model's and its search takes the
dense path). Batch sizes 1, 8, 32, 64 by default. Then the search alone on the default
model's posteriors of real photos (and on random ones): gqtok's exact search against the
dense broadcast search the reference uses, every token against all K codewords as one
(N, 1, G) - (1, K, G) computation, chunked to fit memory.

    python bench/gpu_throughput.py --device cuda --precision fp32 --json out.json
    python bench/gpu_throughput.py --device cpu --quick        # 64x64, small, a few seconds

Prints a markdown table with the device, torch version and date. Export rows time the
pinned host batch -> network -> moments back -> search; decode rows time the codeword
lookup -> decoder network -> pixels back on the host. Times are the best of --repeat after
one warm-up, with the device synchronised around each.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gqtok.codec.engine import host_batch  # noqa: E402
from gqtok.format import entropy as ent  # noqa: E402
from gqtok.io.images import read_image, to_tensor  # noqa: E402
from gqtok.model import Model  # noqa: E402
from gqtok.nets.config import UNetConfig  # noqa: E402
from gqtok.nets.unet import Decoder, Encoder  # noqa: E402
from gqtok.quant.config import QuantizerConfig  # noqa: E402
from gqtok.quant.search import search, search_naive, split_moments  # noqa: E402
from gqtok.zoo.load import load_model  # noqa: E402

PHOTOS = [ROOT / "examples" / "sample.jpg", *sorted((ROOT / "tests" / "data").glob("photo_*"))]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_of(fn: Callable[[], Any], repeat: int, device: torch.device) -> tuple[float, Any]:
    """Best wall time of ``repeat`` calls after one warm-up, and the last result."""
    out = fn()
    best = float("inf")
    for _ in range(repeat):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best, out


def crops(size: int, count: int) -> torch.Tensor:
    """``count`` size x size crops of the photos, in [-1, 1], (count, 3, size, size)."""
    tiles = []
    for path in PHOTOS:
        rgb = read_image(path).rgb
        h, w = rgb.shape[:2]
        for y in range(0, h - size + 1, size):
            for x in range(0, w - size + 1, size):
                tiles.append(to_tensor(np.ascontiguousarray(rgb[y : y + size, x : x + size])))
    if not tiles:
        raise SystemExit(f"no {size}x{size} crop fits the photos")
    return torch.cat([tiles[i % len(tiles)] for i in range(count)])


def sd3_like(device: torch.device, quick: bool) -> Model:
    """The released sd3unet_gq_0.25 network with random weights (ch 32 with --quick)."""
    cfg = UNetConfig(ch=32) if quick else UNetConfig()
    torch.manual_seed(0)
    with torch.device(device):
        enc, dec = Encoder(cfg), Decoder(cfg)
    quant = QuantizerConfig(16, 65536, 42, 1.0)
    name = "sd3unet_gq_0.25 (random" + (", ch 32)" if quick else ")")
    model = Model(enc, dec, quant, ent.uniform(quant.size), {"name": name}, "0" * 64)
    return model.to(device)


def params(model: Model) -> int:
    return sum(p.numel() for net in (model.encoder, model.decoder) for p in net.parameters())


def codec_rows(
    model: Model, images: torch.Tensor, batches: list[int], repeat: int, device: torch.device
) -> list[dict[str, Any]]:
    """Export and decode throughput of ``model`` at each batch size."""
    rows = []
    for b in batches:
        x = images[:b]
        split: dict[str, list[float]] = {"network": [], "search": []}

        def export(x: torch.Tensor = x, split: dict[str, list[float]] = split) -> torch.Tensor:
            t0 = time.perf_counter()
            moments = model.moments(host_batch(model, [x])).cpu()  # .cpu() waits for the GPU
            t1 = time.perf_counter()
            idx = model.quantize(moments)[0]
            split["network"].append(t1 - t0)
            split["search"].append(time.perf_counter() - t1)
            return idx

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t_export, idx = best_of(export, repeat, device)
        t_net, t_search = min(split["network"][1:]), min(split["search"][1:])  # no warm-up
        t_decode, _ = best_of(lambda idx=idx: model.decode_indices(idx).cpu(), repeat, device)
        tokens = idx[0].numel()
        row = {
            "model": model.name,
            "params_m": round(params(model) / 1e6, 1),
            "batch": b,
            "tokens_per_image": tokens,
            "export_images_per_s": b / t_export,
            "export_tokens_per_s": b * tokens / t_export,
            "network_ms_per_image": 1e3 * t_net / b,
            "search_ms_per_image": 1e3 * t_search / b,
            "decode_images_per_s": b / t_decode,
            "decode_tokens_per_s": b * tokens / t_decode,
        }
        if device.type == "cuda":
            row["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        rows.append(row)
        print(f"  {model.name} batch {b}: {row['export_images_per_s']:.1f} img/s export,"
              f" {row['decode_images_per_s']:.1f} img/s decode", file=sys.stderr)  # fmt: skip
    return rows


def dense_chunk(device: torch.device, k: int, g: int) -> int:
    """Tokens per chunk of the dense broadcast: a few (chunk, K, G) float32 temporaries in
    1 GiB on a GPU, 64 MiB on a CPU."""
    budget = 2**30 if device.type == "cuda" else 2**26
    return max(1, budget // (4 * k * g * 4))


def search_rows(
    posteriors: list[tuple[str, torch.Tensor, torch.Tensor]],
    dense_tokens: int,
    repeat: int,
    device: torch.device,
) -> list[dict[str, Any]]:
    """gqtok's exact search vs the dense broadcast search, tokens/s, on ``device``."""
    rows = []
    for name, mu_cpu, std_cpu in posteriors:
        n, g = mu_cpu.shape
        mu, std = mu_cpu.to(device), std_cpu.to(device)
        t_gq, idx = best_of(lambda mu=mu, std=std, g=g: search(mu, std, g), repeat, device)
        m = min(n, dense_tokens)
        chunk = dense_chunk(device, 65536, g)

        def dense(mu: torch.Tensor = mu, std: torch.Tensor = std, m: int = m, g: int = g,
                  chunk: int = chunk) -> torch.Tensor:  # fmt: skip
            return search_naive(mu[:m], std[:m], g, row_chunk=chunk)

        t_dense, dense_idx = best_of(dense, max(1, repeat // 2), device)
        rows.append(
            {
                "posteriors": name,
                "tokens": n,
                "gqtok_tokens_per_s": n / t_gq,
                "dense_tokens": m,
                "dense_tokens_per_s": m / t_dense,
                "speedup": (n / t_gq) / (m / t_dense),
                "dense_agrees": float((dense_idx == idx[:m]).float().mean()),
            }
        )
        print(f"  search {name}: {n / t_gq:.0f} tokens/s (dense {m / t_dense:.0f})",
              file=sys.stderr)  # fmt: skip
    return rows


def photo_posteriors(model: Model, images: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
    """(mu, std) of the default model on the photos' crops, repeated to ``n`` tokens."""
    mus, stds = [], []
    for i in range(0, images.shape[0], 8):
        mu, std = split_moments(model.moments(host_batch(model, [images[i : i + 8]])).cpu(), 16)
        mus.append(mu)
        stds.append(std)
    mu, std = torch.cat(mus), torch.cat(stds)
    reps = -(-n // mu.shape[0])
    return mu.repeat(reps, 1)[:n], std.repeat(reps, 1)[:n]


def random_posteriors(n: int, g: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Every channel informative: the windows do not prune, gqtok takes its dense path."""
    gen = torch.Generator().manual_seed(0)
    mu = torch.randn(n, g, generator=gen)
    return mu, torch.exp(0.5 * (torch.rand(n, g, generator=gen) * 4 - 4))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"device: {report['device_name']}; torch {report['torch']}; {report['date']};"
        f" precision {report['precision']}; {report['size']}x{report['size']} images",
        "",
        "| model | params (M) | batch | export img/s | export tokens/s | network ms/img"
        " | search ms/img | decode img/s | decode tokens/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["codec"]:
        lines.append(
            f"| {r['model']} | {r['params_m']} | {r['batch']} | {r['export_images_per_s']:.1f}"
            f" | {r['export_tokens_per_s']:.0f} | {r['network_ms_per_image']:.2f}"
            f" | {r['search_ms_per_image']:.2f} | {r['decode_images_per_s']:.1f}"
            f" | {r['decode_tokens_per_s']:.0f} |"
        )
    lines += [
        "",
        "| posteriors | tokens | gqtok tokens/s | dense broadcast tokens/s (tokens timed)"
        " | speed-up | dense = exact |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["search"]:
        lines.append(
            f"| {r['posteriors']} | {r['tokens']} | {r['gqtok_tokens_per_s']:.0f}"
            f" | {r['dense_tokens_per_s']:.0f} ({r['dense_tokens']}) | {r['speedup']:.1f}x"
            f" | {100 * r['dense_agrees']:.2f} % |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda if any")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--json", type=Path, help="write the report here as JSON")
    ap.add_argument("--quick", action="store_true", help="64x64, batches 1 and 2, small search")
    ap.add_argument("--batches", help="comma-separated batch sizes (default 1,8,32,64)")
    ap.add_argument("--repeat", type=int, default=None, help="timed runs per row (default 3)")
    ap.add_argument("--models", default="default,sd3", help="default, sd3; none: search rows only")
    args = ap.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("CUDA is not available here (torch " + torch.__version__ + ")")
    size = 64 if args.quick else 256
    batches = [int(b) for b in (args.batches or ("1,2" if args.quick else "1,8,32,64")).split(",")]
    repeat = args.repeat or (1 if args.quick else 3)
    search_tokens = 256 if args.quick else 65536
    dense_tokens = 32 if args.quick else search_tokens if device.type == "cuda" else 256
    images = crops(size, max(batches))
    report: dict[str, Any] = {
        "device": device.type,
        "device_name": device_name(device),
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "precision": args.precision,
        "size": size,
        "quick": args.quick,
        "codec": [],
        "search": [],
    }
    default = load_model().to(device, args.precision)
    wanted = args.models.split(",")
    if "default" in wanted:
        report["codec"] += codec_rows(default, images, batches, repeat, device)
    if "sd3" in wanted:
        big = sd3_like(device, args.quick).to(device, args.precision)
        report["codec"] += codec_rows(big, images, batches, repeat, device)
        del big
    photo = photo_posteriors(
        default, crops(size, max(8, search_tokens * 64 // size**2)), search_tokens
    )
    posteriors = [("default model, photos", *photo), ("random", *random_posteriors(search_tokens))]
    report["search"] = search_rows(posteriors, dense_tokens, repeat, device)
    print(markdown(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
