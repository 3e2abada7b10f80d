"""Gaussian Quant: pick, per token, the codeword maximising log q(c|x) - beta * log p(c).

The search is written as a matrix product so it runs at GEMM speed: with a = 1/s^2,

    score_j = sum_i beta*c_ji^2 - ((c_ji - m_i)/s_i)^2
            = sum_i c_ji^2 * (beta - a_i) + c_ji * (2 m_i a_i) + const(token).

That expanded float32 form cancels catastrophically when s is tiny (a ~ 1e13), so it is only
used to shortlist: every codeword whose approximate score lies within twice a rigorous rounding
bound of the approximate maximum is re-scored in float64 with the direct form, and tokens whose
shortlist is too long are searched exhaustively in float64. The result is the exact argmax
(first index on ties) for every input, not just for well-conditioned ones.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import torch

from .codebooks import codebook_view

Layout = Literal["bchw", "blc"]
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0
_F32_EPS = 2.0**-24  # unit roundoff of float32
_SHORTLIST_CAP = 4096  # codewords; longer shortlists are searched exhaustively
_ROW_CHUNK = 256  # tokens per GEMM block: score block 256 x K floats (64 MB at K=2^16); fewer,
# larger parallel regions also keep torch threads from stalling on a busy machine (3x at 64)
_BLOCK = 64  # codewords per max-group in the shortlist pass
_COL_TILE = 2048  # codewords per GEMM tile: a 256 x 2048 float32 tile (2 MB) is still in cache
# when the group max reads it back; whole 64 MB rows went to memory and back (2x slower)


@lru_cache(maxsize=8)
def _search_tables(
    dim: int, size: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(K, 2G) matrix [c^2, c], per-dimension max c^2 and max |c| for the error bound."""
    cb = codebook_view(dim, size, seed)
    table = torch.cat([cb * cb, cb], dim=1).contiguous()
    return table, (cb * cb).amax(0), cb.abs().amax(0)


def _exact_scores(
    mu: torch.Tensor, std: torch.Tensor, cb: torch.Tensor, beta: float
) -> torch.Tensor:
    """Direct-form float64 scores of tokens (R, G) against codewords (R, J, G) or (J, G)."""
    c = cb.double()
    m = mu.double().unsqueeze(-2)
    s = std.double().unsqueeze(-2)
    return (beta * c * c - ((c - m) / s) ** 2).sum(-1)


