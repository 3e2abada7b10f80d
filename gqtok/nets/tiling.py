"""Run a fixed-size network on images and latent grids of any size, tile by tile.

A transformer with learned position embeddings only accepts its training size. Tiles are
laid on the latent grid at multiples of the tile; along an axis longer than one tile the last
tile is shifted back to end exactly at the border (overlapping its neighbour) instead of
being padded, so every tile holds real image content. Only an axis shorter than one tile is
padded (by replicating the last row / column: pixels when encoding, tokens when decoding).
Tiles are visited in raster order and later tiles overwrite earlier ones in the overlap, in
both directions, so the last tile always decodes exactly the tokens its encoder produced.
Tile placement depends only on the grid size, which the decoder knows from the file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F


def tile_starts(n: int, tile: int) -> list[int]:
    """Tile origins along an axis of n cells (n >= tile after padding)."""
    if n <= tile:
        return [0]
    return [*range(0, n - tile, tile), n - tile]


def _pad_to(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    ph, pw = max(0, h - x.shape[-2]), max(0, w - x.shape[-1])
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (0, pw, 0, ph), mode="replicate")


def _jobs(b: int, h: int, w: int, t: int) -> list[tuple[int, int, int]]:
    return [(i, y, x) for i in range(b) for y in tile_starts(h, t) for x in tile_starts(w, t)]


def _chunks(jobs: list[tuple[int, int, int]], n: int) -> Iterator[list[tuple[int, int, int]]]:
    for i in range(0, len(jobs), max(1, n)):
        yield jobs[i : i + max(1, n)]


def encode_tiled(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    tile: int,
    patch: int,
    batch: int = 4,
) -> torch.Tensor:
    """Moments (B, K, H/patch, W/patch) from fn: (n, 3, tile, tile) -> (n, L, K), raster L."""
    b, _, height, width = x.shape
    if height % patch or width % patch:
        raise ValueError(f"image sides must be multiples of {patch}, got {height}x{width}")
    h, w, t = height // patch, width // patch, tile // patch
    x = _pad_to(x, max(height, tile), max(width, tile))
    hp, wp = x.shape[-2] // patch, x.shape[-1] // patch
    out: torch.Tensor | None = None
    for chunk in _chunks(_jobs(b, hp, wp, t), batch):
        crops = torch.stack(
            [x[i, :, y * patch : (y + t) * patch, c * patch : (c + t) * patch] for i, y, c in chunk]
        )
        res = fn(crops)
        res = res.reshape(len(chunk), t, t, res.shape[-1]).permute(0, 3, 1, 2)
        if out is None:
            out = res.new_empty(b, res.shape[1], hp, wp)
        for k, (i, y, c) in enumerate(chunk):
            out[i, :, y : y + t, c : c + t] = res[k]
    assert out is not None
    return out[..., :h, :w]


def decode_tiled(
    fn: Callable[[torch.Tensor], torch.Tensor],
    z: torch.Tensor,
    tile: int,
    patch: int,
    batch: int = 4,
) -> torch.Tensor:
    """Images (B, 3, h*patch, w*patch) from fn: latents (n, L, C), raster L -> (n, 3, T, T)."""
    b, _, h, w = z.shape
    t = tile // patch
    z = _pad_to(z, max(h, t), max(w, t))
    hp, wp = z.shape[-2], z.shape[-1]
    out: torch.Tensor | None = None
    for chunk in _chunks(_jobs(b, hp, wp, t), batch):
        crops = torch.stack([z[i, :, y : y + t, c : c + t] for i, y, c in chunk])
        res = fn(crops.flatten(2).transpose(1, 2))
        if out is None:
            out = res.new_empty(b, res.shape[1], hp * patch, wp * patch)
        for k, (i, y, c) in enumerate(chunk):
            out[i, :, y * patch : (y + t) * patch, c * patch : (c + t) * patch] = res[k]
    assert out is not None
    return out[..., : h * patch, : w * patch]
