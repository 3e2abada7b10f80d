"""Rate control: a quality knob and a target bit rate for one model, by the scale an image is
coded at and the codebook size K.

Why scale first: one model codes about log2 K bits per token, a token per f x f pixels, so
the rate of a model is fixed at about its trained rate. Coding the image resampled by a
factor s (format version 4: the file keeps the image's size and the decoder resamples back,
gqtok.io.resample) moves the rate by about s^2 and keeps the codewords where the decoder was
trained; measured on photos it beats a larger codebook above the model's rate (K = 2^20 gains
0.35 dB for +32 % bits, s = 1.25 gains 0.9 dB for +50 %) and a smaller one below it down to
s = 0.625, where a smaller K then costs less per bit saved than a smaller s.

``--quality Q`` (0..100) maps to one (K, s) for every image: from Q = 0 to ``Q_SCALE`` (25),
log2 K rises linearly from ``K_LOW`` to the model's own K at s = ``S_LOW``; from there log2 s
rises linearly to 1 at Q = ``MODEL_QUALITY`` (75, the model's own setting, an unscaled file)
and on to ``S_HIGH`` at Q = 100. A higher quality is a larger K or a larger s, so rate and
fidelity rise with Q. ``--bpp B`` searches s at the model's K (secant steps in log s on the
real file size; each step runs the network once) and, below the rate at ``S_LOW``, K at that
scale (the network once, the GQ search and entropy coder per K), until the file is within
``TOLERANCE`` of B, or settles on the setting closest to it and says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from gqtok.format.container import MAX_CODEBOOK_VALUES
from gqtok.model import Model
from gqtok.quant.config import QuantizerConfig
from gqtok.zoo.load import coarse_member

K_MIN = 64
K_LOW = 1024  # the codebook size of quality 0
S_LOW = 0.625  # the scale of qualities 0..Q_SCALE
S_HIGH = 2.5  # the scale of quality 100
Q_SCALE = 25.0  # from this quality on the model's own K, and the scale rises
MODEL_QUALITY = 75.0  # the quality at which a model codes with its own K, unscaled
TOLERANCE = 0.03  # a --bpp target is met when the file is within 3 % of it
MAX_STEPS = 8  # K values tried per image at most
MAX_SCALE_STEPS = 5  # scales (network passes) tried per image at most


@dataclass(frozen=True)
class Setting:
    """How an image is coded: codebook size K and scale s (1: at its own size)."""

    size: int
    scale: float = 1.0


def max_size(model: Model) -> int:
    """The largest K gqtok codes for this model: 2^20, or less where K x G would pass the
    format's 2^24 codebook values."""
    return min(1 << 20, MAX_CODEBOOK_VALUES // model.quant.dim)


def round_size(size: float) -> int:
    """A codebook size rate control uses: an integer, a multiple of 16 from 8192 on."""
    k = max(K_MIN, int(round(size)))
    return k if k < 8192 else int(round(size / 16)) * 16


def own_size(model: Model) -> int:
    """The model's own codebook size, within what rate control codes."""
    return min(max_size(model), max(K_MIN, model.quant.size))


def check_quality(quality: float) -> float:
    """``quality`` if it is a number in 0..100, else ValueError."""
    if isinstance(quality, bool) or not (isinstance(quality, (int, float)) and 0 <= quality <= 100):
        raise ValueError(f"quality must be in 0..100, got {quality!r}")
    return float(quality)


def check_bpp(target: float) -> float:
    """``target`` if it is a positive finite number of bits per pixel, else ValueError."""
    ok = not isinstance(target, bool) and isinstance(target, (int, float))
    if not (ok and 0 < target < math.inf):
        raise ValueError(f"target bpp must be a positive number, got {target!r}")
    return float(target)


def round_scale(scale: float) -> float:
    """A scale rate control uses: 4 decimals, so that a quality keeps its scale and files."""
    return round(scale, 4)


def quality_setting(model: Model, quality: float) -> Setting:
    """The (K, scale) of ``quality`` (0..100) for this model: both never fall as Q rises."""
    q = check_quality(quality)
    own = own_size(model)
    if q < Q_SCALE:
        lo = math.log2(min(K_LOW, own))
        x = lo + (math.log2(own) - lo) * q / Q_SCALE
        return Setting(min(own, round_size(2**x)), S_LOW)
    if q <= MODEL_QUALITY:
        y = math.log2(S_LOW) * (MODEL_QUALITY - q) / (MODEL_QUALITY - Q_SCALE)
    else:
        y = math.log2(S_HIGH) * (q - MODEL_QUALITY) / (100 - MODEL_QUALITY)
    return Setting(own, round_scale(2**y))


def at_size(model: Model, size: int, coarse: bool = True) -> Model:
    """``model`` with codebook size ``size`` (same G, seed and beta). Below the size its
    card's ``coarse`` names, that is the coarse-codebook model (same tokens, a decoder trained
    on small K: gqtok.zoo.load.coarse_member) unless ``coarse`` is False (tokens only)."""
    q = model.quant
    member = coarse_member(model, int(size)) if coarse else model
    return member.requantized(QuantizerConfig(q.dim, int(size), q.seed, q.beta))


@dataclass
class RateSearch:
    """How a --bpp target was reached: the setting chosen (K, scale), every (K, scale, bpp)
    tried, and whether the result is within the tolerance (else it is the nearest reachable
    rate)."""

    target_bpp: float
    size: int
    bpp: float
    tried: list[tuple[int, float, float]]
    scale: float = 1.0

    @property
    def met(self) -> bool:
        return abs(self.bpp - self.target_bpp) <= TOLERANCE * self.target_bpp


def search_scale(
    trial: Callable[[float], float], target: float, lo: float, hi: float
) -> tuple[float, dict[float, float]]:
    """The scale in [lo, hi] whose rate ``trial(s)`` is closest to ``target``: secant steps in
    log s against log rate from s = 1 (the rate grows about as s^1.8 on photos, the first
    step's slope), stopping within TOLERANCE, after MAX_SCALE_STEPS trials, or when a step
    would repeat a scale. Returns (s, {s tried: rate})."""
    check_bpp(target)
    tried: dict[float, float] = {}

    def at(scale: float) -> tuple[float, float]:
        scale = round_scale(min(hi, max(lo, scale)))
        if scale not in tried:
            tried[scale] = trial(scale)
        return math.log(scale), math.log(max(tried[scale], 1e-9))

    points = [at(min(hi, max(lo, 1.0)))]
    slope = 1.8
    while len(tried) < MAX_SCALE_STEPS:
        if min(abs(r - target) for r in tried.values()) <= TOLERANCE * target:
            break
        if len(points) > 1:
            (x0, y0), (x1, y1) = points[-2:]
            if x1 != x0 and (y1 - y0) / (x1 - x0) > 0.5:  # else a flat stretch: keep the guess
                slope = (y1 - y0) / (x1 - x0)
        x, y = points[-1]
        s2 = round_scale(min(hi, max(lo, math.exp(x + (math.log(target) - y) / slope))))
        if s2 in tried:
            break
        points.append(at(s2))
    best = min(tried, key=lambda k: (abs(tried[k] - target), k))
    return best, tried


def search_size(
    trial: Callable[[int], float], target: float, start: int, lo: int, hi: int
) -> tuple[int, dict[int, float]]:
    """The codebook size in [lo, hi] whose rate ``trial(K)`` is closest to ``target``: secant
    steps in log2 K from ``start`` (rate grows with K, roughly linearly in log K), stopping
    within TOLERANCE, after MAX_STEPS trials, or when a step would repeat a K (a bound or a
    flat stretch: nothing closer to find). Returns (K, {K tried: rate})."""
    check_bpp(target)
    tried: dict[int, float] = {}

    def at(size: int) -> tuple[float, float]:
        size = min(hi, max(lo, int(size)))
        if size not in tried:
            tried[size] = trial(size)
        return math.log2(size), tried[size]

    x0, y0 = at(start)
    x1, y1 = at(max(lo, start // 4) if y0 > target else min(hi, start * 4))
    while len(tried) < MAX_STEPS:
        if min(abs(r - target) for r in tried.values()) <= TOLERANCE * target:
            break
        slope = (y1 - y0) / (x1 - x0) if x1 != x0 and y1 != y0 else 0.02
        x2 = x1 + (target - y1) / max(slope, 1e-4)
        k2 = min(hi, max(lo, round_size(2 ** min(30.0, max(0.0, x2)))))
        if k2 in tried:
            break
        (x0, y0), (x1, y1) = (x1, y1), at(k2)
    best = min(tried, key=lambda k: (abs(tried[k] - target), k))
    return best, tried
