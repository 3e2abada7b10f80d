"""Held-out quality during training and at export: what the model card's numbers mean.

PSNR is measured after rounding to 8 bits (what a decoder writes).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from gqtok.nets.unet import Decoder, Encoder
from gqtok.quant.search import quantize
from gqtok.quant.tdc import kl_bits_from_moments


def psnr_8bit(x: torch.Tensor, y: torch.Tensor) -> float:
    """PSNR in dB after rounding both [-1, 1] images to 8 bits (what a decoder would output)."""
    a = ((x.float().clamp(-1, 1) + 1) * 127.5).round()
    b = ((y.float().clamp(-1, 1) + 1) * 127.5).round()
    mse = float((a - b).pow(2).mean())
    return 100.0 if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


@torch.no_grad()
def evaluate(
    encoder: Encoder, decoder: Decoder, images: list[torch.Tensor], dim: int, size: int,
    seed: int, device: torch.device,
) -> dict[str, float]:
    """Mean PSNR of GQ-quantized and unquantized (posterior mean) reconstructions + KL bits."""
    if not images:
        return {}
    was = encoder.training, decoder.training
    encoder.eval()
    decoder.eval()
    psnr_q, psnr_m, bits = [], [], []
    try:
        for x in images:
            x = x.to(device)
            moments = encoder(x).float()
            bits.append(kl_bits_from_moments(moments, dim).flatten().cpu())
            _, zhat = quantize(moments, dim, size, seed)
            mu = moments[:, : moments.shape[1] // 2]
            psnr_q.append(psnr_8bit(decoder(zhat.to(device)), x))
            psnr_m.append(psnr_8bit(decoder(mu), x))
    finally:
        encoder.train(was[0])
        decoder.train(was[1])
    all_bits = torch.cat(bits)
    return {
        "val_psnr_q": float(np.mean(psnr_q)), "val_psnr": float(np.mean(psnr_m)),
        "val_bits_mean": float(all_bits.mean()), "val_bits_min": float(all_bits.min()),
        "val_bits_max": float(all_bits.max()),
    }
