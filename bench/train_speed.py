"""Training step speed of the default network: crops per second on this machine.

Times full optimiser steps of `gqtok train` (gqtok.train.losses.step_losses: encoder,
reparameterised sample, decoder, L1 + TDC loss; bf16 autocast on CUDA; then Adam) on random
crops, without the perceptual term and data loading. Used to size a training run to a time budget
(`--budget-s` prints the steps that fit in it). `--decoder-only` times the step of
`gqtok train --decoder-only` instead (frozen encoder + GQ search, decoder, L1 + ST-LPIPS Alex +
adversarial term with the adaptive weight, then the discriminator's step), as
scripts/train_perceptual.sh runs it.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch

from gqtok.nets.unet import Decoder, Encoder
from gqtok.quant.tdc import TargetDivergence
from gqtok.train.config import TrainConfig
from gqtok.train.losses import step_losses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--budget-s", type=float, default=0.0, help="print how many steps fit")
    ap.add_argument("--steps-only", action="store_true",
                    help="with --budget-s: print only the number of steps (for scripts)")
    ap.add_argument("--decoder-only", action="store_true", help="time the decoder-only step")
    ap.add_argument("--disc-channels", type=int, default=TrainConfig.disc_channels,
                    help="--decoder-only: the discriminator's first width")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    cfg = TrainConfig(crop=args.crop, batch=args.batch, perceptual="none", device=device.type)
    enc, dec = Encoder(cfg.network).to(device), Decoder(cfg.network).to(device)
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=1e-5)
    tdc = TargetDivergence(cfg.codebook_size)
    noise = torch.Generator(device=device)
    noise.manual_seed(0)
    x = torch.rand(args.batch, 3, args.crop, args.crop, device=device) * 2 - 1

    def step() -> None:
        loss = step_losses(cfg, enc, dec, x, tdc, noise, None)[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        float(loss.detach())  # the training loop reads the loss every step too

    if args.decoder_only:
        step = _decoder_step(args, device, x, enc, dec)

    for _ in range(args.warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    dt = (time.perf_counter() - t0) / args.steps
    out = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(), "crop": args.crop, "batch": args.batch,
        "ms_per_step": round(dt * 1000, 2), "steps_per_s": round(1 / dt, 3),
        "crops_per_s": round(args.batch / dt, 1),
    }
    if args.budget_s:
        out["steps_in_budget"] = int(args.budget_s / dt)
    print(out["steps_in_budget"] if args.steps_only and args.budget_s else json.dumps(out))


def _decoder_step(args: argparse.Namespace, device: torch.device, x: torch.Tensor,
                  enc: Encoder, dec: Decoder) -> Callable[[], None]:
    """The step of a --decoder-only run with its default discriminator, GAN term on."""
    from gqtok.nets.patchgan import PatchDiscriminator
    from gqtok.train.losses import build_perceptual, decoder_update

    cfg = TrainConfig(crop=args.crop, batch=args.batch, device=device.type, decoder_only=True,
                      disc_channels=args.disc_channels)
    enc.requires_grad_(False)
    perceptual = build_perceptual(cfg)
    if perceptual is not None:
        perceptual.to(device)
    disc = PatchDiscriminator(cfg.disc_channels, cfg.disc_layers).to(device)
    opt = torch.optim.Adam(dec.parameters(), lr=1e-5)
    dopt = torch.optim.Adam(disc.parameters(), lr=1e-5)

    def step() -> None:
        loss = decoder_update(cfg, enc, dec, disc, opt, dopt, x, perceptual, True)[0]
        float(loss.detach())

    return step


if __name__ == "__main__":
    main()
