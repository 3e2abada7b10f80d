"""The device-agnostic paths on the CPU: the GQ search with a device argument, its GPU block
sizes, ties, reduced-precision matmul settings and autocast; network precision; pinned
batches; decode workers. Nothing here needs a GPU (scripts/gpu_check.py runs the CUDA side)."""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from gqtok.cli.app import app
from gqtok.codec.engine import _prepare, host_batch
from gqtok.io.images import read_image
from gqtok.model import network_precision
from gqtok.quant import search as quantizer
from gqtok.quant.codebook import codebook
from gqtok.quant.search import (
    _exhaustive,
    _rescore,
    _sum_terms,
    dequantize,
    gemm_input_error,
    ieee_gemm,
    quantize,
    search,
)
from tests.conftest import DATA

runner = CliRunner()


def _model_like(n: int = 128, dim: int = 16, seed: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    """A trained encoder's kind of posterior: a few sharp channels, the rest near the prior."""
    g = torch.Generator().manual_seed(seed)
    sharp = torch.tensor([0.02, 0.1, 0.12, 0.4, 0.5])[:dim]
    sigma = 0.9 + 0.15 * torch.rand(n, dim, generator=g)
    sigma[:, : sharp.numel()] = sharp * torch.exp(0.3 * torch.randn(n, sharp.numel(), generator=g))
    mu = torch.randn(n, dim, generator=g) * torch.sqrt((1 - sigma**2).clamp(min=0.01))
    return mu, sigma


def _hostile(n: int = 64, dim: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Sigmas at the clamp floor and ceiling, and tokens where every codeword ties."""
    g = torch.Generator().manual_seed(dim + 100)
    mu = torch.randn(n, dim, generator=g) * 2
    logvar = torch.rand(n, dim, generator=g) * 50 - 30
    logvar[:30] = -30.0
    logvar[30:40], mu[30:40] = 0.0, 0.0  # score 0 for every codeword at beta 1: index 0 wins
    logvar[40:50] = 20.0
    return mu, torch.exp(0.5 * logvar)


TIED = slice(128 + 30, 128 + 40)


def _tokens(dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = _model_like(dim=dim), _hostile(dim=dim)
    return torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])


@functools.cache
def _exact(dim: int, size: int = 65536) -> torch.Tensor:
    """The float64 exhaustive argmax of _tokens(dim), computed once per module."""
    mu, std = _tokens(dim)
    return _exhaustive(mu, std, codebook(dim, size), 1.0)


@pytest.mark.parametrize("dim", [16, 4])
def test_search_with_a_device_argument_is_the_exact_argmax(dim: int) -> None:
    mu, std = _tokens(dim)
    got = search(mu, std, dim, device="cpu")
    assert got.device.type == "cpu" and torch.equal(got, _exact(dim))
    assert torch.equal(search(mu.double(), std.double(), dim, device=torch.device("cpu")), got)
    assert got[TIED].tolist() == [0] * 10


def test_gpu_block_sizes_give_the_same_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA tuning (large row chunks, wide column tiles, 512-token windowed blocks) run on
    the CPU: other blocks and shortlists, the same argmax."""
    mu, std = _tokens(16)
    sizes = (quantizer._CUDA_ROW_CHUNK, quantizer._CUDA_COL_TILE, quantizer._CUDA_WIN_ROWS)
    monkeypatch.setattr(quantizer, "_sizes", lambda device: (*sizes, 1 << 21, 1 << 18))
    assert torch.equal(search(mu, std, 16, device="cpu"), _exact(16))


def test_ties_go_to_the_first_index() -> None:
    """Exact float64 ties: duplicated codewords, candidates offered in any order."""
    cb = codebook(4, 64).clone()
    cb[40] = cb[9]  # codeword 9 and 40 identical: any token scores them equally
    cb[17] = cb[9]
    mu, std = cb[9:10] + 0.01, torch.full((1, 4), 0.3)
    assert int(_exhaustive(mu, std, cb, 1.0)[0]) == 9
    for order in ([40, 17, 9, 3], [9, 40, 17, 3], [3, 17, 40, 9]):
        out = torch.full((1,), -1, dtype=torch.int64)
        _rescore(mu, std, cb, 1.0, torch.zeros(4, dtype=torch.int64), torch.tensor(order), out)
        assert int(out[0]) == 9


@pytest.mark.parametrize("g", [16, 5, 1])
def test_float64_terms_are_summed_in_one_fixed_order(g: int) -> None:
    x = torch.randn(3, 7, g, dtype=torch.float64) * torch.logspace(-8, 8, g, dtype=torch.float64)

    def tree(v: list[torch.Tensor]) -> torch.Tensor:
        while len(v) > 1:
            half = (len(v) + 1) // 2
            v = [v[i] + (v[i + half] if i + half < len(v) else 0.0) for i in range(half)]
        return v[0]

    want = tree([x[..., i] for i in range(g)])
    assert torch.equal(_sum_terms(x), want)
    assert torch.equal(_sum_terms(x.transpose(0, 1).contiguous()).transpose(0, 1), want)


def test_reduced_matmul_precision_and_autocast_do_not_reach_the_search() -> None:
    mu, std = _tokens(16)
    exact = _exact(16)
    try:
        torch.set_float32_matmul_precision("medium")  # bf16 CPU matmuls where supported
        assert gemm_input_error("cpu") == 2.0**-7
        with ieee_gemm("cpu"):
            with ieee_gemm("cpu"):  # nested, as two searches on two threads
                assert gemm_input_error("cpu") == 0.0
            assert gemm_input_error("cpu") == 0.0
        assert torch.backends.mkldnn.matmul.fp32_precision == "bf16"  # the user's, restored
        assert torch.equal(search(mu, std, 16), exact)
    finally:
        torch.set_float32_matmul_precision("highest")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(search(mu, std, 16), exact)


def test_guard_widened_for_tf32_stays_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the guard does if a GEMM ran in TF32 (inputs cut to 10 bits): wider shortlists,
    more exhaustive fallbacks, the same tokens."""
    monkeypatch.setattr(quantizer, "gemm_input_error", lambda device: 2.0**-10)
    mu, std = _tokens(8)
    assert torch.equal(search(mu, std, 8, 8192, device="cpu"), _exact(8, 8192))


def test_quantize_and_dequantize_take_a_device() -> None:
    g = torch.Generator().manual_seed(0)
    moments = torch.randn(2, 32, 5, 7, generator=g)
    idx, zhat = quantize(moments, 16)
    idx_d, zhat_d = quantize(moments, 16, device="cpu")
    assert torch.equal(idx, idx_d) and torch.equal(zhat, zhat_d)
    assert torch.equal(
        quantize(moments.bfloat16(), 16)[0], quantize(moments.bfloat16().float(), 16)[0]
    )
    assert torch.equal(dequantize(idx, 16), zhat)


def test_network_precision(model) -> None:  # noqa: ANN001
    rgb = read_image(DATA / "photo_a.jpg").rgb[:128, :128]
    x = _prepare(model, rgb, "replicate")
    fp32 = model.moments(x)
    try:
        model.to("cpu", precision="bf16")
        bf16 = model.moments(x)
        tokens_bf16 = model.quantize(bf16)[0]
        img = model.decode_indices(tokens_bf16)
    finally:
        model.to("cpu", precision="fp32")
    assert bf16.dtype == torch.float32 and img.dtype == torch.float32
    assert 0 < (bf16 - fp32).abs().max() < 0.5
    tokens = model.quantize(fp32)[0]
    assert torch.equal(model.quantize(model.moments(x))[0], tokens)  # fp32 again: the same
    assert (tokens_bf16 == tokens).float().mean() > 0.2
    with pytest.raises(ValueError):
        model.to("cpu", precision="fp16")
    with pytest.raises(ValueError), network_precision(torch.device("cpu"), "int8"):
        pass


def test_host_batch_on_cpu_is_a_plain_concatenation(model) -> None:  # noqa: ANN001
    parts = [torch.randn(1, 3, 16, 16), torch.randn(2, 3, 16, 16)]
    batch = host_batch(model, parts)
    assert torch.equal(batch, torch.cat(parts)) and not batch.is_pinned()


def test_decode_workers_and_precision_options(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for name in ("photo_a.jpg", "photo_b.png", "photo_c.jpg"):
        shutil.copy(DATA / name, src / name)
    r = runner.invoke(app, ["encode", str(src), "-o", str(tmp_path / "gq"), "-q", "--workers", "2"])
    assert r.exit_code == 0, r.output
    outs = {}
    for workers in ("0", "3"):
        dst = tmp_path / f"png{workers}"
        args = ["decode", str(tmp_path / "gq"), "-o", str(dst), "-q", "--workers", workers]
        r = runner.invoke(app, args)
        assert r.exit_code == 0, r.output
        outs[workers] = {p.name: np.asarray(read_image(p).rgb) for p in sorted(dst.iterdir())}
    assert outs["0"].keys() == outs["3"].keys() and len(outs["0"]) == 3
    assert all(np.array_equal(outs["0"][k], outs["3"][k]) for k in outs["0"])
    r = runner.invoke(app, ["encode", str(src / "photo_a.jpg"), "-o", str(tmp_path / "b.gq"),
                            "--precision", "bf16", "-q"])  # fmt: skip
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["decode", str(tmp_path / "b.gq"), "--precision", "fp16"])
    assert r.exit_code == 2


def test_cuda_precision_switches_without_a_gpu() -> None:
    """The TF32 switches are process settings that a CPU build holds too: what the search and
    an fp32 network pass on CUDA set, and what they leave behind."""
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    before = (matmul.fp32_precision, conv.fp32_precision)
    try:
        matmul.fp32_precision, conv.fp32_precision = "tf32", "tf32"
        assert gemm_input_error("cuda") == 2.0**-10
        with ieee_gemm("cuda"):
            assert gemm_input_error("cuda") == 0.0
        assert matmul.fp32_precision == "tf32"
        with network_precision(torch.device("cuda"), "fp32"):
            assert (matmul.fp32_precision, conv.fp32_precision) == ("ieee", "ieee")
        assert (matmul.fp32_precision, conv.fp32_precision) == ("tf32", "tf32")
        assert gemm_input_error("meta") == 2.0**-7  # a backend gqtok does not know: bf16's
    finally:
        matmul.fp32_precision, conv.fp32_precision = before
