"""Deterministic resampling of 8-bit images: how an image coded at another scale (format
version 4, docs/format.md) returns to its own size, and how the encoder gets there.

Why gqtok's own filter and not Pillow's: the decoded pixels of a .gq file are part of the
format (every file decodes bit-identically with every later release), so the filter is
specified in docs/format.md and must not move with a library upgrade. It is Keys' cubic
convolution with a = -1/2 (Catmull-Rom), a polynomial, so its coefficients are the same on
every IEEE-754 machine (no libm call); when reducing, its support widens by the ratio
(antialiasing). Each output sample's weights are rounded to integers summing to exactly
2^14; the horizontal pass runs first, and each pass rounds and clips to 8 bits.
"""

from __future__ import annotations

import numpy as np

FRACTION_BITS = 14
ONE = 1 << FRACTION_BITS


def cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel, a = -1/2, at float64 positions ``x`` (support 2)."""
    ax = np.abs(x)
    near = (1.5 * ax - 2.5) * ax * ax + 1.0
    far = ((-0.5 * ax + 2.5) * ax - 4.0) * ax + 2.0
    return np.where(ax < 1.0, near, np.where(ax < 2.0, far, 0.0))


def taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """(first, weights): output sample i is sum_t weights[i, t] * in[first[i] + t] / 2^14,
    in-range taps only (an edge renormalises what is left). weights are int32 and each row
    sums to 2^14."""
    if not (1 <= n_in and 1 <= n_out):
        raise ValueError(f"cannot resample {n_in} samples to {n_out}")
    scale = n_in / n_out
    stretch = max(scale, 1.0)  # reducing widens the kernel: it becomes the low-pass filter
    support = 2.0 * stretch
    centre = (np.arange(n_out, dtype=np.float64) + 0.5) * scale
    lo = np.maximum(np.floor(centre - support + 0.5).astype(np.int64), 0)
    hi = np.minimum(np.floor(centre + support + 0.5).astype(np.int64), n_in)
    width = int((hi - lo).max())
    pos = lo[:, None] + np.arange(width)[None, :]
    valid = pos < hi[:, None]
    w = np.where(valid, cubic((pos + 0.5 - centre[:, None]) / stretch), 0.0)
    w = w / w.sum(axis=1, keepdims=True)
    q = np.round(w * ONE).astype(np.int64)
    # the rounding error goes to each row's largest weight, so every row sums to exactly 2^14
    peak = np.argmax(q, axis=1)
    q[np.arange(n_out), peak] += ONE - q.sum(axis=1)
    return lo, q.astype(np.int32)


BLOCK = 1 << 18  # output samples x channels per accumulator block: bounded memory, warm cache


def _pass(a: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    """Resample uint8 ``a`` along ``axis`` (0 rows, 1 columns) to ``n_out`` samples, in
    blocks of output rows so that the int32 accumulator stays small."""
    n_in = a.shape[axis]
    if n_in == n_out:
        return a
    lo, w = taps(n_in, n_out)
    shape = list(a.shape)
    shape[axis] = n_out
    out = np.empty(shape, dtype=np.uint8)
    row = int(np.prod(shape[1:]))  # values in one output row
    step = max(1, BLOCK // max(1, row))
    for r0 in range(0, shape[0], step):
        r1 = min(shape[0], r0 + step)
        if axis == 0:  # output rows r0..r1 read their own taps
            out[r0:r1] = _block(a, lo[r0:r1], w[r0:r1], n_in, 0)
        else:
            out[r0:r1] = _block(a[r0:r1], lo, w, n_in, 1)
    return out


def _block(a: np.ndarray, lo: np.ndarray, w: np.ndarray, n_in: int, axis: int) -> np.ndarray:
    shape = list(a.shape)
    shape[axis] = len(lo)
    acc = np.full(shape, ONE >> 1, dtype=np.int32)  # + 1/2: round half up after the shift
    wshape = [1] * a.ndim
    wshape[axis] = len(lo)
    for t in range(w.shape[1]):
        idx = np.minimum(lo + t, n_in - 1)  # a padded tap has weight 0; keep its index valid
        acc += np.take(a, idx, axis=axis).astype(np.int32) * w[:, t].reshape(wshape)
    np.right_shift(acc, FRACTION_BITS, out=acc)
    return np.clip(acc, 0, 255).astype(np.uint8)


def resample(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """``rgb`` (H, W[, C]) uint8 at ``width`` x ``height``: columns first, then rows."""
    if rgb.dtype != np.uint8 or rgb.ndim not in (2, 3):
        raise ValueError(f"resample takes (H, W) or (H, W, C) uint8, got {rgb.dtype} {rgb.shape}")
    return np.ascontiguousarray(_pass(_pass(rgb, width, 1), height, 0))


def scaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """The size an image of ``width`` x ``height`` is coded at for ``scale`` (rounded, at
    least 1 pixel a side)."""
    return max(1, round(width * scale)), max(1, round(height * scale))
