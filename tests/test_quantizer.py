"""GQ quantizer: reference vectors exactly, the exact argmax for hostile inputs, layouts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from gqtok.quant import search as quantizer
from gqtok.quant.codebook import codebook
from gqtok.quant.search import (
    _exhaustive,
    _lower_bounds,
    _ranges,
    _search_tables,
    _windows,
    dequantize,
    quantize,
    search,
    search_naive,
    split_moments,
)
from tests.conftest import FIXTURES

VEC = load_file(str(FIXTURES / "gq_vectors.safetensors"))


@pytest.mark.parametrize("name", ["pattern_4x4", "rand_s0_2x32x6x5"])
@pytest.mark.parametrize("dim", [16, 8, 4])
def test_reference_vectors_bchw(name: str, dim: int) -> None:
    moments = VEC[f"{name}.moments"]
    idx, zhat = quantize(moments, dim)
    assert idx.dtype == torch.int64
    assert torch.equal(idx, VEC[f"{name}.g{dim}.indices"])
    assert torch.equal(zhat, VEC[f"{name}.g{dim}.zhat"])
    assert torch.equal(dequantize(idx, dim), zhat)


@pytest.mark.parametrize("dim", [16, 8, 4])
def test_blc_layout_equals_bchw(dim: int) -> None:
    moments = VEC["rand_s0_2x32x6x5.moments"]
    b, c2, h, w = moments.shape
    blc = moments.permute(0, 2, 3, 1).reshape(b, h * w, c2)
    idx, zhat = quantize(blc, dim, layout="blc")
    ref = VEC[f"rand_s0_2x32x6x5.g{dim}.indices"]
    assert idx.shape == (b, h * w, 16 // dim)
    assert torch.equal(idx, ref.permute(0, 2, 3, 1).reshape(b, h * w, 16 // dim))
    assert torch.equal(
        zhat, VEC[f"rand_s0_2x32x6x5.g{dim}.zhat"].permute(0, 2, 3, 1).reshape(b, h * w, 16)
    )
    assert torch.equal(dequantize(idx, dim, layout="blc"), zhat)


def test_strided_token_grouping() -> None:
    # channel g*NG + k belongs to token k as element g
    mu = torch.arange(16.0).reshape(1, 16, 1, 1)
    moments = torch.cat([mu, torch.zeros_like(mu)], dim=1)
    toks, _ = split_moments(moments, 4)
    assert toks.tolist() == [[0, 4, 8, 12], [1, 5, 9, 13], [2, 6, 10, 14], [3, 7, 11, 15]]


def _hostile_tokens(dim: int, n: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(dim)
    mu = torch.randn(n, dim, generator=g) * 2
    logvar = torch.rand(n, dim, generator=g) * 50 - 30
    logvar[:60] = -30 + torch.rand(60, dim, generator=g) * 1e-3  # sigma at the clamp floor
    logvar[60:70] = 0.0
    mu[60:70] = 0.0  # every codeword ties: first index wins
    logvar[70:80] = 20.0
    return mu, torch.exp(0.5 * logvar.clamp(-30, 20))


@pytest.mark.parametrize("dim", [16, 4])
def test_search_equals_exact_argmax_for_hostile_tokens(dim: int) -> None:
    mu, std = _hostile_tokens(dim)
    exact = _exhaustive(mu, std, codebook(dim), 1.0)
    got = search(mu, std, dim)
    assert torch.equal(got, exact)
    assert got[60:70].tolist() == [0] * 10


@pytest.mark.parametrize("dim", [16, 4])
def test_near_ties_at_tiny_sigma_are_exact(dim: int) -> None:
    """Means halfway between a codeword and its nearest neighbour, sigma at the clamp floor."""
    cb = codebook(dim)
    g = torch.Generator().manual_seed(1)
    js = torch.randint(0, cb.shape[0], (40,), generator=g)
    d = torch.cdist(cb[js], cb)
    d[torch.arange(40), js] = float("inf")
    nn = d.argmin(1)
    t = torch.rand(40, 1, generator=g) * 1e-5 - 0.5e-5
    mu = (0.5 + t) * cb[js] + (0.5 - t) * cb[nn]
    std = torch.full_like(mu, float(torch.exp(torch.tensor(-15.0))))
    exact = _exhaustive(mu, std, cb, 1.0)
    assert torch.equal(search(mu, std, dim), exact)
    assert ((exact == js) | (exact == nn)).all()
    if dim == 4:
        # The unguarded float32 GEMM expansion picks wrong codewords here: the guard matters.
        inv = 1 / std**2
        approx = ((1 - inv) @ (cb * cb).t() + (2 * mu * inv) @ cb.t()).argmax(1)
        assert (approx != exact).sum() > 0


def test_search_with_other_beta_matches_naive_direct_form() -> None:
    g = torch.Generator().manual_seed(5)
    mu = torch.randn(64, 8, generator=g)
    std = torch.exp(0.5 * (torch.rand(64, 8, generator=g) * 3 - 3))
    for beta in (0.0, 0.5, 2.0):
        assert torch.equal(
            search(mu, std, 8, 4096, beta=beta), _exhaustive(mu, std, codebook(8, 4096), beta)
        )
    assert torch.equal(search(mu, std, 8, 4096), search_naive(mu, std, 8, 4096))


@pytest.mark.parametrize("n_pos", [1, 2, 3, 7])
def test_fewer_than_eight_tokens_work(n_pos: int) -> None:
    moments = torch.randn(1, 32, 1, n_pos)
    idx, zhat = quantize(moments, 16)
    assert idx.shape == (1, 1, 1, n_pos)
    assert zhat.shape == (1, 16, 1, n_pos)


def test_odd_codebook_size_and_errors() -> None:
    moments = torch.randn(2, 32, 3, 5)
    idx, _ = quantize(moments, 8, size=1000)
    mu, std = split_moments(moments, 8)
    assert torch.equal(
        idx.permute(0, 2, 3, 1).reshape(-1), _exhaustive(mu, std, codebook(8, 1000), 1.0)
    )
    with pytest.raises(ValueError):
        quantize(torch.randn(1, 30, 2, 2), 16)
    with pytest.raises(ValueError):
        quantize(torch.full((1, 32, 2, 2), float("nan")), 16)
    with pytest.raises(ValueError):
        dequantize(torch.full((1, 1, 2, 2), 65536), 16)


def _model_like_tokens(n: int = 256, dim: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens shaped like a trained GQ encoder's: a few sharp channels, the rest near the prior
    (the default model's median sigmas per channel run from 0.017 to 0.995)."""
    g = torch.Generator().manual_seed(7)
    sharp = torch.tensor([0.02, 0.1, 0.12, 0.4, 0.5])
    sigma = torch.ones(n, dim) * (0.9 + 0.15 * torch.rand(n, dim, generator=g))
    sigma[:, : sharp.numel()] = sharp * torch.exp(0.3 * torch.randn(n, sharp.numel(), generator=g))
    spread = torch.sqrt((1 - sigma**2).clamp(min=0.01))
    mu = torch.randn(n, dim, generator=g) * spread
    return mu, sigma


