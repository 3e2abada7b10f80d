"""The colour correction of a version 5 ``.gq`` file: an affine map of the decoded RGB that the
encoder fits to the original and the decoder applies after the network (and the resampling).

Why: at high rates most of what the decoder gets wrong is one colour and contrast bias per
image (its channels' means ~0.5 level off, their spread up to a few per cent low); 24 bytes of
gains and offsets take it away (+0.18 dB at quality 75, +0.37 at 90, +0.57 at 100 on the
held-out photos: bench/color_fit.py). The map is integer arithmetic, so every platform decodes
the same pixels: with gains G (3 x 3, in 1/4096, stored as G - 4096 I) and offsets o (in 1/16
of a level), each output channel is

    y_i = clip(floor((sum_j G_ij x_j + 256 o_i + 2048) / 4096), 0, 255)

(docs/format.md, version 5).
"""

from __future__ import annotations

import numpy as np

GAIN_ONE = 4096  # a gain of 1
OFFSET_STEP = 16  # offsets in 1/16 of a level
VALUES = 12  # 9 gains (row i: output channel i), then 3 offsets: container.COLOR_VALUES
INT16 = (-32768, 32767)
BLOCK = 1 << 18  # pixels per step: bounds the int64 scratch to a few MB
FIT_PIXELS = 1 << 20  # the fit looks at most at this many pixels (a regular subsample)


def check_color(color: tuple[int, ...]) -> tuple[int, ...]:
    """``color`` if it is 12 integers in the int16 range, else ValueError."""
    if len(color) != VALUES or not all(
        isinstance(v, int | np.integer) and INT16[0] <= v <= INT16[1] for v in color
    ):
        raise ValueError(f"a colour correction is {VALUES} int16 values")
    return tuple(int(v) for v in color)


def _matrix(color: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    gains = np.array(color[:9], dtype=np.int64).reshape(3, 3) + GAIN_ONE * np.eye(3, dtype=np.int64)
    return gains, np.array(color[9:], dtype=np.int64) * (GAIN_ONE // OFFSET_STEP)


def apply_color(rgb: np.ndarray, color: tuple[int, ...]) -> np.ndarray:
    """(H, W, 3) uint8 through the map (a new array); ``()`` leaves it as it is."""
    if not color:
        return rgb
    gains, offsets = _matrix(check_color(color))
    flat = rgb.reshape(-1, 3)
    out = np.empty_like(flat)
    for i in range(0, len(flat), BLOCK):
        acc = flat[i : i + BLOCK].astype(np.int64) @ gains.T + offsets + GAIN_ONE // 2
        np.clip(acc >> 12, 0, 255, out=acc)  # >> is floor division by 4096
        out[i : i + BLOCK] = acc
    return out.reshape(rgb.shape)


def _sse(a: np.ndarray, b: np.ndarray) -> int:
    d = a.astype(np.int64) - b
    return int(np.einsum("ij,ij->", d.reshape(-1, 3), d.reshape(-1, 3)))


def fit_color(original: np.ndarray, decoded: np.ndarray) -> tuple[int, ...]:
    """The map (12 values) that brings ``decoded`` closest to ``original`` in squared error
    (least squares, then quantised), or ``()`` when the quantised map is no better."""
    if original.shape != decoded.shape or original.ndim != 3 or original.shape[2] != 3:
        raise ValueError(f"shapes differ: {original.shape} vs {decoded.shape}")
    x, d = original.reshape(-1, 3), decoded.reshape(-1, 3)
    step = max(1, len(x) // FIT_PIXELS)
    xs, ds = x[::step].astype(np.float64), d[::step].astype(np.float64)
    a = np.c_[ds, np.ones(len(ds))]
    m, *_ = np.linalg.lstsq(a, xs, rcond=None)  # (4, 3): x_i = sum_j m[j, i] d_j + m[3, i]
    gains = np.rint(m[:3].T * GAIN_ONE) - GAIN_ONE * np.eye(3)
    offsets = np.rint(m[3] * OFFSET_STEP)
    values = np.clip(np.concatenate([gains.reshape(-1), offsets]), *INT16).astype(np.int64)
    color = tuple(int(v) for v in values)
    if _sse(original, apply_color(decoded, color)) >= _sse(original, decoded):
        return ()
    return color
