"""The training objective (GQ_SPEC §5, without the GAN and the learned output log-variance):

    loss = sum|x - x_hat| / B  +  w_p * (3*H*W) * mean ST-LPIPS(x_hat, x)  +  w_kl * TDC

The reconstruction terms use the reference's scaling (summed over pixels, averaged over the
batch; LPIPS broadcast to every pixel), so ``kl_weight`` = 0.1 means what it means in the
reference's HEAD configs. The decoder sees the reparameterised sample mu + eps*sigma; GQ is only
used for evaluation and export.
"""

from __future__ import annotations

import torch

from gqtok.nets.unet import Decoder, Encoder
from gqtok.quant.search import LOGVAR_MAX, LOGVAR_MIN
from gqtok.quant.tdc import TargetDivergence, kl_bits_per_token
from gqtok.train.config import TrainConfig


def build_perceptual(cfg: TrainConfig) -> torch.nn.Module | None:
    """The frozen ST-LPIPS network, or None when the perceptual term is off."""
    if cfg.perceptual == "none" or cfg.perceptual_weight == 0:
        return None
    from gqtok.nets.stlpips import STLPIPS

    return STLPIPS(cfg.perceptual)


def step_losses(
    cfg: TrainConfig, encoder: Encoder, decoder: Decoder, x: torch.Tensor,
    tdc: TargetDivergence, noise: torch.Generator, perceptual: torch.nn.Module | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward pass of one training step: (loss, L1, perceptual, TDC term), and the TDC update.

    Shared by the training loop and bench/train_speed.py, so the bench times the step that
    trains.
    """
    amp = x.device.type == "cuda"
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        moments = encoder(x)
    mu, logvar = moments.float().chunk(2, dim=1)
    std = torch.exp(0.5 * logvar.clamp(LOGVAR_MIN, LOGVAR_MAX))
    eps = torch.randn(std.shape, generator=noise, device=x.device)
    z = mu + eps * std
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        x_hat = decoder(z)
    x_hat = x_hat.float()
    l1 = (x_hat - x).abs().sum() / x.shape[0]
    loss = l1
    p_mean = torch.zeros((), device=x.device)
    if perceptual is not None:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            p_mean = perceptual(x_hat, x).float().mean()
        loss = loss + cfg.perceptual_weight * x[0].numel() * p_mean
    kl2 = kl_bits_per_token(mu, logvar, cfg.dim)
    kl_loss = tdc.loss(kl2)
    loss = loss + cfg.kl_weight * kl_loss
    tdc.update(kl2)  # once per AE step: there is no discriminator step (see gqtok.quant.tdc)
    return loss, l1, p_mean, kl_loss
