"""The training objective (GQ_SPEC §5, without the GAN and the learned output log-variance):

    loss = sum|x - x_hat| / B  +  w_p * (3*H*W) * mean ST-LPIPS(x_hat, x)  +  w_kl * TDC

The reconstruction terms use the reference's scaling (summed over pixels, averaged over the
batch; LPIPS broadcast to every pixel), so ``kl_weight`` = 0.1 means what it means in the
reference's HEAD configs. The decoder sees the reparameterised sample mu + eps*sigma; GQ is only
used for evaluation and export.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable

import torch

from gqtok.dist import World
from gqtok.nets.patchgan import hinge_d_loss
from gqtok.nets.unet import Decoder, Encoder
from gqtok.quant.search import LOGVAR_MAX, LOGVAR_MIN, quantize
from gqtok.quant.tdc import TargetDivergence, kl_bits_per_token
from gqtok.train.config import TrainConfig


def build_perceptual(cfg: TrainConfig) -> torch.nn.Module | None:
    """The frozen ST-LPIPS network, or None when the perceptual term is off."""
    if cfg.perceptual == "none" or cfg.perceptual_weight == 0:
        return None
    from gqtok.nets.stlpips import STLPIPS

    return STLPIPS(cfg.perceptual)


def reconstruction_loss(
    cfg: TrainConfig, decoder: Decoder, z: torch.Tensor, x: torch.Tensor,
    perceptual: torch.nn.Module | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decode z and score it against x: (L1 + w_p * 3HW * ST-LPIPS, x_hat, L1, ST-LPIPS mean),
    the reconstruction term both the joint and the decoder-only objectives start from."""
    amp = x.device.type == "cuda"
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
    return loss, x_hat, l1, p_mean


