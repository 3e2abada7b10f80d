"""The patch discriminator of the VQGAN recipe (GQ_SPEC §5's adversarial term).

A stack of strided 4x4 convolutions that scores overlapping patches (receptive field ~70 px
for three strided layers) as real or reconstructed; the decoder learns to produce texture that
such a local critic cannot tell from the photo's, which an L1 or LPIPS term alone blurs away.
Used only by `gqtok train --decoder-only`; never shipped in a model file.
"""

from __future__ import annotations

import torch
from torch import nn


class PatchDiscriminator(nn.Module):
    """Image (B, 3, H, W) in [-1, 1] -> patch logits (B, 1, ~H/2^n, ~W/2^n)."""

    def __init__(self, channels: int = 64, layers: int = 3) -> None:
        super().__init__()
        if channels < 1 or layers < 1:
            raise ValueError("the discriminator needs at least one layer and one channel")
        seq: list[nn.Module] = [nn.Conv2d(3, channels, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        width = channels
        for i in range(1, layers + 1):
            out = channels * min(2**i, 8)
            stride = 2 if i < layers else 1
            # BatchNorm as in the recipe; no bias before a norm
            seq += [nn.Conv2d(width, out, 4, stride, 1, bias=False), nn.BatchNorm2d(out),
                    nn.LeakyReLU(0.2, True)]
            width = out
        seq.append(nn.Conv2d(width, 1, 4, 1, 1))
        self.net = nn.Sequential(*seq)
        self.apply(_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _init(m: nn.Module) -> None:
    """N(0, 0.02) convolutions and N(1, 0.02) norm scales: the recipe's start, which keeps the
    first critic steps from saturating."""
    if isinstance(m, nn.Conv2d):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def hinge_d_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Hinge loss of the critic: real logits pushed above +1, reconstructed below -1."""
    return 0.5 * (torch.relu(1.0 - real).mean() + torch.relu(1.0 + fake).mean())
