"""Target divergence constraint (TDC): keep every token's KL near log2(K) bits.

GQ can only describe a token with ~log2(K) bits, so training pushes each token's KL (in bits)
into [T - tau, T + tau]: tokens above the band get weight lam_max, tokens below it lam_min, and a
global multiplier lam scales the whole term. The multipliers follow the reference's
multiplicative rules (GQ_SPEC §5.3) and, unlike the reference, are saved in checkpoints so a
resumed run continues where it stopped.

Update schedule: the reference updates on every training-mode forward pass, i.e. on both the
autoencoder and the discriminator step of its alternating schedule (twice per generator step).
gqtok trains without a discriminator, so ``update`` is called once per autoencoder step; the
multipliers therefore move half as fast per optimiser step as in the reference.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

# all-reduces a tensor over the ranks of a job, in place: (tensor, "sum" | "min" | "max")
Reduce = Callable[[torch.Tensor, str], torch.Tensor]

BITS_PER_NAT = 1.4426  # the reference's constant (~1/ln 2 = 1.442695)
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0
LAM_MAX_RANGE = (1.0, 1000.0)
LAM_MIN_RANGE = (0.001, 1.0)


def kl_bits_per_token(mu: torch.Tensor, logvar: torch.Tensor, dim: int) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)) in bits per token, shape (B, L, NG).

    mu, logvar: (B, C, h, w). Token k at a position owns channels k, k+NG, ... (GQ_SPEC §3.1),
    the same grouping the quantizer uses, so the constrained token is the quantized token.
    """
    if mu.shape != logvar.shape or mu.dim() != 4:
        raise ValueError(f"mu and logvar must both be (B, C, h, w), got {mu.shape}, {logvar.shape}")
    b, c, h, w = mu.shape
    if c % dim:
        raise ValueError(f"{c} latent channels are not divisible by token dim {dim}")
    mu = mu.float()
    lv = logvar.float().clamp(LOGVAR_MIN, LOGVAR_MAX)
    kl = 0.5 * (mu * mu + torch.exp(lv) - 1.0 - lv) * BITS_PER_NAT
    return kl.permute(0, 2, 3, 1).reshape(b, h * w, dim, c // dim).sum(dim=2)


def kl_bits_from_moments(moments: torch.Tensor, dim: int) -> torch.Tensor:
    """kl_bits_per_token for encoder moments (B, 2C, h, w) = [mu, logvar] along channels."""
    mu, logvar = moments.chunk(2, dim=1)
    return kl_bits_per_token(mu, logvar, dim)


def _clamp(x: float, bounds: tuple[float, float]) -> float:
    return min(max(x, bounds[0]), bounds[1])


class TargetDivergence:
    """TDC multipliers plus the weighted KL loss (GQ1 at the reference's HEAD)."""

    def __init__(self, codebook_size: int = 65536, tau: float = 0.5, factor: float = 1.01) -> None:
        self.target = float(int(math.log2(codebook_size)))
        self.tau = float(tau)
        self.factor = float(factor)
        self.lam = 1.0
        self.lam_min = 1.0
        self.lam_max = 1.0
        self.last: dict[str, float] = {}

    def weights(self, kl2: torch.Tensor) -> torch.Tensor:
        """Per-token weights (constants: no gradient flows through them)."""
        k = kl2.detach()
        w = torch.ones_like(k)
        w = torch.where(k > self.target + self.tau, torch.full_like(k, self.lam_max), w)
        return torch.where(k < self.target - self.tau, torch.full_like(k, self.lam_min), w)

    def loss(self, kl2: torch.Tensor) -> torch.Tensor:
        """lam * (1/B) * sum of weighted token KLs (bits); uses the current multipliers."""
        return self.lam * (self.weights(kl2) * kl2).sum() / kl2.shape[0]

    def update(self, kl2: torch.Tensor, reduce: Reduce | None = None) -> dict[str, float]:
        """Apply the multiplier rules to one batch's statistics; call after forming the loss.

        With several ranks, ``reduce`` (gqtok.dist.World.all_reduce) makes the statistics
        those of the global batch: sums, counts, minima and maxima all-reduced, so every rank
        applies the same rule and holds the same multipliers.
        """
        k = kl2.detach().float()
        if reduce is not None:
            count = float(k.numel())
            total = reduce(torch.stack([k.sum().double(), k.new_tensor(count).double()]), "sum")
            ends = reduce(torch.stack([-k.min(), k.max()]), "max")
            mean, lo, hi = float(total[0] / total[1]), -float(ends[0]), float(ends[1])
        else:
            stats = torch.stack([k.mean(), k.min(), k.max()]).tolist()
            mean, lo, hi = (float(v) for v in stats)
        f = self.factor
        self.lam = self.lam * f if mean > self.target else self.lam / f
        up = hi > self.target + self.tau
        self.lam_max = _clamp(self.lam_max * f if up else self.lam_max / f, LAM_MAX_RANGE)
        down = lo < self.target - self.tau
        self.lam_min = _clamp(self.lam_min / f if down else self.lam_min * f, LAM_MIN_RANGE)
        self.last = {"bits_mean": mean, "bits_min": lo, "bits_max": hi}
        return self.stats()

    def stats(self) -> dict[str, float]:
        """Latest batch statistics and the current multipliers, for logging."""
        return {**self.last, "lam": self.lam, "lam_min": self.lam_min, "lam_max": self.lam_max}

    def state_dict(self) -> dict[str, Any]:
        return {
            "target": self.target, "tau": self.tau, "factor": self.factor,
            "lam": self.lam, "lam_min": self.lam_min, "lam_max": self.lam_max,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("target", "tau", "factor", "lam", "lam_min", "lam_max"):
            if key in state:
                setattr(self, key, float(state[key]))
