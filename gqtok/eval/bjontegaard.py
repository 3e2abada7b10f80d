"""Bjøntegaard deltas: the average gap between two rate–distortion curves.

Each curve is a few (rate, metric) points. With r = ln(rate):

* **BD-rate** (``bd_rate``): log-rate as a function of the metric, r_a(D) and r_b(D), each
  interpolated through its curve's points; over the metric range both curves cover,
  [D_lo, D_hi],

      BD-rate = exp( 1/(D_hi - D_lo) · ∫ (r_b(D) - r_a(D)) dD ) - 1      (× 100, in %)

  the mean ratio of the rates curve b and curve a need for the same quality (geometric mean
  over the quality range): -20 means b needs 20 % fewer bits than a.
* **BD-metric** (``bd_metric``, BD-PSNR when the metric is PSNR): the metric as a function of
  log-rate, D_a(r) and D_b(r); over the log-rate range both cover, [r_lo, r_hi],

      BD-metric = 1/(r_hi - r_lo) · ∫ (D_b(r) - D_a(r)) dr

  the mean metric difference at equal rate (positive: b is better, for a higher-is-better
  metric).

Bjøntegaard's original (VCEG-M33, 2001) fits a cubic polynomial through exactly four points;
later video-coding test conditions replaced the polynomial by piecewise-cubic interpolation.
This module interpolates with the monotone piecewise-cubic Hermite curve (PCHIP, Fritsch–Carlson
slopes), which passes through every point, never overshoots between them (a polynomial through
uneven points can) and works for any number of points from 2. The integrals are exact: each
piece is a cubic, integrated in closed form. The logarithm's base does not matter for either
number (it cancels in the ratio, and a mean over an interval is unchanged by rescaling the
variable).

``None`` instead of a number: when a curve has fewer than 2 usable points there is no curve to
interpolate, and when the two curves share no interval of the integration variable (one is
entirely above or below the other's range) the average gap would be an extrapolation, not a
measurement. A point is usable when its rate is finite and > 0 (a log is taken) and its metric
is finite (PSNR is infinite for an exact copy). Points with the same value of the interpolation
variable are merged into one at the mean of the other value, since a function cannot take two
values there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Values = Sequence[float | None]


def pchip_slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Derivatives at the knots of the monotone piecewise-cubic Hermite interpolant (Fritsch &
    Carlson 1980 with Fritsch & Butland's weighted harmonic mean; the end slopes from the
    one-sided three-point formula, limited so that they keep the end secant's sign and do not
    exceed three times it where the data turns). ``x`` strictly increasing, 2 or more points."""
    h = np.diff(x)
    delta = np.diff(y) / h
    n = len(x)
    d = np.zeros(n)
    if n == 2:
        d[:] = delta[0]  # two points: the straight line
        return d
    for k in range(1, n - 1):
        a, b = delta[k - 1], delta[k]
        if a * b > 0:  # same sign: weighted harmonic mean; otherwise a local extremum, slope 0
            w1, w2 = 2 * h[k] + h[k - 1], h[k] + 2 * h[k - 1]
            d[k] = (w1 + w2) / (w1 / a + w2 / b)
    d[0] = _end_slope(h[0], h[1], delta[0], delta[1])
    d[-1] = _end_slope(h[-1], h[-2], delta[-1], delta[-2])
    return d


def _end_slope(h0: float, h1: float, d0: float, d1: float) -> float:
    s = ((2 * h0 + h1) * d0 - h0 * d1) / (h0 + h1)
    if np.sign(s) != np.sign(d0):
        return 0.0
    if np.sign(d0) != np.sign(d1) and abs(s) > abs(3 * d0):
        return 3 * d0
    return float(s)


def pchip_integral(x: np.ndarray, y: np.ndarray, lo: float, hi: float) -> float:
    """∫ from lo to hi of the PCHIP interpolant through (x, y), exactly; x[0] <= lo <= hi <= x[-1].

    On the piece [x_k, x_k+1] of width h, with t = x - x_k, secant s and end slopes d0, d1, the
    interpolant is y_k + d0·t + c2·t² + c3·t³ with c2 = (3s - 2·d0 - d1)/h and
    c3 = (d0 + d1 - 2s)/h²; its antiderivative is integrated between the clipped ends."""
    d = pchip_slopes(x, y)
    total = 0.0
    for k in range(len(x) - 1):
        a, b = max(lo, x[k]), min(hi, x[k + 1])
        if b <= a:
            continue
        h = x[k + 1] - x[k]
        s = (y[k + 1] - y[k]) / h
        c2 = (3 * s - 2 * d[k] - d[k + 1]) / h
        c3 = (d[k] + d[k + 1] - 2 * s) / h**2

        def antiderivative(t: float, k: int = k, c2: float = c2, c3: float = c3) -> float:
            return y[k] * t + d[k] * t**2 / 2 + c2 * t**3 / 3 + c3 * t**4 / 4

        total += antiderivative(b - x[k]) - antiderivative(a - x[k])
    return float(total)


def _curve(rates: Values, metric: Values, by_metric: bool) -> tuple[np.ndarray, np.ndarray]:
    """The usable points as (x, y) sorted by x, x being the metric (``by_metric``) or the log
    rate, the other one y; points with equal x merged at their mean y."""
    pairs = [
        (float(r), float(m))
        for r, m in zip(rates, metric, strict=True)
        if r is not None and m is not None and math.isfinite(r) and r > 0 and math.isfinite(m)
    ]
    merged: dict[float, list[float]] = {}
    for r, m in pairs:
        x, y = (m, math.log(r)) if by_metric else (math.log(r), m)
        merged.setdefault(x, []).append(y)
    xs = sorted(merged)
    return np.array(xs), np.array([float(np.mean(merged[x])) for x in xs])


def _mean_gap(
    rates_a: Values, metric_a: Values, rates_b: Values, metric_b: Values, by_metric: bool
) -> float | None:
    """Mean of (curve b - curve a) over the shared range of x, or None (module docstring)."""
    xa, ya = _curve(rates_a, metric_a, by_metric)
    xb, yb = _curve(rates_b, metric_b, by_metric)
    if len(xa) < 2 or len(xb) < 2:
        return None
    lo, hi = max(xa[0], xb[0]), min(xa[-1], xb[-1])
    if not hi > lo:
        return None
    return (pchip_integral(xb, yb, lo, hi) - pchip_integral(xa, ya, lo, hi)) / (hi - lo)


def bd_rate(rates_a: Values, metric_a: Values, rates_b: Values, metric_b: Values) -> float | None:
    """Bjøntegaard delta rate of curve b against curve a, in percent: the mean rate difference
    at equal quality (negative: b needs fewer bits). ``metric`` must be higher-is-better for
    the usual reading; None when the curves have < 2 usable points or no common metric range."""
    gap = _mean_gap(rates_a, metric_a, rates_b, metric_b, by_metric=True)
    return None if gap is None else 100.0 * math.expm1(gap)


def bd_metric(rates_a: Values, metric_a: Values, rates_b: Values, metric_b: Values) -> float | None:
    """Bjøntegaard delta metric (BD-PSNR for PSNR) of curve b against curve a: the mean metric
    difference at equal rate, in the metric's unit; None as for ``bd_rate``."""
    return _mean_gap(rates_a, metric_a, rates_b, metric_b, by_metric=False)
