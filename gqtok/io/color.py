"""The colour correction of a version 5 or 6 ``.gq`` file: a map of the decoded RGB that the
encoder fits to the original and the decoder applies after the network (and the resampling).

Why: at high rates most of what the decoder gets wrong is one colour and contrast bias per
image (its channels' means ~0.5 level off, their spread up to a few per cent low), and what is
left is mostly detail it renders too soft. Version 5 carries the affine part (24 bytes: +0.18
dB at quality 75, +0.37 at 90, +0.57 at 100 on the held-out photos); version 6 adds a
centre-symmetric 5 x 5 filter across the three channels, the restoration filter of classical
codecs (AV1's Wiener filter, VVC's adaptive loop filter), fitted the same way (217 more bytes:
+0.31 dB more at quality 90; bench/color_fit.py). The map is integer arithmetic, so every
platform decodes the same pixels: with gains G (3 x 3, in 1/4096, stored as G - 4096 I),
offsets o (in 1/16 of a level) and taps H (in 1/4096) on the offsets d of the filter's window,

    y_i = clip(floor((sum_j G_ij x_j(p)
                      + sum_j sum_d H_ijd (x_j(p + d) + x_j(p - d) - 2 x_j(p))
                      + 256 o_i + 2048) / 4096), 0, 255)

with the image's edge pixels repeated outside it (docs/format.md, versions 5 and 6).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

GAIN_ONE = 4096  # a gain of 1
OFFSET_STEP = 16  # offsets in 1/16 of a level
VALUES = 12  # 9 gains (row i: output channel i), then 3 offsets: container.COLOR_VALUES
RADII = (1, 2, 3)  # a version 6 filter's window: (2r + 1) x (2r + 1) pixels
FILTER_RADIUS = 2  # what the encoder fits: r = 3 adds ~0.04 dB for twice the taps and time
INT16 = (-32768, 32767)
BLOCK = 1 << 18  # pixels per step of the affine map (a filter's bands: a quarter of it)
FIT_PIXELS = 1 << 20  # the affine fit looks at most at this many pixels (a regular subsample)
FILTER_FIT_PIXELS = 1 << 17  # the filter's fit: 40 unknowns a channel need far fewer
MIN_FILTER_GAIN = 0.005  # a filter must cut the squared error by 0.5 % (~0.02 dB) to be kept
DB_PER_LOG_RATE = 2.8  # slope of the held-out quality ladder above 75: dB per e-fold of bytes


def offsets(radius: int) -> list[tuple[int, int]]:
    """The window's offsets d, one of each pair +-d: (dy, dx) > (0, 0) in row-major order."""
    r = range(-radius, radius + 1)
    return [(dy, dx) for dy in r for dx in r if (dy, dx) > (0, 0)]


def taps(radius: int) -> int:
    """How many tap values a filter of this radius stores: 3 x 3 channel pairs x offsets."""
    return 9 * len(offsets(radius))


LENGTHS = {VALUES: 0, **{VALUES + taps(r): r for r in RADII}}  # values -> radius


def radius_of(color: tuple[int, ...]) -> int:
    """The filter radius of a correction (0: the affine map alone)."""
    return LENGTHS[len(check_color(color))]


def check_color(color: tuple[int, ...]) -> tuple[int, ...]:
    """``color`` if it is 12 (or 12 + a filter's taps) integers in the int16 range, else
    ValueError."""
    if len(color) not in LENGTHS or not all(
        isinstance(v, int | np.integer) and INT16[0] <= v <= INT16[1] for v in color
    ):
        raise ValueError(
            f"a colour correction is {VALUES} int16 values, or {VALUES} + the taps of a"
            f" filter of radius {', '.join(map(str, RADII))}"
        )
    return tuple(int(v) for v in color)


