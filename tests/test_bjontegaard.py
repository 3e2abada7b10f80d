"""Bjøntegaard deltas against numbers worked out by hand (derivations in the comments)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gqtok.eval.bjontegaard import bd_metric, bd_rate, pchip_integral, pchip_slopes

# An uneven, curved RD curve (bpp, PSNR) like a real codec's.
RATES = [0.12, 0.25, 0.5, 1.1]
PSNR = [27.3, 29.9, 33.0, 36.2]


def test_rates_scaled_by_0_8_is_bd_rate_minus_20_percent() -> None:
    # ln(0.8 R) = ln R + ln 0.8 at every point: curve b's log-rate interpolant is curve a's moved
    # by ln 0.8 (PCHIP commutes with adding a constant), so the mean gap is ln 0.8 exactly and
    # BD-rate = exp(ln 0.8) - 1 = -20 %; the other way round 1/0.8 - 1 = +25 %.
    scaled = [0.8 * r for r in RATES]
    assert bd_rate(RATES, PSNR, scaled, PSNR) == pytest.approx(-20.0, abs=1e-9)
    assert bd_rate(scaled, PSNR, RATES, PSNR) == pytest.approx(25.0, abs=1e-9)
    assert bd_rate(RATES, PSNR, RATES, PSNR) == pytest.approx(0.0, abs=1e-12)


def test_metric_shifted_is_the_bd_metric() -> None:
    # the same rates and every PSNR + 0.7 dB: D_b(r) = D_a(r) + 0.7 everywhere
    shifted = [p + 0.7 for p in PSNR]
    assert bd_metric(RATES, PSNR, RATES, shifted) == pytest.approx(0.7, abs=1e-12)
    assert bd_metric(RATES, shifted, RATES, PSNR) == pytest.approx(-0.7, abs=1e-12)
    assert bd_metric(RATES, PSNR, RATES, PSNR) == pytest.approx(0.0, abs=1e-12)


def test_straight_lines_with_partial_overlap() -> None:
    # In r = ln R: curve a is D = 2r, curve b is D = 3r + 1, both sampled at r = 0, 1, 2, 3.
    # PCHIP reproduces straight lines, so the integrals are those of the lines.
    # BD-metric over r in [0, 3]: mean of (3r + 1 - 2r) = mean of (r + 1) = 1.5 + 1 = 2.5.
    # BD-rate: r_a(D) = D/2 on [0, 6], r_b(D) = (D - 1)/3 on [1, 10]; shared D in [1, 6] (both
    # ends inside a piece of one curve); mean of (D - 1)/3 - D/2 = -D/6 - 1/3 is
    # -3.5/6 - 1/3 = -11/12, so BD-rate = exp(-11/12) - 1 = -60.02 %.
    rates = [math.exp(r) for r in range(4)]
    a = [2.0 * r for r in range(4)]
    b = [3.0 * r + 1 for r in range(4)]
    assert bd_metric(rates, a, rates, b) == pytest.approx(2.5, abs=1e-12)
    assert bd_rate(rates, a, rates, b) == pytest.approx(100 * (math.exp(-11 / 12) - 1), abs=1e-9)


def test_pchip_on_a_curved_case_by_hand() -> None:
    # Points (0, 0), (1, 1), (2, 3): secants 1 and 2, widths 1.
    # Inner slope (weighted harmonic mean, w1 = 2*1 + 1 = 3, w2 = 1 + 2*1 = 3):
    #   6 / (3/1 + 3/2) = 4/3.
    # End slopes (three-point formula): (3*1 - 1*2)/2 = 1/2 and (3*2 - 1*1)/2 = 5/2, both with
    # their secant's sign and under 3x it, so kept.
    x, y = np.array([0.0, 1.0, 2.0]), np.array([0.0, 1.0, 3.0])
    assert pchip_slopes(x, y) == pytest.approx([0.5, 4 / 3, 2.5], abs=1e-15)
    # A Hermite cubic integrates to h(y0 + y1)/2 + h^2 (d0 - d1)/12 over its piece:
    #   [0, 1]: 1/2 + (1/2 - 4/3)/12 = 31/72;  [1, 2]: 2 + (4/3 - 5/2)/12 = 137/72; sum 7/3.
    assert pchip_integral(x, y, 0.0, 2.0) == pytest.approx(7 / 3, abs=1e-14)
    # Part of the first piece: y = t/2 + c2 t^2 + c3 t^3 with c2 = 3 - 1 - 4/3 = 2/3 and
    # c3 = 1/2 + 4/3 - 2 = -1/6; from 0 to 1/2: 1/16 + (2/3)(1/8)/3 - (1/6)(1/16)/4
    #   = (72 + 32 - 3)/1152 = 101/1152.
    assert pchip_integral(x, y, 0.0, 0.5) == pytest.approx(101 / 1152, abs=1e-15)
    # BD-metric of the line D = 2r (integral 4 over [0, 2]) against this curve: (4 - 7/3)/2.
    rates = [1.0, math.e, math.e**2]
    assert bd_metric(rates, list(y), rates, [0.0, 2.0, 4.0]) == pytest.approx(5 / 6, abs=1e-14)


def test_pchip_does_not_overshoot_monotone_data() -> None:
    # a curve that saturates (like MS-SSIM at high rate): the interpolant stays monotone, so
    # its integral over each piece lies between the piece's end values times its width
    x, y = np.array([0.0, 1.0, 2.0, 3.0]), np.array([0.0, 0.9, 0.99, 1.0])
    for k in range(3):
        part = pchip_integral(x, y, x[k], x[k + 1])
        assert y[k] <= part <= y[k + 1]


def test_no_curve_or_no_overlap_is_none() -> None:
    low, high = [0.1, 0.2], [0.5, 1.0]
    assert bd_metric(low, [28.0, 30.0], high, [33.0, 36.0]) is None  # no shared rate range
    assert bd_rate(low, [28.0, 30.0], high, [33.0, 36.0]) is None  # no shared PSNR range
    assert bd_rate(low, [28.0, 30.0], [0.3, 0.4], [30.0, 31.0]) is None  # they only touch
    assert bd_rate([0.1], [28.0], high, [27.0, 36.0]) is None  # one point is no curve
    # points with no usable value are dropped: an infinite PSNR, no metric, a zero rate
    assert bd_metric([0.1, 0.2], [28.0, math.inf], [0.1, 0.2], [29.0, 31.0]) is None
    assert bd_metric([0.1, 0.2, 0.3], [28.0, None, 31.0], [0.1, 0.3], [29.0, 32.0]) == (
        pytest.approx(1.0, abs=1e-12)
    )
    assert bd_metric([0.0, 0.1, 0.3], [20.0, 28.0, 31.0], [0.1, 0.3], [29.0, 32.0]) == (
        pytest.approx(1.0, abs=1e-12)
    )


def test_equal_values_merge_into_one_point() -> None:
    # two points at the same rate become one at their mean metric (29, 30 -> 29.5)
    a = bd_metric([0.1, 0.1, 0.2], [29.0, 30.0, 31.5], [0.1, 0.2], [30.5, 32.5])
    assert a == pytest.approx(1.0, abs=1e-12)
