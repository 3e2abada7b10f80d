"""A critic over a frozen perceptual network's feature maps (a "projected" discriminator).

The pixel patch critic (patchgan.py) has to learn its own features from a few crops a step,
which on 2 CPU cores either never learns or, given the lead, learns local artefacts (README,
issue 14). Discriminators on pretrained features converge far faster (Sauer et al., "Projected
GANs Converge Faster", 2021): here small heads score the ST-LPIPS backbone's five taps, the
features the perceptual term computes anyway, so the critic costs almost nothing beyond them.

Each head is spectrally normalised (a 1-Lipschitz critic cannot win outright) and scores its
tap's patches; the logits are pooled to the coarsest tap's grid so every tap weighs the same in
the hinge loss. Used only by `gqtok train --decoder-only --disc-kind features`; never shipped.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


class FeatureCritic(nn.Module):
    """Unit-normalised feature taps (list of (B, C_i, H_i, W_i)) -> logits (B, taps, h, w)."""

    takes_features = True  # decoder_losses hands it the perceptual network's taps, not pixels

    def __init__(self, tap_channels: tuple[int, ...], width: int = 64) -> None:
        super().__init__()
        if width < 1 or not tap_channels:
            raise ValueError("the feature critic needs at least one tap and one channel")
        self.scales = [math.sqrt(c) for c in tap_channels]  # unit norm -> unit RMS a channel
        self.heads = nn.ModuleList(
            nn.Sequential(
                spectral_norm(nn.Conv2d(c, width, 1)), nn.LeakyReLU(0.2),
                spectral_norm(nn.Conv2d(width, width, 3, padding=1)), nn.LeakyReLU(0.2),
                spectral_norm(nn.Conv2d(width, 1, 1)),
            )
            for c in tap_channels
        )

    def forward(self, taps: list[torch.Tensor]) -> torch.Tensor:
        if len(taps) != len(self.heads):
            raise ValueError(f"expected {len(self.heads)} feature taps, got {len(taps)}")
        grid = min((t.shape[-2], t.shape[-1]) for t in taps)
        logits = [F.adaptive_avg_pool2d(head(t * s), grid)
                  for head, t, s in zip(self.heads, taps, self.scales, strict=True)]
        return torch.cat(logits, dim=1)
