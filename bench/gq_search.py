"""GQ search speed: gqtok's exact search vs a naive broadcast of the same score.

Rows: random posteriors (every channel informative), and the real tokens of the default model
on examples/sample.jpg (768x512, 6144 tokens), where the window search prunes most codewords.
"GFLOP/s" is the rate an exhaustive score GEMM (2 * N * K * 2G flops) would need to match the
time, next to this machine's measured float32 GEMM rate. The naive search is timed on a slice
of the tokens and scaled linearly (it is linear in N), which the output says.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from gqtok.io.allocator import retain_freed_memory
from gqtok.quant.codebook import codebook_view
from gqtok.quant.search import search, search_naive, split_moments

ROOT = Path(__file__).resolve().parent.parent


def photo_tokens() -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior means and stds of the default model on the sample photo."""
    from gqtok import load_model
    from gqtok.codec.engine import _prepare
    from gqtok.io.images import read_image

    model = load_model("default")
    x = _prepare(model, read_image(ROOT / "examples" / "sample.jpg").rgb, "reflect")
    with torch.inference_mode():
        return split_moments(model.moments(x), model.quant.dim)


def gemm_rate(n: int = 1024, repeat: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(repeat):
        a @ b
    return 2 * n**3 * repeat / (time.perf_counter() - t0) / 1e9


def best_of(fn, repeat: int) -> float:  # noqa: ANN001
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument(
        "--naive-tokens", type=int, default=128, help="tokens timed for the naive search"
    )
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    retain_freed_memory()  # as load_model does for every gqtok user
    k = 65536
    peak = gemm_rate()
    print(f"threads {args.threads}; machine fp32 GEMM (1024^3): {peak:.1f} GFLOP/s")
    print(
        f"{'tokens':>15} {'dim':>4} {'gqtok ms':>9} {'GFLOP/s':>8} {'of peak':>8} "
        f"{'naive ms':>10} {'speed-up':>9}"
    )
    cases = []
    for n in (1024, 6144):
        for dim in (16, 8):
            g = torch.Generator().manual_seed(0)
            mu = torch.randn(n, dim, generator=g)
            std = torch.exp(0.5 * (torch.rand(n, dim, generator=g) * 4 - 4))
            cases.append(("random", mu, std))
    cases.append(("photo", *photo_tokens()))
    for name, mu, std in cases:
        n, dim = mu.shape
        codebook_view(dim, k)
        search(mu, std, dim)  # warm-up: codebook tables and sorted copies
        t = best_of(lambda: search(mu, std, dim), args.repeat)  # noqa: B023
        m = min(n, args.naive_tokens)
        tn = best_of(lambda: search_naive(mu[:m], std[:m], dim), 1) * n / m  # noqa: B023
        same = torch.equal(search(mu[:m], std[:m], dim), search_naive(mu[:m], std[:m], dim))
        gflops = 2 * n * k * 2 * dim / t / 1e9
        print(
            f"{name:>7} {n:>7} {dim:>4} {t * 1e3:>9.1f} {gflops:>8.1f} {gflops / peak:>8.0%} "
            f"{tn * 1e3:>10.0f} {tn / t:>8.0f}x" + ("" if same else "  (indices differ!)")
        )
    print(f"naive timed on {args.naive_tokens} tokens and scaled linearly to N")


if __name__ == "__main__":
    main()
