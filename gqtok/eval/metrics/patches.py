"""Patch FID / KID, the HiFiC protocol (Mentzer et al. 2020, "High-Fidelity Generative Image
Compression", section 4.3).

FID over a few dozen whole photos is dominated by estimator bias. HiFiC instead cuts each
full-resolution image into 256x256 patches: the non-overlapping grid starting at (0, 0), plus a
second grid shifted by 128 px in both directions, partial patches dropped. Original and
reconstruction are cut at the same positions, every patch goes through the FID Inception
network (resized to 299x299 like any image), and FID/KID are computed over the patch features.
Images smaller than 256 px in a side give no patches.

Features are accumulated image by image and computed in small batches, so memory holds one
batch of patches and the (n, 2048) feature matrices, never all patches.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from gqtok.eval.metrics.inception import (
    FEATURES,
    KID,
    InceptionFeatures,
    frechet_distance,
    kernel_inception_distance,
)

PATCH = 256
FID_MIN_PATCHES = 2048  # below the feature size the covariances are rank-deficient: FID biased
BATCH = 16


def patch_grid(height: int, width: int, size: int = PATCH) -> list[tuple[int, int]]:
    """(top, left) of every whole patch: the grid at (0, 0), then the grid at (size/2, size/2)."""
    out = []
    for offset in (0, size // 2):
        for top in range(offset, height - size + 1, size):
            for left in range(offset, width - size + 1, size):
                out.append((top, left))
    return out


def iter_patches(
    rgb: np.ndarray, size: int = PATCH, batch: int = BATCH
) -> Iterator[np.ndarray]:
    """The patches of ``patch_grid`` as (b, size, size, 3) uint8 stacks of at most ``batch``."""
    grid = patch_grid(rgb.shape[0], rgb.shape[1], size)
    for i in range(0, len(grid), batch):
        yield np.stack([rgb[t : t + size, x : x + size] for t, x in grid[i : i + batch]])


def patch_features(
    inception: InceptionFeatures, rgb: np.ndarray, size: int = PATCH, batch: int = BATCH
) -> np.ndarray:
    """(n, 2048) Inception features of the n patches of one (H, W, 3) uint8 image."""
    feats = [inception.batch(p) for p in iter_patches(rgb, size, batch)]
    return np.concatenate(feats) if feats else np.zeros((0, FEATURES))


class PatchFID:
    """Accumulates patch features of (original, reconstruction) pairs; FID/KID at the end.

    ``add`` cuts and measures an image pair; ``add_features`` takes features measured
    elsewhere (gqtok eval's ranks each measure their images, rank 0 accumulates)."""

    def __init__(self, inception: InceptionFeatures | None = None, size: int = PATCH) -> None:
        self.inception, self.size = inception, size
        self._a: list[np.ndarray] = []
        self._b: list[np.ndarray] = []
        self.patches = 0

    def add(self, original: np.ndarray, reconstruction: np.ndarray) -> int:
        """Add one image pair (same size); returns its patch count."""
        if original.shape != reconstruction.shape:
            raise ValueError(f"shapes differ: {original.shape} vs {reconstruction.shape}")
        if self.inception is None:
            raise ValueError("no Inception network to measure patches with: use add_features")
        a = patch_features(self.inception, original, self.size)
        if len(a):
            self.add_features(a, patch_features(self.inception, reconstruction, self.size))
        return len(a)

    def add_features(self, original: np.ndarray, reconstruction: np.ndarray) -> None:
        """Add the (n, 2048) patch features of one image pair, kept in float64 as FID and KID
        compute (float32 features convert exactly)."""
        if original.shape != reconstruction.shape:
            raise ValueError(f"shapes differ: {original.shape} vs {reconstruction.shape}")
        if len(original):
            self._a.append(np.asarray(original, np.float64))
            self._b.append(np.asarray(reconstruction, np.float64))
            self.patches += len(original)

    def features(self) -> tuple[np.ndarray, np.ndarray]:
        if not self._a:
            return np.zeros((0, FEATURES)), np.zeros((0, FEATURES))
        return np.concatenate(self._a), np.concatenate(self._b)

    def fid(self) -> float | None:
        """None with fewer than 2 patches."""
        return frechet_distance(*self.features()) if self.patches >= 2 else None

    def kid(self) -> KID | None:
        """None with fewer than 4 patches."""
        return kernel_inception_distance(*self.features()) if self.patches >= 4 else None
