"""Are a GPU's tokens the CPU's? Run on a CUDA machine from the repository; exit 1 on any
mismatch of the GQ search itself.

1. The search alone (must be exact): the default model's CPU moments of real photos
   (examples/sample.jpg, tests/data) fed to the search on CUDA give exactly the CPU's tokens;
   so do hostile posteriors (sigma at the clamp floor and ceiling, all-tied tokens, means half
   way between two codewords) and random ones, at G = 16, 8, 4; also with the user's matmul
   precision set to TF32 ("high") and inside bf16 autocast. The codebook and the codeword
   lookup on the GPU are bit-identical to the CPU's.
2. The networks (reported, not required): the encoder on CUDA in fp32 (IEEE) and bf16 gives
   slightly different moments, so a share of the tokens may differ; how many, and how far
   the decoded pixels are from the CPU's (PSNR); a .gq file written on the GPU decodes on the
   CPU (needs constriction, else skipped).

    python scripts/gpu_check.py --json gpu_check.json
    python scripts/gpu_check.py --device cpu --quick     # a dry run of the script itself
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gqtok.codec.engine import _prepare  # noqa: E402
from gqtok.io.images import read_image  # noqa: E402
from gqtok.quant.codebook import codebook_view  # noqa: E402
from gqtok.quant.search import _codebook_on, dequantize, search, split_moments  # noqa: E402
from gqtok.zoo.load import load_model  # noqa: E402

PHOTOS = [ROOT / "examples" / "sample.jpg", *sorted((ROOT / "tests" / "data").glob("*.[jp][pn]g"))]


def hostile(dim: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Posteriors that stress the guard, the windows and the tie rule."""
    g = torch.Generator().manual_seed(dim)
    mu = torch.randn(n, dim, generator=g) * 2
    logvar = torch.rand(n, dim, generator=g) * 50 - 30
    q = n // 8
    logvar[:q] = -30.0  # sigma at the clamp floor: a ~ 1e13, the expanded form cancels
    logvar[q : 2 * q], mu[q : 2 * q] = 0.0, 0.0  # every codeword ties at beta 1
    logvar[2 * q : 3 * q] = 20.0
    cb = codebook_view(dim)
    js = torch.randint(0, cb.shape[0], (q,), generator=g)
    d = torch.cdist(cb[js], cb)
    d[torch.arange(q), js] = float("inf")
    t = torch.rand(q, 1, generator=g) * 1e-5 - 0.5e-5
    mu[3 * q : 4 * q] = (0.5 + t) * cb[js] + (0.5 - t) * cb[d.argmin(1)]  # near-ties
    logvar[3 * q : 4 * q] = -30.0
    return mu, torch.exp(0.5 * logvar)


def random_tokens(dim: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + dim)
    mu = torch.randn(n, dim, generator=g)
    return mu, torch.exp(0.5 * (torch.rand(n, dim, generator=g) * 4 - 4))


