"""ViT encoder/decoder of the GQ reference's ``bsqvit_gq_*`` models, parameter-compatible.

Module and parameter names follow the reference (``positional_embedding``, ``conv1``,
``transformer.resblocks.{i}.attn.in_proj_weight``, ``ffn.0``, ``quant_embed``...), so released
checkpoints load with a plain ``load_state_dict``. ``tokens`` is the reference forward on one
``image_size`` square ("blc": raster patch order); ``forward`` is the grid interface the rest
of gqtok uses (images of any size that is a multiple of the patch, latents as (B, C, h, w)):
the learned position embedding fixes the input size, so it runs the reference on tiles.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from gqtok.nets.config import ViTConfig
from gqtok.nets.tiling import decode_tiled, encode_tiled


class ResidualAttentionBlock(nn.Module):
    """Pre-LN transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, width: int, heads: int, mlp_width: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(width, mlp_width)),
                    ("gelu", nn.GELU()),
                    ("c_proj", nn.Linear(mlp_width, width)),
                ]
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(cfg.width, cfg.heads, cfg.mlp_width) for _ in range(cfg.layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x)
        return x


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, L, C*p*p): raster patch order, channel-major inside a patch."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // p) * (w // p), c * p * p)


def unpatchify(x: torch.Tensor, p: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """Inverse of patchify."""
    b = x.shape[0]
    c = x.shape[2] // (p * p)
    x = x.reshape(b, grid_h, grid_w, c, p, p).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, grid_h * p, grid_w * p)


class ViTEncoder(nn.Module):
    """Image (B, 3, H, W) in [-1, 1] -> moments (B, 2C, H/p, W/p)."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.positional_embedding = nn.Parameter(torch.zeros(cfg.grid**2, cfg.width))
        self.conv1 = nn.Linear(3 * cfg.patch_size**2, cfg.width, bias=False)
        self.ln_pre = nn.LayerNorm(cfg.width)
        self.transformer = Transformer(cfg)
        self.ln_post = nn.LayerNorm(cfg.width)
        z_out = 2 * cfg.z_channels if cfg.double_z else cfg.z_channels
        self.quant_embed = nn.Linear(cfg.width, z_out)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Reference forward: images (B, 3, S, S), S = image_size -> (B, L, 2C)."""
        h = self.conv1(patchify(x, self.cfg.patch_size)) + self.positional_embedding
        h = self.ln_post(self.transformer(self.ln_pre(h)))
        return self.quant_embed(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        return encode_tiled(self.tokens, x, c.image_size, c.patch_size, c.tile_batch)


class ViTDecoder(nn.Module):
    """Latent (B, C, h, w) -> image (B, 3, h*p, w*p), unclamped."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.positional_embedding = nn.Parameter(torch.zeros(cfg.grid**2, cfg.width))
        self.ffn = nn.Sequential(nn.Linear(cfg.width, cfg.dim_ffn_output), nn.Tanh())
        self.conv_out = nn.Linear(cfg.dim_ffn_output, 3 * cfg.patch_size**2)
        self.ln_pre = nn.LayerNorm(cfg.width)
        self.transformer = Transformer(cfg)
        self.ln_post = nn.LayerNorm(cfg.width)
        self.post_quant_embed = nn.Linear(cfg.z_channels, cfg.width)

    def tokens(self, z: torch.Tensor) -> torch.Tensor:
        """Reference forward: latents (B, L, C) of one tile -> images (B, 3, S, S)."""
        h = self.post_quant_embed(z) + self.positional_embedding
        h = self.ln_post(self.transformer(self.ln_pre(h)))
        out = self.conv_out(self.ffn(h))
        g = self.cfg.grid
        return unpatchify(out, self.cfg.patch_size, g, g)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        return decode_tiled(self.tokens, z, c.image_size, c.patch_size, c.tile_batch)
