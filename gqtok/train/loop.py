"""Train a gqtok Gaussian VAE with the target divergence constraint (`gqtok train`).

run() reads as the training script: load the photos, build (or resume) the state, then step,
log, evaluate and checkpoint until the step count or the time budget is reached. The
objective is in losses.py, the data in data.py, the checkpoint format in checkpoints.py.

Runs where only torch, numpy, pillow and safetensors are installed (rich is used when present);
nothing here imports constriction.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gqtok import dist
from gqtok.dist import World
from gqtok.io.pipeline import pick_device
from gqtok.nets.patchgan import PatchDiscriminator
from gqtok.nets.unet import Decoder, Encoder
from gqtok.quant.tdc import TargetDivergence
from gqtok.train.checkpoints import (
    CHECKPOINT,
    TrainState,
    checkpoint_to_resume,
    load_init,
    replica_digest,
    restore,
    save_checkpoint,
)
from gqtok.train.config import TrainConfig
from gqtok.train.data import batch_to_device, batches, load_training_data, make_sampler
from gqtok.train.hardware import hardware_string
from gqtok.train.losses import (
    build_perceptual,
    decoder_update,
    step_losses,
    step_size,
)
from gqtok.train.progress import METRICS, Log, MetricsFile, Window, eval_line, train_line
from gqtok.train.validation import evaluate


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Rate for the optimiser step after ``step`` steps; a pure function of the step so a
    resumed run follows the same schedule."""
    ramp = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
    if cfg.lr_schedule == "constant":
        return cfg.lr * ramp
    if cfg.lr_schedule == "cosine":
        t = min(max(step / max(cfg.steps, 1), 0.0), 1.0)
        return ramp * (cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1.0 + math.cos(math.pi * t)))
    raise ValueError(f"unknown lr schedule {cfg.lr_schedule!r} (constant, cosine)")


def run(cfg: TrainConfig, console: Any | None = None, *, trust_pickle: bool = False) -> Path:
    """Train (or resume) according to cfg; returns the path of the final checkpoint.

    ``trust_pickle`` lets a resumed checkpoint that needs full unpickling load (runs code).
    Under torchrun (WORLD_SIZE > 1) every rank runs this with its slice of each global batch
    of ``cfg.batch * WORLD_SIZE`` crops (see _distributed); one process trains as it always did.
    """
    world = World.from_env()
    cfg.check()
    device = _device(cfg, world)
    dist.start(world, "nccl" if device.type == "cuda" else "gloo")
    try:
        return _run(cfg, world, device, Log(console, world.is_main), trust_pickle)
    finally:
        dist.stop(world)


def _device(cfg: TrainConfig, world: World) -> torch.device:
    """The configured device; under torchrun a GPU rank takes the GPU of its LOCAL_RANK."""
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    return torch.device(world.device(pick_device(cfg.device)))