class Checks:
    """Named results; a failed ``exact`` check makes the script exit 1."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def exact(self, name: str, want: torch.Tensor, got: torch.Tensor, **info: Any) -> None:
        same = torch.equal(want.cpu(), got.cpu())
        diff = int((want.cpu() != got.cpu()).sum()) if want.shape == got.shape else -1
        self.rows.append({"check": name, "exact": True, "ok": same, "differ": diff, **info})
        print(f"{'ok  ' if same else 'FAIL'} {name}: {diff} of {want.numel()} differ", flush=True)

    def report(self, name: str, **info: Any) -> None:
        self.rows.append({"check": name, "exact": False, **info})
        text = ", ".join(f"{k} {v}" for k, v in info.items())
        print(f"info {name}: {text}", flush=True)

    @property
    def failed(self) -> list[str]:
        return [r["check"] for r in self.rows if r["exact"] and not r["ok"]]


def timed(fn: Any, device: torch.device) -> tuple[float, Any]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0, out


def search_checks(checks: Checks, device: torch.device, quick: bool) -> None:
    """The search alone, CPU vs ``device``: must be exact."""
    for dim in (16,) if quick else (16, 8, 4):
        cb = codebook_view(dim)
        checks.exact(
            f"codebook G={dim} on {device.type}", cb, _codebook_on(dim, 65536, 42, str(device))
        )
        for name, (mu, std) in (
            ("hostile", hostile(dim, 64 if quick else 512)),
            ("random", random_tokens(dim, 128 if quick else 4096)),
        ):
            want = search(mu, std, dim)
            t, got = timed(
                lambda mu=mu, std=std, dim=dim: search(mu, std, dim, device=device), device
            )
            checks.exact(f"search {name} G={dim}", want, got, seconds=round(t, 4))
        idx = torch.randint(0, 65536, (2, 16 // dim, 5, 7))
        checks.exact(f"dequantize G={dim}", dequantize(idx, dim), dequantize(idx.to(device), dim))


def photo_moments(model: Any, quick: bool) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, padded image, CPU fp32 moments) per photo."""
    out = []
    for path in PHOTOS[:2] if quick else PHOTOS:
        rgb = read_image(path).rgb
        if quick:
            rgb = rgb[:128, :128]
        x = _prepare(model, rgb, "replicate")
        out.append((path.name, x, model.moments(x)))
    return out


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB between two images in [-1, 1] as 8-bit pixels."""
    pa = ((a.clamp(-1, 1) + 1) * 127.5).round()
    pb = ((b.clamp(-1, 1) + 1) * 127.5).round()
    mse = float(((pa - pb) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def model_checks(checks: Checks, device: torch.device, quick: bool) -> None:
    model = load_model()  # on the CPU
    photos = photo_moments(model, quick)
    cpu_tokens = {}
    for name, _, moments in photos:
        tokens = model.quantize(moments)[0]
        cpu_tokens[name] = tokens
        mu, std = split_moments(moments, model.quant.dim)
        t, got = timed(lambda mu=mu, std=std: search(mu, std, 16, device=device), device)
        checks.exact(
            f"photo {name}: CPU moments, search on {device.type}",
            tokens.permute(0, 2, 3, 1).reshape(-1),
            got,
            seconds=round(t, 4),
        )
        # the same through Model.quantize of a model on the device
        model.to(device)
        got_grid = model.quantize(moments)[0]
        model.to("cpu")
        checks.exact(f"photo {name}: Model.quantize on {device.type}", tokens, got_grid)
    # the user's own TF32 / bf16 settings must not reach the search
    name, _, moments = photos[0]
    mu, std = split_moments(moments, 16)
    want = cpu_tokens[name].permute(0, 2, 3, 1).reshape(-1)
    try:
        torch.set_float32_matmul_precision("high")
        checks.exact(
            "search under matmul precision 'high' (TF32)", want, search(mu, std, 16, device=device)
        )
        with torch.autocast(device.type, dtype=torch.bfloat16):
            checks.exact("search inside bf16 autocast", want, search(mu, std, 16, device=device))
    finally:
        torch.set_float32_matmul_precision("highest")
    # the networks on the device: reported
    for precision in ("fp32", "bf16"):
        model.to(device, precision)
        for name, x, moments in photos:
            t, dev_moments = timed(lambda x=x: model.moments(x), device)
            tokens = model.quantize(dev_moments.cpu())[0]
            same = float((tokens == cpu_tokens[name]).float().mean())
            img_dev = model.decode_indices(cpu_tokens[name]).cpu()
            model.to("cpu", "fp32")
            img_cpu = model.decode_indices(cpu_tokens[name])
            model.to(device, precision)
            checks.report(
                f"network {precision} on {device.type}, {name}",
                tokens_equal=round(same, 5),
                moments_max_abs_diff=float((dev_moments.cpu() - moments).abs().max()),
                decode_psnr_vs_cpu_db=round(psnr(img_dev, img_cpu), 2),
                encoder_seconds=round(t, 4),
            )
    model.to("cpu", "fp32")
    codec_check(checks, model, device)


def codec_check(checks: Checks, model: Any, device: torch.device) -> None:
    """A .gq file written with the networks on the device decodes on the CPU."""
    try:
        import constriction  # noqa: F401
    except ImportError:
        checks.report("codec round trip", skipped="constriction is not installed")
        return
    from gqtok.codec import decode_bytes, encode_pictures

    pic = read_image(PHOTOS[0])
    data_cpu = encode_pictures(model, [pic])[0].data
    model.to(device)
    data_dev = encode_pictures(model, [pic])[0].data
    model.to("cpu")
    img, _ = decode_bytes(data_dev, model)
    checks.report(
        f"codec: .gq from {device.type} decoded on cpu",
        same_bytes_as_cpu=data_cpu == data_dev,
        size=list(img.size),
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu (dry run)")
    ap.add_argument("--json", type=Path, help="write every check here")
    ap.add_argument("--quick", action="store_true", help="fewer tokens and photos")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available here", file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, torch.get_num_threads()))
    checks = Checks()
    info = {"torch": torch.__version__, "device": str(device)}
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    print(json.dumps(info), flush=True)
    search_checks(checks, device, args.quick)
    model_checks(checks, device, args.quick)
    failed = checks.failed
    print(
        f"{len(checks.rows)} checks, {len(failed)} search mismatches"
        + (f": {failed}" if failed else "")
    )
    if args.json:
        args.json.write_text(
            json.dumps({**info, "failed": failed, "checks": checks.rows}, indent=2) + "\n"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
