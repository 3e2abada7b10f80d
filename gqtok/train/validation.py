"""Held-out quality during training and at export: what the model card's numbers mean.

PSNR is the one `gqtok eval` reports (eval.metrics.fidelity: 8-bit images, float64 MSE), so a
run's val PSNR and an evaluation of its model follow one convention.
"""

from __future__ import annotations

import numpy as np
import torch

from gqtok.eval.metrics.fidelity import psnr
from gqtok.io.images import from_tensor
from gqtok.nets.unet import Decoder, Encoder
from gqtok.quant.search import quantize
from gqtok.quant.tdc import kl_bits_from_moments


@torch.no_grad()
def evaluate(
    encoder: Encoder, decoder: Decoder, images: list[torch.Tensor], dim: int, size: int,
    seed: int, device: torch.device, perceptual: torch.nn.Module | None = None,
) -> dict[str, float]:
    """Mean PSNR of GQ-quantized and unquantized (posterior mean) reconstructions + KL bits;
    with ``perceptual`` also the quantized reconstructions' mean distance (val_stlpips_q)."""
    if not images:
        return {}
    was = encoder.training, decoder.training
    encoder.eval()
    decoder.eval()
    psnr_q, psnr_m, bits, dist = [], [], [], []
    try:
        for x in images:
            x = x.to(device)
            photo = from_tensor(x)  # the 8-bit crop the reconstructions are compared with
            moments = encoder(x).float()
            bits.append(kl_bits_from_moments(moments, dim).flatten().cpu())
            _, zhat = quantize(moments, dim, size, seed)
            mu = moments[:, : moments.shape[1] // 2]
            x_q = decoder(zhat.to(device)).float()
            psnr_q.append(psnr(from_tensor(x_q), photo))
            if perceptual is not None:
                dist.append(float(perceptual(x_q.clamp(-1, 1), x).float().mean()))
            psnr_m.append(psnr(from_tensor(decoder(mu)), photo))
    finally:
        encoder.train(was[0])
        decoder.train(was[1])
    all_bits = torch.cat(bits)
    extra = {"val_stlpips_q": float(np.mean(dist))} if dist else {}
    return {**extra,
        "val_psnr_q": float(np.mean(psnr_q)), "val_psnr": float(np.mean(psnr_m)),
        "val_bits_mean": float(all_bits.mean()), "val_bits_min": float(all_bits.min()),
        "val_bits_max": float(all_bits.max()),
    }