def _run(cfg: TrainConfig, world: World, device: torch.device, log: Log,
         trust_pickle: bool) -> Path:
    """The training script proper, on every rank (run() joins and leaves the process group)."""
    t_begin = time.perf_counter()  # the time budget counts data loading too
    out = Path(cfg.out)
    ckpt_path = out / CHECKPOINT
    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
    world.barrier()  # the other ranks look for the checkpoint only once the folder exists
    saved = checkpoint_to_resume(ckpt_path, cfg, trust_pickle, world.size)

    t_load = time.perf_counter()
    data = load_training_data(cfg)
    log(f"data: {len(data.train)} train / {len(data.val)} val photos "
        f"({time.perf_counter() - t_load:.1f} s to decode)")

    ts = _build(cfg, device, data.train, world)
    perceptual = build_perceptual(cfg)  # after the networks: it draws from the same torch RNG
    if perceptual is not None:
        perceptual.to(device)
    if saved is not None:
        restore(ts, saved, device)
        log(f"resumed from {ckpt_path} at step {ts.step}")
    elif cfg.init:
        ts.init = load_init(Path(cfg.init), cfg, ts.encoder, ts.decoder, ts.tdc)
        log(f"starting from {cfg.init} ({ts.init['model']}, {ts.init['steps']} steps), "
            f"TDC lam {ts.tdc.lam:.3g}")
    metrics = MetricsFile(out / METRICS, ts.step if saved is not None else None, world.is_main)
    n_params = sum(p.numel() for m in (ts.encoder, ts.decoder) for p in m.parameters())
    log(f"network: {n_params / 1e6:.2f} M params, f={cfg.network.downsample}, device {device}, "
        f"{torch.get_num_threads()} threads, perceptual {cfg.perceptual}")
    if ts.disc is not None:
        n_disc = sum(p.numel() for p in ts.disc.parameters())
        log(f"decoder only: encoder frozen, discriminator {n_disc / 1e6:.2f} M params, "
            f"adversarial terms from step {cfg.disc_start}")
    ts.hardware = _hardware(device, saved, world)
    if world.group:
        log(f"distributed: {world.size} ranks ({'nccl' if device.type == 'cuda' else 'gloo'}),"
            f" {cfg.batch} crops each, global batch {cfg.batch * world.size}")
        if not cfg.decoder_only:  # the decoder-only step averages its gradients itself
            _distributed(ts, device, world)

    ts.started = time.perf_counter()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crop shape: pick the fastest kernels once
    ts.encoder.train(not cfg.decoder_only)  # a frozen encoder computes what it will at export
    ts.decoder.train()
    stop = {"stop": False}
    win = Window()
    # a drawing thread feeds an accelerator; with CPU steps and per-crop resizing it would
    # only compete for the same cores
    prefetch = device.type != "cpu" or cfg.scale_levels > 0
    with _stop_on_sigint(stop), batches(ts.sampler, cfg.batch, prefetch) as feed:
        while ts.step < cfg.steps:
            over = cfg.minutes > 0 and time.perf_counter() - t_begin > cfg.minutes * 60
            over, interrupted = _agree(world, over, stop["stop"], device)
            if over:
                log(f"time budget of {cfg.minutes:g} min reached")
                break
            if interrupted:
                log("interrupted: saving the checkpoint")
                break
            t0 = time.perf_counter()
            x = batch_to_device(feed.batch(cfg.batch), device)
            if cfg.decoder_only:
                losses, extra = _decoder_step(cfg, ts, x, perceptual, world)
                st = FROZEN_TDC | ts.tdc.stats()
            else:
                losses, extra = _train_step(cfg, ts, x, perceptual, world), {}
                st = ts.tdc.stats()
            win.add(cfg.batch * world.size, time.perf_counter() - t0, losses,
                    3 * cfg.crop * cfg.crop, st, extra)
            if not math.isfinite(losses[0]):
                raise FloatingPointError(f"loss is {losses[0]} at step {ts.step}")
            if (cfg.log_every and ts.step % cfg.log_every == 0) or ts.step == cfg.steps:
                row = win.row(ts.step, ts.images_seen, ts.wall_time(), st,
                              ts.optimizer.param_groups[0]["lr"])
                metrics.add(row)
                log(train_line(row))
                win = Window()
            if (cfg.eval_every and ts.step % cfg.eval_every == 0 and data.val_set
                    and world.is_main):
                _evaluate(cfg, ts, data.val_set, device, metrics, log, perceptual)
            if cfg.ckpt_every and ts.step % cfg.ckpt_every == 0:
                _checkpoint(ckpt_path, ts, feed, cfg, data.summary, device, world, log)
    _checkpoint(ckpt_path, ts, feed, cfg, data.summary, device, world, log)
    log(f"checkpoint {ckpt_path} (step {ts.step}, {ts.images_seen} images, "
        f"{ts.wall_time() / 60:.1f} min)")
    return ckpt_path