def _matrix(color: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    gains = np.array(color[:9], dtype=np.int64).reshape(3, 3) + GAIN_ONE * np.eye(3, dtype=np.int64)
    return gains, np.array(color[9:VALUES], dtype=np.int64) * (GAIN_ONE // OFFSET_STEP)


def apply_color(rgb: np.ndarray, color: tuple[int, ...]) -> np.ndarray:
    """(H, W, 3) uint8 through the map (a new array); ``()`` leaves it as it is."""
    if not color:
        return rgb
    if radius_of(color):
        return _apply_filter(rgb, color)
    gains, offsets_ = _matrix(color)  # radius_of checked it
    flat = rgb.reshape(-1, 3)
    out = np.empty_like(flat)
    for i in range(0, len(flat), BLOCK):
        acc = flat[i : i + BLOCK].astype(np.int64) @ gains.T + offsets_ + GAIN_ONE // 2
        np.clip(acc >> 12, 0, 255, out=acc)  # >> is floor division by 4096
        out[i : i + BLOCK] = acc
    return out.reshape(rgb.shape)


def _apply_filter(rgb: np.ndarray, color: tuple[int, ...]) -> np.ndarray:
    """The filtered map, band by band of rows: the features the fit uses (``_features``)
    times the map's integers, one matrix product per band. It runs in float64 on integers:
    every product and partial sum is an integer below 2^33 (|weights| sum to < 2^25 for any
    int16 values, features < 2^10), far inside float64's exact 2^53, so the result is the
    integer formula's whatever order the library adds in (3-8x faster than torch's float64
    convolution, which is not vectorised)."""
    r = radius_of(color)
    n = len(offsets(r))
    gains, offsets_ = _matrix(color)
    weights = np.empty((3, 4 + 3 * n))  # (output channel, feature), the fit's layout
    weights[:, :3], weights[:, 3] = gains, offsets_
    weights[:, 4:] = np.array(color[VALUES:], dtype=np.float64).reshape(3, 3 * n)
    out = np.empty_like(rgb)
    for y0, y1, feats in _bands(rgb, r):
        acc = (weights @ feats).astype(np.int64) + GAIN_ONE // 2
        np.clip(acc >> 12, 0, 255, out=acc)  # >> is floor division by 4096
        out[y0:y1] = acc.T.reshape(y1 - y0, rgb.shape[1], 3)
    return out


def _sse(a: np.ndarray, b: np.ndarray) -> int:
    d = a.astype(np.int64) - b
    return int(np.einsum("ij,ij->", d.reshape(-1, 3), d.reshape(-1, 3)))


def _quantised(m: np.ndarray) -> tuple[int, ...]:
    """Least-squares solution (3 + 1 + taps rows, 3 channels) as the stored integers."""
    gains = np.rint(m[:3].T * GAIN_ONE) - GAIN_ONE * np.eye(3)
    values = [gains.reshape(-1), np.rint(m[3] * OFFSET_STEP)]
    if len(m) > 4:  # taps: row 4 + j * n + t holds H_ijt for every output channel i
        values.append(np.rint(m[4:].reshape(3, -1, 3).transpose(2, 0, 1) * GAIN_ONE).reshape(-1))
    out = np.clip(np.concatenate(values), *INT16).astype(np.int64)
    return tuple(int(v) for v in out)


def _features(part: np.ndarray, radius: int) -> np.ndarray:
    """(4 + 3 x offsets, pixels) float64 features of the rows of ``part`` (uint8, with
    ``radius`` rows and columns of context on each side): the pixel's three channels, 1, and
    per input channel and offset d the symmetric difference x(p + d) + x(p - d) - 2 x(p)
    that the taps weight; one contiguous plane each."""
    h, w = part.shape[0] - 2 * radius, part.shape[1] - 2 * radius
    offs = offsets(radius)
    p = part.astype(np.float64)

    def at(dy: int, dx: int, j: int) -> np.ndarray:
        return p[radius + dy : radius + dy + h, radius + dx : radius + dx + w, j]

    feats = np.empty((4 + 3 * len(offs), h, w))
    for j in range(3):
        feats[j] = at(0, 0, j)
    feats[3] = 1.0
    k = 4
    for j in range(3):
        for dy, dx in offs:
            np.add(at(dy, dx, j), at(-dy, -dx, j), out=feats[k])
            feats[k] -= 2 * feats[j]
            k += 1
    return feats.reshape(len(feats), h * w)


def _bands(rgb: np.ndarray, radius: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """(first row, end row, ``_features``) of ``rgb`` band by band, with the image's edge
    pixels repeated outside it; a band's features take (4 + 3 x offsets) x 8 bytes a pixel
    (320 at radius 2, 608 at radius 3), so bands hold a quarter of BLOCK pixels: ~20-40 MB."""
    h, w, _ = rgb.shape
    band = max(1, BLOCK // (4 * w))
    for y0 in range(0, h, band):
        y1 = min(h, y0 + band)
        lo, hi = max(0, y0 - radius), min(h, y1 + radius)  # rows of context
        pad = ((radius - (y0 - lo), radius - (hi - y1)), (radius, radius), (0, 0))
        yield y0, y1, _features(np.pad(rgb[lo:hi], pad, mode="edge"), radius)


def _filter_features(
    decoded: np.ndarray, radius: int, pixels: int
) -> tuple[np.ndarray, np.ndarray]:
    """(features, flat pixel positions) at a regular subsample of about ``pixels``: one row
    of ``_features`` per sampled pixel."""
    h, w, _ = decoded.shape
    flat = np.arange(0, h * w, max(1, h * w // pixels))
    rows = []
    for y0, y1, feats in _bands(decoded, radius):
        at = flat[(flat >= y0 * w) & (flat < y1 * w)] - y0 * w
        rows.append(feats[:, at])
    return np.ascontiguousarray(np.concatenate(rows, 1).T), flat


AFFINE_BYTES = 24  # the affine map's 12 values; a version 6 file at its own size adds 11


def rate_cost(extra_bytes: int, payload_bytes: float | None) -> float:
    """What ``extra_bytes`` on a file of about ``payload_bytes`` cost in dB: the PSNR the
    same bytes would buy along the quality ladder (DB_PER_LOG_RATE); 0 when no size is given."""
    if payload_bytes is None or extra_bytes <= 0:
        return 0.0
    return float(DB_PER_LOG_RATE * np.log1p(extra_bytes / max(payload_bytes, 1.0)))


def fit_color(
    original: np.ndarray,
    decoded: np.ndarray,
    radius: int = 0,
    payload_bytes: float | None = None,
    affine_bytes: int = AFFINE_BYTES,
) -> tuple[int, ...]:
    """The map that brings ``decoded`` closest to ``original`` (least squares, then
    quantised): none ``()``, the affine one (12 values) or, with ``radius``, the affine one
    with a filter of that radius, whichever has the lowest squared error in dB plus the cost
    of its bytes on a file of ``payload_bytes`` (``rate_cost``; None: bytes are free). A
    filter must also cut the error by MIN_FILTER_GAIN: below that it is not worth its decode
    time. A 768 x 512 photo at quality 90 (~27 kB) keeps a filter that cuts the error by
    0.5 % more than the affine map, a 1.6 kB thumbnail only one that cuts it by 8 %."""
    if original.shape != decoded.shape or original.ndim != 3 or original.shape[2] != 3:
        raise ValueError(f"shapes differ: {original.shape} vs {decoded.shape}")
    if radius and radius not in RADII:
        raise ValueError(f"filter radius must be one of {RADII}, got {radius}")
    x, d = original.reshape(-1, 3), decoded.reshape(-1, 3)
    step = max(1, len(x) // FIT_PIXELS)
    xs, ds = x[::step].astype(np.float64), d[::step].astype(np.float64)
    a = np.c_[ds, np.ones(len(ds))]
    m, *_ = np.linalg.lstsq(a, xs, rcond=None)  # (4, 3): x_i = sum_j m[j, i] d_j + m[3, i]
    none = _sse(original, decoded)
    if none == 0:
        return ()

    def cost(sse: int, nbytes: int) -> float:
        return 10 * float(np.log10(max(sse, 1))) + rate_cost(nbytes, payload_bytes)

    affine = _quantised(m)
    affine_sse = _sse(original, apply_color(decoded, affine))
    best, best_cost = (), cost(none, 0)
    if cost(affine_sse, affine_bytes) < best_cost:
        best, best_cost = affine, cost(affine_sse, affine_bytes)
    if radius:
        feats, flat = _filter_features(decoded, radius, FILTER_FIT_PIXELS)
        target = x[flat].astype(np.float64)
        # normal equations: 40 x 40, ~10x faster than a QR of the samples and as good here
        m, *_ = np.linalg.lstsq(feats.T @ feats, feats.T @ target, rcond=None)
        filtered = _quantised(m)
        if any(filtered[VALUES:]):
            sse = _sse(original, apply_color(decoded, filtered))
            nbytes = affine_bytes + 1 + 2 * taps(radius)
            enough = sse < min(none, affine_sse) * (1 - MIN_FILTER_GAIN)
            if enough and cost(sse, nbytes) < best_cost:
                best = filtered
    return best