def test_windowed_search_is_exact_on_model_like_tokens() -> None:
    mu, std = _model_like_tokens()
    assert torch.equal(search(mu, std, 16), _exhaustive(mu, std, codebook(16), 1.0))


@pytest.mark.parametrize(("dim", "size"), [(16, 8192 + 5), (8, 65536 + 63)])
def test_an_unaligned_codebook_size_is_searched_exactly(dim: int, size: int) -> None:
    """A size that is not a multiple of 64 (a hand-picked --codebook-size): the aligned prefix
    is searched fast and its winner set against the tail; the exhaustive argmax decides what
    is right, including tokens that sit on a tail codeword and the hostile ones."""
    mu, std = _model_like_tokens(256, dim)
    cb = codebook(dim, size)
    tail = torch.arange(size - size % 64, size)
    mu[:len(tail)] = cb[tail]  # these must pick the tail codeword they sit on
    std[:len(tail)] = 1e-3
    got = search(mu, std, dim, size)
    assert torch.equal(got, _exhaustive(mu, std, cb, 1.0))
    assert torch.equal(got[: len(tail)], tail)
    hm, hs = _hostile_tokens(dim)
    assert torch.equal(search(hm, hs, dim, size), _exhaustive(hm, hs, cb, 1.0))


def test_windows_hold_the_winner_and_prune_most_codewords() -> None:
    mu, std = _model_like_tokens()
    cb = codebook(16)
    table, _, _ = _search_tables(16, 65536, 42)
    lower = _lower_bounds(mu, std, cb, table, 1.0)
    d, lo, hi = _windows(mu, std, _ranges(16, 65536, 42), 1.0, lower)
    winner = _exhaustive(mu, std, cb, 1.0)
    c = cb[winner, d].double()
    assert ((lo <= c) & (c <= hi)).all()
    inside = (cb[:, d].t().double() >= lo.unsqueeze(1)) & (cb[:, d].t().double() <= hi.unsqueeze(1))
    assert inside.double().mean() < 0.1  # the window search scans a small share


def test_uneven_gemm_tiles_map_columns_back(monkeypatch: pytest.MonkeyPatch) -> None:
    # 4096 codewords in 64 groups of 64, at most 3 groups per tile: 22 tiles, the last of 1
    monkeypatch.setattr(quantizer, "_COL_TILE", 192)
    g = torch.Generator().manual_seed(3)
    mu = torch.randn(100, 8, generator=g)
    std = torch.exp(0.5 * (torch.rand(100, 8, generator=g) * 3 - 3))
    assert torch.equal(search(mu, std, 8, 4096), _exhaustive(mu, std, codebook(8, 4096), 1.0))


@pytest.mark.parametrize("env, expected", [("", "True"), ("system", "False")])
def test_allocator_tuning_and_its_opt_out(env: str, expected: str) -> None:
    code = "from gqtok.io.allocator import retain_freed_memory as r; print(r(), r())"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "GQTOK_MALLOC": env},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == [expected, expected]