def _distributed(ts: TrainState, device: torch.device, world: World) -> None:
    """Wrap the trained networks in DistributedDataParallel (gradients averaged over the
    ranks, weights broadcast from rank 0 once). Each rank's loss is a mean over its slice, so
    the averaged gradient is the global batch's; the TDC statistics are all-reduced in
    step_losses. ts.encoder / ts.decoder stay the bare modules that checkpoints save."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    ts.forward = (DDP(ts.encoder, device_ids=ids), DDP(ts.decoder, device_ids=ids))


def _agree(
    world: World, over: bool, interrupted: bool, device: torch.device
) -> tuple[bool, bool]:
    """Stop decisions every rank takes together: one rank leaving the loop alone would leave
    the others waiting in the next gradient all-reduce. (On the training device: NCCL
    reduces CUDA tensors only.)"""
    if not world.group:
        return over, interrupted
    flags = torch.tensor([float(over), float(interrupted)], device=device)
    flags = world.all_reduce(flags, "max").tolist()
    return bool(flags[0]), bool(flags[1])


def _checkpoint(
    path: Path, ts: TrainState, feed: Any, cfg: TrainConfig, data_summary: dict[str, Any],
    device: torch.device, world: World, log: Log,
) -> None:
    """Rank 0 writes the checkpoint; with several ranks it first gathers a digest of every
    rank's weights and TDC multipliers, kept in the checkpoint, and says if they differ."""
    digests = world.gather(replica_digest(ts)) if world.group else None
    if world.is_main:
        if digests is not None and len(set(digests)) > 1:
            log(f"warning: the ranks' weights differ at step {ts.step} ({len(set(digests))}"
                " distinct digests)")
        save_checkpoint(path, ts, feed, cfg, data_summary, device, world.size, digests)
    world.barrier()  # a rank that resumes right after finds the whole file


# A decoder-only run does not move the encoder, so there are no KL statistics to log.
FROZEN_TDC = {"bits_mean": math.nan, "bits_min": math.nan, "bits_max": math.nan}


def _build(
    cfg: TrainConfig, device: torch.device, photos: list[np.ndarray], world: World
) -> TrainState:
    """Fresh networks (seeded), Adam, TDC multipliers, crop sampler and noise generator; for
    --decoder-only also the discriminator and its Adam, and only the decoder is optimised.
    Every rank seeds alike: their samplers and noise generators stay in one state."""
    torch.manual_seed(cfg.seed)
    encoder, decoder = Encoder(cfg.network).to(device), Decoder(cfg.network).to(device)
    trained = [*decoder.parameters()] if cfg.decoder_only else [
        *encoder.parameters(), *decoder.parameters()]
    opt = torch.optim.Adam(trained, lr=cfg.lr, betas=_betas(cfg))
    tdc = TargetDivergence(cfg.codebook_size)
    sampler = make_sampler(cfg, photos, world.rank, world.size)
    noise = torch.Generator(device=device)
    noise.manual_seed(cfg.seed + 1)
    ts = TrainState(encoder, decoder, opt, tdc, sampler, noise)
    if cfg.decoder_only:
        encoder.requires_grad_(False)
        ts.disc = PatchDiscriminator(cfg.disc_channels, cfg.disc_layers).to(device)
        ts.disc_optimizer = torch.optim.Adam(ts.disc.parameters(), lr=cfg.disc_lr,
                                             betas=_betas(cfg))
    return ts


def _betas(cfg: TrainConfig) -> tuple[float, float]:
    """Adam's betas from the configuration, set every step like the rate: a resumed run
    follows its command line, not the optimiser state it was saved with."""
    return (cfg.adam_beta1, cfg.adam_beta2)


