"""Token layouts: where GQ's tokens sit in the networks' tensors, and back.

Convolutional models give moments as (B, 2C, h, w) ("bchw"), the reference ViT as (B, L, 2C)
("blc"). Either way a position's C latent channels form NG = C / G tokens in the reference's
strided order: token k holds channels k, k+NG, ..., k+(G-1)NG. The search itself
(gqtok.quant.search) only ever sees flat (N, G) tokens.
"""

from __future__ import annotations

from typing import Literal

import torch

Layout = Literal["bchw", "blc"]
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0  # the reference's clamp of the encoder's log-variances


def to_blc(moments: torch.Tensor, layout: Layout) -> torch.Tensor:
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
    x = to_blc(moments, layout).float()
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


def grid_from_tokens(
    flat: torch.Tensor, moments_shape: torch.Size, dim: int, layout: Layout
) -> torch.Tensor:
    """Flat per-token indices (N,) as the grid of the moments they came from: (B, NG, h, w)
    for bchw, (B, L, NG) for blc."""
    if layout == "bchw":
        b, c2, h, w = moments_shape
        ng = c2 // 2 // dim
        return flat.reshape(b, h, w, ng).permute(0, 3, 1, 2).contiguous()
    b, n_pos, c2 = moments_shape
    return flat.reshape(b, n_pos, c2 // 2 // dim)


def latent_from_codewords(cb: torch.Tensor, idx: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Codeword latents for an index grid: (B, C, h, w) for bchw, (B, L, C) for blc."""
    dim = cb.shape[1]
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
    return z.contiguous()