def step_losses(
    cfg: TrainConfig, encoder: Encoder, decoder: Decoder, x: torch.Tensor,
    tdc: TargetDivergence, noise: torch.Generator, perceptual: torch.nn.Module | None,
    world: World | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward pass of one training step: (loss, L1, perceptual, TDC term), and the TDC update.

    Shared by the training loop and bench/train_speed.py, so the bench times the step that
    trains. With several ranks (``world``), x is this rank's slice of the global batch: the
    noise is drawn for the whole global batch and sliced the same way (every rank's generator
    is in the same state), and the TDC statistics are all-reduced, so the ranks together
    compute what one process would on the global batch.
    """
    amp = x.device.type == "cuda"
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        moments = encoder(x)
    mu, logvar = moments.float().chunk(2, dim=1)
    std = torch.exp(0.5 * logvar.clamp(LOGVAR_MIN, LOGVAR_MAX))
    rank, ranks = (world.rank, world.size) if world is not None and world.group else (0, 1)
    b = std.shape[0]
    eps = torch.randn((b * ranks, *std.shape[1:]), generator=noise, device=x.device)
    eps = eps[rank * b : (rank + 1) * b]
    z = mu + eps * std
    loss, _, l1, p_mean = reconstruction_loss(cfg, decoder, z, x, perceptual)
    kl2 = kl_bits_per_token(mu, logvar, cfg.dim)
    kl_loss = tdc.loss(kl2)
    loss = loss + cfg.kl_weight * kl_loss
    # once per AE step: there is no discriminator step (see gqtok.quant.tdc)
    tdc.update(kl2, world.all_reduce if world is not None and world.group else None)
    return loss, l1, p_mean, kl_loss


# ----------------------------------------------------------------------------------------------
# --decoder-only: a second decoder for a frozen encoder's GQ tokens


def step_size(cfg: TrainConfig, step: int) -> int:
    """The codebook size K of a decoder-only step: cfg.codebook_size, or with --size-min a
    K drawn log-uniformly from [size_min, size_max], the same for a given seed and step (so a
    resumed run sees what it would have). From 8192 on K is a multiple of 16, the sizes rate
    control codes and the windowed GQ search takes."""
    if not cfg.size_min:
        return cfg.codebook_size
    lo, hi = math.log2(cfg.size_min), math.log2(cfg.train_size_max)
    u = random.Random(cfg.seed * 1_000_003 + step).random()
    k = int(round(2 ** (lo + (hi - lo) * u)))
    if k >= 8192:
        k = min(cfg.train_size_max, 16 * round(k / 16))
    return max(cfg.size_min, k)


@torch.no_grad()
def frozen_codewords(
    cfg: TrainConfig, encoder: Encoder, x: torch.Tensor, size: int | None = None
) -> torch.Tensor:
    """The GQ codewords (codebook size ``size``, default the run's) the frozen encoder gives
    x: exactly what the decoder will be handed at decode time (not the reparameterised sample
    the joint training uses)."""
    amp = x.device.type == "cuda"
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        moments = encoder(x)
    _, zhat = quantize(moments.float(), cfg.dim, size or cfg.codebook_size, cfg.codebook_seed)
    return zhat.to(x.device)


def average_gradients(params: Iterable[torch.nn.Parameter], world: World | None) -> None:
    """Replace every rank's gradients by their mean over the ranks (what DDP does), in one
    all-reduce. The decoder-only step does it by hand: its adaptive weight differentiates
    the decoder twice and its discriminator runs twice per backward, which DDP's one
    forward per backward does not allow."""
    if world is None or not world.group:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = world.all_reduce(torch.cat([g.reshape(-1) for g in grads])) / world.size
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def adaptive_weight(
    rec: torch.Tensor, gan: torch.Tensor, last: torch.Tensor, world: World | None = None
) -> torch.Tensor:
    """VQGAN's balance: the ratio of the reconstruction's and the adversarial term's gradient
    norms at the decoder's last layer, so the GAN term neither vanishes nor dominates whatever
    the scale of the reconstruction loss (GQ_SPEC 5.5). With several ranks the norms are
    those of the global batch's gradients (the ranks' means)."""
    g_rec = torch.autograd.grad(rec, last, retain_graph=True)[0]
    g_gan = torch.autograd.grad(gan, last, retain_graph=True)[0]
    if world is not None and world.group:
        g_rec, g_gan = (world.all_reduce(g.clone()) / world.size for g in (g_rec, g_gan))
    return (g_rec.norm() / (g_gan.norm() + 1e-4)).clamp(0.0, 1e4).detach()


def decoder_losses(
    cfg: TrainConfig, decoder: Decoder, disc: torch.nn.Module, zhat: torch.Tensor,
    x: torch.Tensor, perceptual: torch.nn.Module | None, gan_on: bool,
    world: World | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Generator side of a decoder-only step: (loss, reconstruction, logged terms).

    loss = L1 + w_p * 3HW * ST-LPIPS  [+ disc_weight * adaptive * (-mean D(x_hat))]
    """
    amp = x.device.type == "cuda"
    rec, x_hat, l1, p_mean = reconstruction_loss(cfg, decoder, zhat, x, perceptual)
    terms = {"l1": l1, "perceptual": p_mean}
    loss = rec
    if gan_on:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            g_loss = -disc(x_hat).float().mean()
        weight = cfg.disc_weight * adaptive_weight(rec, g_loss, decoder.conv_out.weight, world)
        loss = rec + weight * g_loss
        terms.update(gan_g=g_loss, gan_weight=weight)
    return loss, x_hat, terms


def discriminator_loss(
    disc: torch.nn.Module, x: torch.Tensor, x_hat: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(hinge loss, mean real logit, mean fake logit) on the photo and the detached
    reconstruction."""
    amp = x.device.type == "cuda"
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        real, fake = disc(x).float(), disc(x_hat.detach()).float()
    return hinge_d_loss(real, fake), real.mean().detach(), fake.mean().detach()


def decoder_update(
    cfg: TrainConfig, encoder: Encoder, decoder: Decoder, disc: torch.nn.Module,
    optimizer: torch.optim.Optimizer, disc_optimizer: torch.optim.Optimizer, x: torch.Tensor,
    perceptual: torch.nn.Module | None, gan_on: bool, world: World | None = None,
    size: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One decoder-only step: the decoder's update on the frozen encoder's codewords, then
    (with ``gan_on``) the discriminator's; returns the decoder's loss and the logged terms.
    Shared by the training loop and bench/train_speed.py. With several ranks (``world``) the
    gradients are averaged over them before each optimiser step (average_gradients); the
    discriminator's BatchNorm normalises each rank's slice, as DDP without SyncBatchNorm."""
    zhat = frozen_codewords(cfg, encoder, x, size)
    disc.requires_grad_(False)  # the decoder's step only needs gradients through D
    loss, x_hat, terms = decoder_losses(cfg, decoder, disc, zhat, x, perceptual, gan_on, world)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    average_gradients(decoder.parameters(), world)
    optimizer.step()
    disc.requires_grad_(True)
    if gan_on:
        d_loss, real, fake = discriminator_loss(disc, x, x_hat)
        disc_optimizer.zero_grad(set_to_none=True)
        d_loss.backward()
        average_gradients(disc.parameters(), world)
        disc_optimizer.step()
        terms.update(gan_d=d_loss.detach(), d_real=real, d_fake=fake)
    return loss, terms
