"""Synthetic film grain added at decode time (``--grain S``): the classical codecs' answer to
the texture a low rate cannot carry (AV1 film grain synthesis, JPEG XL photon noise).

A decoder trained for L1 returns the mean of what the tokens allow, which is smoother than any
photo; Gaussian noise of a few 8-bit levels restores the high-frequency energy a viewer (and
a patch FID) expects, at a small, known PSNR cost (sigma^2 of MSE before clipping). Measured
on the 22 held-out photos at the default's rate: README, "Film grain at decode time".

The noise is a pure function of the token grid and the pixel position (bands of ``BAND`` rows,
each from its own seeded generator), so decoding a file gives the same pixels every time,
whatever the memory budget or tiling, and different images get different grain.
"""

from __future__ import annotations

import hashlib
import math
import numbers

import numpy as np
import torch

BAND = 64  # rows drawn per generator: bounds the float scratch to BAND x W x 3
MAX_GRAIN = 32.0  # 8-bit levels; beyond this the picture is noise, not grain


def check_grain(sigma: float) -> float:
    """sigma as a float in [0, MAX_GRAIN] (ValueError / TypeError otherwise)."""
    if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real):
        raise TypeError(f"grain must be a number of 8-bit levels, got {sigma!r}")
    if not (math.isfinite(sigma) and 0.0 <= sigma <= MAX_GRAIN):
        raise ValueError(f"grain must be from 0 to {MAX_GRAIN:g} (8-bit levels), got {sigma}")
    return float(sigma)


def grain_seed(indices: torch.Tensor) -> int:
    """A 64-bit seed from the token grid, so each image gets its own grain pattern."""
    h = hashlib.blake2b(digest_size=8, person=b"gqtok-grain")
    h.update(repr(tuple(indices.shape)).encode())
    h.update(np.ascontiguousarray(indices.cpu().numpy().astype("<i8")).tobytes())
    return int.from_bytes(h.digest(), "little")


def add_grain(rgb: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """(H, W, 3) uint8 with N(0, sigma^2) noise, rounded to whole levels, added to every
    sample and clipped, in place; returns ``rgb``. sigma = 0 leaves it as it is."""
    sigma = check_grain(sigma)
    if sigma == 0.0:
        return rgb
    height = rgb.shape[0]
    for band, top in enumerate(range(0, height, BAND)):
        rows = rgb[top : top + BAND]
        noise = np.random.default_rng([seed, band]).standard_normal(rows.shape, np.float32)
        noise *= np.float32(sigma)
        np.rint(noise, out=noise)  # whole levels first: the same offsets on any base pixels
        noise += rows
        np.clip(noise, 0, 255, out=noise)
        rows[...] = noise.astype(np.uint8)
    return rgb