def _train_step(
    cfg: TrainConfig, ts: TrainState, x: torch.Tensor, perceptual: torch.nn.Module | None,
    world: World,
) -> tuple[float, float, float, float]:
    """One optimiser step on batch x; returns (loss, L1, perceptual, TDC term) as floats
    (means over the ranks)."""
    for group in ts.optimizer.param_groups:
        group["lr"], group["betas"] = learning_rate(cfg, ts.step), _betas(cfg)
    encoder, decoder = ts.forward or (ts.encoder, ts.decoder)
    loss, l1, p_mean, kl_loss = step_losses(cfg, encoder, decoder, x, ts.tdc, ts.noise,
                                            perceptual, world)
    ts.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    ts.optimizer.step()
    ts.step += 1
    ts.images_seen += cfg.batch * world.size
    vals = torch.stack([loss.detach(), l1.detach(), p_mean.detach(), kl_loss.detach()])
    if world.group:
        vals = world.all_reduce(vals.float()) / world.size
    v_loss, v_l1, v_p, v_kl = (float(v) for v in vals.tolist())  # one device sync per step
    return v_loss, v_l1, v_p, v_kl


def _decoder_step(
    cfg: TrainConfig, ts: TrainState, x: torch.Tensor, perceptual: torch.nn.Module | None,
    world: World,
) -> tuple[tuple[float, float, float, float], dict[str, float]]:
    """One decoder-only step: the decoder's update on the frozen encoder's codewords, then
    (from disc_start on) the discriminator's; returns (loss, L1, perceptual, 0) and the
    adversarial terms for the log (means over the ranks)."""
    assert ts.disc is not None and ts.disc_optimizer is not None
    lr = learning_rate(cfg, ts.step)
    for group in ts.optimizer.param_groups:
        group["lr"], group["betas"] = lr, _betas(cfg)
    for group in ts.disc_optimizer.param_groups:
        group["lr"], group["betas"] = cfg.disc_lr, _betas(cfg)
    loss, terms = decoder_update(cfg, ts.encoder, ts.decoder, ts.disc, ts.optimizer,
                                 ts.disc_optimizer, x, perceptual, ts.step >= cfg.disc_start,
                                 world, step_size(cfg, ts.step))
    ts.step += 1
    ts.images_seen += cfg.batch * world.size
    names = list(terms)
    stacked = torch.stack([loss.detach().float(), *(terms[k].detach().float() for k in names)])
    if world.group:
        stacked = world.all_reduce(stacked) / world.size
    values = stacked.tolist()
    extra = dict(zip(names, values[1:], strict=True))
    return (values[0], extra.pop("l1"), extra.pop("perceptual"), 0.0), extra


def _evaluate(
    cfg: TrainConfig, ts: TrainState, val_set: list[torch.Tensor], device: torch.device,
    metrics: MetricsFile, log: Log, perceptual: torch.nn.Module | None = None,
) -> None:
    ts.last_eval = evaluate(ts.encoder, ts.decoder, val_set, cfg.dim, cfg.codebook_size,
                            cfg.codebook_seed, device,
                            perceptual if cfg.decoder_only else None)
    metrics.add({"kind": "eval", "step": ts.step, "images": ts.images_seen,
                 "wall_s": ts.wall_time(), **ts.last_eval})
    log(eval_line(ts.step, ts.last_eval))


def _hardware(device: torch.device, saved: dict[str, Any] | None, world: World) -> str:
    """Where this session trains, after the checkpoint's record when it resumed elsewhere."""
    here = hardware_string(device)
    if world.group:
        here = f"{world.size} ranks x {here}"
    if saved is not None and saved.get("hardware") and here not in saved["hardware"]:
        return f"{saved['hardware']} | {here}"  # resumed on another machine
    return here


@contextmanager
def _stop_on_sigint(flag: dict[str, bool]) -> Iterator[None]:
    """First Ctrl-C asks the loop to stop after the current step; the second one interrupts."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if flag["stop"]:
            raise KeyboardInterrupt
        flag["stop"] = True

    old = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
