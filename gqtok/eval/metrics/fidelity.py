"""Pixel fidelity metrics on 8-bit RGB: PSNR, SSIM and MS-SSIM with exact, documented conventions.

Conventions (the ones of Wang et al. 2004/2003 as implemented by scikit-image and pytorch_msssim,
so numbers can be compared with published tables):

* inputs are (H, W, 3) uint8; arithmetic in float64 on the 0..255 scale (data range L = 255);
* PSNR = 10 log10(255^2 / MSE), MSE over all H*W*3 samples of one image (inf if identical);
* SSIM: 11x11 Gaussian window (sigma 1.5, normalised to sum 1), population (not sample)
  statistics, C1 = (0.01 L)^2, C2 = (0.03 L)^2, SSIM map over the "valid" window positions
  only (no padding), averaged per channel, then the mean of the R, G, B channel values;
* MS-SSIM: 5 scales with weights (0.0448, 0.2856, 0.3001, 0.2363, 0.1333); the
  contrast-structure term at scales 1-4 and full SSIM at the coarsest scale, each clamped at 0,
  combined per channel as a weighted geometric product, then averaged over R, G, B; between
  scales a 2x2 mean pool (stride 2; an odd last row/column is dropped).
  Images too small for 5 scales (shorter side < 176 px) use the largest number of scales n
  whose coarsest level is still >= 11 px, with the first n weights renormalised to sum 1; the
  number used is reported. Below 11 px SSIM and MS-SSIM are undefined (None).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

DATA_RANGE = 255.0
WINDOW = 11
SIGMA = 1.5
K1, K2 = 0.01, 0.03
MS_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _check(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape or a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected two equal (H, W, 3) images, got {a.shape} and {b.shape}")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two 8-bit RGB images (inf when they are identical)."""
    _check(a, b)
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(DATA_RANGE**2 / mse)


def _planes(a: np.ndarray) -> torch.Tensor:
    """(H, W, 3) -> (3, 1, H, W) float64: channels as a batch so one filter serves all three."""
    return torch.from_numpy(np.array(a, dtype=np.float64)).permute(2, 0, 1).unsqueeze(1)


def _gaussian() -> torch.Tensor:
    r = torch.arange(WINDOW, dtype=torch.float64) - (WINDOW - 1) / 2
    g = torch.exp(-(r**2) / (2 * SIGMA**2))
    return g / g.sum()


def _blur(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter, valid positions only.

    As weighted sums of shifted views: float64 conv2d has no fast CPU kernel and was ~10x
    slower on photos; the summation order per tap matches a direct convolution.
    """
    n = g.numel()
    h, w = x.shape[-2] - n + 1, x.shape[-1] - n + 1
    taps = g.tolist()
    rows = x[..., 0:h, :] * taps[0]
    for k in range(1, n):
        rows.add_(x[..., k : k + h, :], alpha=taps[k])
    out = rows[..., :, 0:w] * taps[0]
    for k in range(1, n):
        out.add_(rows[..., :, k : k + w], alpha=taps[k])
    return out


def _ssim_cs(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean SSIM and mean contrast-structure term, each of shape (3,)."""
    g = _gaussian()
    c1, c2 = (K1 * DATA_RANGE) ** 2, (K2 * DATA_RANGE) ** 2
    mx, my, exx, eyy, exy = _blur(torch.cat([x, y, x * x, y * y, x * y]), g).chunk(5)
    sxx = exx - mx * mx
    syy = eyy - my * my
    sxy = exy - mx * my
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    lum = (2 * mx * my + c1) / (mx * mx + my * my + c1)
    return (lum * cs).mean(dim=(1, 2, 3)), cs.mean(dim=(1, 2, 3))


def ssim(a: np.ndarray, b: np.ndarray) -> float | None:
    """Mean SSIM over R, G, B (None when a side is shorter than the 11 px window)."""
    _check(a, b)
    if min(a.shape[:2]) < WINDOW:
        return None
    s, _ = _ssim_cs(_planes(a), _planes(b))
    return float(s.mean())


def msssim_scales(height: int, width: int) -> int:
    """How many MS-SSIM scales fit: the coarsest level must still hold one 11 px window."""
    side = min(height, width)
    n = 0
    while n < len(MS_WEIGHTS) and side // (2**n) >= WINDOW:
        n += 1
    return n


def ms_ssim(a: np.ndarray, b: np.ndarray) -> tuple[float | None, int]:
    """(MS-SSIM averaged over R, G, B, number of scales used); (None, 0) below 11 px."""
    _check(a, b)
    n = msssim_scales(a.shape[0], a.shape[1])
    if n == 0:
        return None, 0
    w = torch.tensor(MS_WEIGHTS[:n], dtype=torch.float64)
    w = w / w.sum()
    x, y = _planes(a), _planes(b)
    terms = []
    for level in range(n):
        s, cs = _ssim_cs(x, y)
        if level == n - 1:
            terms.append(s.clamp_min(0) ** w[level])
        else:
            terms.append(cs.clamp_min(0) ** w[level])
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    per_channel = torch.stack(terms).prod(dim=0)
    return float(per_channel.mean()), n