def _exhaustive(mu: torch.Tensor, std: torch.Tensor, cb: torch.Tensor, beta: float) -> torch.Tensor:
    """Exact argmax over the whole codebook, a few tokens at a time (bounded memory)."""
    out = torch.empty(mu.shape[0], dtype=torch.int64)
    step = max(1, (1 << 21) // (cb.shape[0] * cb.shape[1]))
    for r in range(0, mu.shape[0], step):
        scores = _exact_scores(mu[r : r + step], std[r : r + step], cb, beta)
        out[r : r + step] = scores.argmax(dim=1)
    return out


def search(
    mu: torch.Tensor,
    std: torch.Tensor,
    dim: int,
    size: int = 65536,
    seed: int = 42,
    beta: float = 1.0,
    row_chunk: int = _ROW_CHUNK,
) -> torch.Tensor:
    """Exact GQ argmax for tokens mu, std of shape (N, dim); returns int64 indices (N,).

    Per block of tokens: one GEMM gives approximate scores (R, K); a max over groups of
    _BLOCK codewords finds the groups that may hold the winner; only those are re-scored exactly.
    """
    cb = codebook_view(dim, size, seed)
    table, c2max, cmax = _search_tables(dim, size, seed)
    k = cb.shape[0]
    block = _BLOCK if k % _BLOCK == 0 else 1
    n_blocks = k // block
    n = mu.shape[0]
    out = torch.empty(n, dtype=torch.int64)
    # gamma_n for the length-2G dot product, plus slack for forming a and c^2 in float32.
    gamma = (2 * dim + 6) * _F32_EPS
    tile = _COL_TILE if block > 1 and k % _COL_TILE == 0 else k
    buf = torch.empty(min(row_chunk, n) * tile)
    offsets = torch.arange(block)
    for r0 in range(0, n, row_chunk):
        m = mu[r0 : r0 + row_chunk]
        s = std[r0 : r0 + row_chunk]
        rows_here = m.shape[0]
        inv = 1.0 / (s * s)
        a1 = beta - inv
        a2 = 2.0 * m * inv
        coef = torch.cat([a1, a2], dim=1)
        if tile == k:
            scores = torch.mm(coef, table.t(), out=buf[: rows_here * k].view(rows_here, k))
            bmax = scores.view(rows_here, n_blocks, block).amax(dim=2) if block > 1 else scores
        else:
            bmax = torch.empty(rows_here, n_blocks)
            part = buf[: rows_here * tile].view(rows_here, tile)
            for c0 in range(0, k, tile):
                torch.mm(coef, table[c0 : c0 + tile].t(), out=part)
                torch.amax(part.view(rows_here, tile // block, block), dim=2,
                           out=bmax[:, c0 // block : (c0 + tile) // block])
        top = bmax.amax(dim=1)
        bound = gamma * ((a1.abs() * c2max).sum(1) + (a2.abs() * cmax).sum(1))
        # A codeword whose exact score could beat the approximate winner scores above thr.
        thr = top - 2.0 * bound * (1.0 + 1e-3)
        cand = bmax >= thr.unsqueeze(1)
        counts = cand.sum(dim=1, dtype=torch.int32)
        short = torch.isfinite(top) & torch.isfinite(thr) & (counts * block <= _SHORTLIST_CAP)
        rows = torch.nonzero(short).squeeze(1)
        if rows.numel():
            r_idx, b_idx = torch.nonzero(cand[rows], as_tuple=True)  # sorted by row, then block
            j_idx = (b_idx.unsqueeze(1) * block + offsets).reshape(-1)
            r_idx = r_idx.repeat_interleave(block)
            exact = _exact_scores(m[rows][r_idx], s[rows][r_idx], cb[j_idx].unsqueeze(1), beta)
            exact = exact.squeeze(1)
            best = torch.full((rows.numel(),), float("-inf"), dtype=torch.float64)
            best.scatter_reduce_(0, r_idx, exact, reduce="amax", include_self=True)
            is_best = exact == best[r_idx]
            first = torch.full((rows.numel(),), k, dtype=torch.int64)
            first.scatter_reduce_(0, r_idx[is_best], j_idx[is_best], reduce="amin")
            out[r0 + rows] = first
        rest = torch.nonzero(~short).squeeze(1)
        if rest.numel():
            out[r0 + rest] = _exhaustive(m[rest], s[rest], cb, beta)
    return out


def search_naive(
    mu: torch.Tensor,
    std: torch.Tensor,
    dim: int,
    size: int = 65536,
    seed: int = 42,
    beta: float = 1.0,
    row_chunk: int = 16,
) -> torch.Tensor:
    """Reference broadcast search in float32 direct form (the upstream kernel formula)."""
    cb = codebook_view(dim, size, seed)
    out = torch.empty(mu.shape[0], dtype=torch.int64)
    for r in range(0, mu.shape[0], row_chunk):
        m = mu[r : r + row_chunk].unsqueeze(1)
        s = std[r : r + row_chunk].unsqueeze(1)
        scores = (beta * cb * cb - ((cb - m) / s) ** 2).sum(-1)
        out[r : r + row_chunk] = scores.argmax(dim=1)
    return out


def _to_blc(moments: torch.Tensor, layout: Layout) -> torch.Tensor:
    if layout == "bchw":
        if moments.dim() != 4:
            raise ValueError(f"bchw moments must be 4-D (B, 2C, h, w), got {tuple(moments.shape)}")
        b, c2, h, w = moments.shape
        return moments.permute(0, 2, 3, 1).reshape(b, h * w, c2)
    if layout == "blc":
        if moments.dim() != 3:
            raise ValueError(f"blc moments must be 3-D (B, L, 2C), got {tuple(moments.shape)}")
        return moments
    raise ValueError(f"layout must be 'bchw' or 'blc', got {layout!r}")


def split_moments(
    moments: torch.Tensor, dim: int, layout: Layout = "bchw"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens (N, dim) of posterior means and stds, in the reference's strided token order."""
    x = _to_blc(moments, layout).float()
    b, n_pos, c2 = x.shape
    if c2 % 2 or (c2 // 2) % dim:
        raise ValueError(f"moments have {c2} channels: need 2*C with C divisible by dim={dim}")
    c = c2 // 2
    ng = c // dim
    mu, logvar = x[..., :c], x[..., c:]
    std = torch.exp(0.5 * logvar.clamp(LOGVAR_MIN, LOGVAR_MAX))

    def tokens(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(b, n_pos, dim, ng).permute(0, 1, 3, 2).reshape(-1, dim).contiguous()

    return tokens(mu), tokens(std)


def quantize(
    moments: torch.Tensor,
    dim: int,
    size: int = 65536,
    seed: int = 42,
    beta: float = 1.0,
    layout: Layout = "bchw",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize encoder moments; returns (indices, zhat) in the reference layouts.

    bchw: moments (B, 2C, h, w) -> indices (B, NG, h, w), zhat (B, C, h, w)
    blc:  moments (B, L, 2C)    -> indices (B, L, NG),    zhat (B, L, C)
    """
    x = _to_blc(moments, layout)
    if not torch.isfinite(x).all():
        raise ValueError("moments contain NaN or infinity")
    with torch.inference_mode():
        mu, std = split_moments(moments.detach().cpu(), dim, layout)
        flat = search(mu, std, dim, size, seed, beta)
    b, n_pos, c2 = x.shape
    ng = c2 // 2 // dim
    idx = flat.reshape(b, n_pos, ng)
    if layout == "bchw":
        h, w = moments.shape[2], moments.shape[3]
        idx = idx.reshape(b, h, w, ng).permute(0, 3, 1, 2).contiguous()
    idx = idx.to(moments.device)
    return idx, dequantize(idx, dim, size, seed, layout)


def dequantize(
    indices: torch.Tensor, dim: int, size: int = 65536, seed: int = 42, layout: Layout = "bchw"
) -> torch.Tensor:
    """Codeword latents for indices; the exact inverse of quantize's token layout."""
    cb = codebook_view(dim, size, seed)
    idx = indices.long().cpu()
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= size):
        raise ValueError(f"indices must lie in [0, {size})")
    if layout == "bchw":
        if idx.dim() != 4:
            raise ValueError(f"bchw indices must be 4-D (B, NG, h, w), got {tuple(idx.shape)}")
        b, ng, h, w = idx.shape
        vec = cb[idx.permute(0, 2, 3, 1)]  # (B, h, w, NG, G)
        z = vec.transpose(-1, -2).reshape(b, h, w, dim * ng).permute(0, 3, 1, 2)
    elif layout == "blc":
        if idx.dim() != 3:
            raise ValueError(f"blc indices must be 3-D (B, L, NG), got {tuple(idx.shape)}")
        b, n_pos, ng = idx.shape
        z = cb[idx].transpose(-1, -2).reshape(b, n_pos, dim * ng)
    else:
        raise ValueError(f"layout must be 'bchw' or 'blc', got {layout!r}")
    return z.contiguous().to(indices.device)
