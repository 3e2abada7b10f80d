"""Rate control: a quality knob and a target bit rate for one model, by its codebook size K.

Why K: GQ's codebook of size K is the first K rows of one seeded Gaussian sequence, so a smaller
K is a coarser codebook of the same Gaussian and every K decodes with the same network. The
network runs once per image; only the GQ search and the entropy coder run again per K.

``--quality Q`` (0..100) maps to one K for every image: log2 K is piecewise linear in Q from
``K_MIN`` at Q = 0 through the model's own K at Q = ``MODEL_QUALITY`` (75) to the largest K
rate control uses (2^20 for G = 16) at Q = 100, rounded to a multiple of 16 from 8192 on (chosen
when the windowed GQ search took only such sizes; every size is fast now, and the rounding
stays so that a quality keeps its K and its files). A higher quality is a larger codebook, so
rate and fidelity rise with Q.
``--bpp B`` searches K per image (secant steps in log K on the real file size) until the file is
within ``TOLERANCE`` of B, or settles on the K closest to it and says so.
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
MODEL_QUALITY = 75.0  # the quality at which a model codes with its own codebook size
TOLERANCE = 0.03  # a --bpp target is met when the file is within 3 % of it
MAX_STEPS = 8  # K values tried per image at most


def max_size(model: Model) -> int:
    """The largest K gqtok codes for this model: 2^20, or less where K x G would pass the
    format's 2^24 codebook values."""
    return min(1 << 20, MAX_CODEBOOK_VALUES // model.quant.dim)


def round_size(size: float) -> int:
    """A codebook size rate control uses: an integer, a multiple of 16 from 8192 on."""
    k = max(K_MIN, int(round(size)))
    return k if k < 8192 else int(round(size / 16)) * 16


def quality_size(model: Model, quality: float) -> int:
    """The codebook size of ``quality`` (0..100) for this model (monotone in quality)."""
    if isinstance(quality, bool) or not (isinstance(quality, (int, float)) and 0 <= quality <= 100):
        raise ValueError(f"quality must be in 0..100, got {quality!r}")
    lo, hi = math.log2(K_MIN), math.log2(max_size(model))
    own = min(hi, max(lo, math.log2(model.quant.size)))  # a model outside the range: monotone
    if quality <= MODEL_QUALITY:
        x = lo + (own - lo) * quality / MODEL_QUALITY
    else:
        x = own + (hi - own) * (quality - MODEL_QUALITY) / (100 - MODEL_QUALITY)
    return min(max_size(model), round_size(2**x))


def at_size(model: Model, size: int, coarse: bool = True) -> Model:
    """``model`` with codebook size ``size`` (same G, seed and beta). Below the size its
    card's ``coarse`` names, that is the coarse-codebook model (same tokens, a decoder trained
    on small K: gqtok.zoo.load.coarse_member) unless ``coarse`` is False (tokens only)."""
    q = model.quant
    member = coarse_member(model, int(size)) if coarse else model
    return member.requantized(QuantizerConfig(q.dim, int(size), q.seed, q.beta))


@dataclass
class RateSearch:
    """How a --bpp target was reached: the K chosen, every (K, bpp) tried, and whether the
    result is within the tolerance (else it is the nearest reachable rate)."""

    target_bpp: float
    size: int
    bpp: float
    tried: list[tuple[int, float]]

    @property
    def met(self) -> bool:
        return abs(self.bpp - self.target_bpp) <= TOLERANCE * self.target_bpp


def search_size(
    trial: Callable[[int], float], target: float, start: int, lo: int, hi: int
) -> tuple[int, dict[int, float]]:
    """The codebook size in [lo, hi] whose rate ``trial(K)`` is closest to ``target``: secant
    steps in log2 K from ``start`` (rate grows with K, roughly linearly in log K), stopping
    within TOLERANCE, after MAX_STEPS trials, or when a step would repeat a K (a bound or a
    flat stretch: nothing closer to find). Returns (K, {K tried: rate})."""
    if not (target > 0 and math.isfinite(target)):
        raise ValueError(f"target bpp must be a positive number, got {target!r}")
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
