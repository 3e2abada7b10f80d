"""A finished run as a gqtok model file (`gqtok export-model`).

The file is the networks plus a card that records how the model was trained and how well it
does on the run's held-out photos, and a token frequency table for the entropy coder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from gqtok.errors import OutputError
from gqtok.io.files import same_file_guard
from gqtok.model import save_model
from gqtok.nets.unet import Decoder, Encoder
from gqtok.quant.search import quantize
from gqtok.train.checkpoints import checkpoint_path, load_checkpoint
from gqtok.train.config import TrainConfig
from gqtok.train.data import crop_tensor, eval_images, list_images, load_photo, load_photos
from gqtok.train.progress import Log
from gqtok.train.validation import evaluate


@torch.no_grad()
def token_counts(
    encoder: Encoder, photos: list[np.ndarray], dim: int, size: int, seed: int,
    multiple: int, max_side: int, device: torch.device,
) -> tuple[np.ndarray, int]:
    """GQ token frequencies over centre crops (at most max_side square) of photos."""
    encoder.eval()
    counts = np.zeros(size, dtype=np.int64)
    for p in photos:
        x = crop_tensor(p, max_side, multiple).to(device)
        idx, _ = quantize(encoder(x).float(), dim, size, seed)
        counts += np.bincount(idx.flatten().cpu().numpy(), minlength=size)
    return counts, int(counts.sum())


def stats_photos(train_dir: Path, count: int, max_side: int) -> list[np.ndarray]:
    """Up to count training photos spread evenly over the sorted list (each once)."""
    paths = list_images(train_dir)
    if not paths:
        raise FileNotFoundError(f"no training images under {train_dir}")
    n = min(count, len(paths))
    picks = [paths[int(i)] for i in np.linspace(0, len(paths) - 1, n).round()] if n else []
    return [load_photo(p, max_side) for p in dict.fromkeys(picks)]


def model_card(
    name: str, cfg: TrainConfig, state: dict[str, Any], quality: dict[str, Any],
    photos: int, tokens: int, token_stats_side: int,
) -> dict[str, Any]:
    """The card stored with the weights: architecture, GQ settings, training provenance."""
    return {
        "name": name,
        "arch": "unet",
        "layout": "bchw",
        "network": cfg.network.to_dict(),
        "quantizer": {"dim": cfg.dim, "size": cfg.codebook_size, "seed": cfg.codebook_seed,
                      "beta": 1.0},
        "entropy": {"kind": "frequency", "smoothing": 0.5},
        "training": {
            "steps": state["step"], "images_seen": state["images_seen"], "crop": cfg.crop,
            "batch": cfg.batch, "lr": cfg.lr, "lr_schedule": cfg.lr_schedule,
            "lr_min": cfg.lr_min, "kl_weight": cfg.kl_weight,
            "perceptual": cfg.perceptual, "perceptual_weight": cfg.perceptual_weight,
            "scale_range": [cfg.scale_min, cfg.scale_max], "flip": cfg.flip,
            "scale_levels": cfg.scale_levels, "warmup_steps": cfg.warmup_steps,
            "wall_time_s": round(float(state["wall_time_s"]), 1),
            "hardware": state.get("hardware", ""), "data": state.get("data", {}),
            "tdc": state["tdc"],
            **({"init": state["init"]} if state.get("init") else {}),
        },
        "quality": quality,
        "token_stats": {"photos": photos, "tokens": tokens, "max_side": token_stats_side},
    }


def export(
    source: Path,
    model_path: Path,
    name: str,
    token_stats_images: int = 64,
    token_stats_side: int = 512,
    data: Path | None = None,
    half: bool = False,
    console: Any | None = None,
    trust_pickle: bool = False,
    overwrite: bool = False,
    blend: float = 1.0,
    own_decoder: bool = False,
) -> dict[str, Any]:
    """Write a gqtok model file from a run directory or checkpoint; returns the stored card.
    A --decoder-only run gives a decoder file for its base model, or with ``own_decoder`` a
    whole model (the base with this decoder as its own).

    The frequency table comes from GQ-quantizing centre crops (<= token_stats_side) of up to
    token_stats_images training photos, spread evenly over the sorted list; val quality is
    measured afresh on the run's eval set.
    """
    log = Log(console)
    ckpt = checkpoint_path(source)
    same_file_guard(ckpt, Path(model_path))
    if not overwrite and Path(model_path).exists():  # refused before the minutes of work
        raise OutputError("exists (use --overwrite)", str(model_path))
    state = load_checkpoint(ckpt, trust_pickle)
    cfg = TrainConfig.from_dict(state["config"])
    data_dir = Path(data) if data is not None else cfg.data
    if cfg.decoder_only and own_decoder:
        return export_own_decoder(state, cfg, data_dir, Path(model_path), name, log, overwrite,
                                  blend)
    if cfg.decoder_only:
        return export_decoder(state, cfg, data_dir, Path(model_path), name, half, log, overwrite,
                              blend)
    if blend != 1.0 or own_decoder:
        raise ValueError("--blend and --own-decoder apply to --decoder-only runs")
    net = cfg.network
    device = torch.device("cpu")
    encoder, decoder = Encoder(net), Decoder(net)
    encoder.load_state_dict(state["encoder"])
    decoder.load_state_dict(state["decoder"])
    encoder.eval()
    decoder.eval()

    photos = stats_photos(data_dir / "train", token_stats_images, cfg.max_side)
    counts, tokens = token_counts(encoder, photos, cfg.dim, cfg.codebook_size, cfg.codebook_seed,
                                  net.downsample, token_stats_side, device)
    log(f"token statistics: {tokens} tokens from {len(photos)} photos, "
        f"{int((counts > 0).sum())} distinct codewords")
    val_photos = load_photos(data_dir / "val", cfg.max_side)
    val_set = eval_images(val_photos, cfg.eval_crop, net.downsample, cfg.eval_images)
    quality = evaluate(encoder, decoder, val_set, cfg.dim, cfg.codebook_size, cfg.codebook_seed,
                       device)
    quality.update({"val_images": len(val_set), "val_crop": cfg.eval_crop})
    card = model_card(name, cfg, state, quality, len(photos), tokens, token_stats_side)
    stored = save_model(model_path, encoder, decoder, card, counts, half=half,
                        overwrite=overwrite)
    log(f"wrote {model_path}: val PSNR {quality.get('val_psnr_q', float('nan')):.2f} dB "
        f"quantized, {quality.get('val_psnr', float('nan')):.2f} dB unquantized")
    return stored


def _decoder_run(
    state: dict[str, Any], cfg: TrainConfig, blend: float, need_base: bool = False
) -> tuple[Encoder, Decoder, Any, dict[str, Any]]:
    """(encoder, decoder, base model or None, training record) of a --decoder-only run; the
    decoder blended with the base's as ``blend`` says. The base (--init, checked against the
    run's record) is loaded only for a blend or when ``need_base``."""
    from gqtok.model import load_model_file

    init = state.get("init") or {}
    if not init.get("weights_sha256"):
        raise ValueError("the run does not record the model it started from (no init hash)")
    if not 0.0 < blend <= 1.0:
        raise ValueError(f"--blend must be in (0, 1], got {blend}")
    net = cfg.network
    encoder, decoder = Encoder(net), Decoder(net)
    encoder.load_state_dict(state["encoder"])
    trained = state["decoder"]
    base = None
    if blend != 1.0 or need_base:
        base = load_model_file(Path(cfg.init))
        if base.weights_sha256 != init["weights_sha256"]:
            raise ValueError(f"{cfg.init} is not the model the run started from (weights differ)")
    if base is not None and blend != 1.0:
        own = base.decoder.state_dict()
        trained = {k: torch.lerp(own[k].float(), v.float(), blend) if v.is_floating_point()
                   else v for k, v in trained.items()}
    decoder.load_state_dict(trained)
    encoder.eval()
    decoder.eval()
    training = {
        "steps": state["step"], "images_seen": state["images_seen"], "crop": cfg.crop,
        "batch": cfg.batch, "lr": cfg.lr, "lr_schedule": cfg.lr_schedule, "lr_min": cfg.lr_min,
        "perceptual": cfg.perceptual, "perceptual_weight": cfg.perceptual_weight,
        "disc_weight": cfg.disc_weight, "disc_start": cfg.disc_start,
        "disc_lr": cfg.disc_lr, "disc_channels": cfg.disc_channels,
        "disc_layers": cfg.disc_layers, "scale_range": [cfg.scale_min, cfg.scale_max],
        "flip": cfg.flip, "wall_time_s": round(float(state["wall_time_s"]), 1),
        "hardware": state.get("hardware", ""), "data": state.get("data", {}),
        "init": init, "blend": blend,
        **({"size_range": [cfg.size_min, cfg.train_size_max]} if cfg.size_min else {}),
    }
    return encoder, decoder, base, training


def _val_quality(
    cfg: TrainConfig, encoder: Encoder, decoder: Decoder, data_dir: Path,
    perceptual: torch.nn.Module | None,
) -> dict[str, Any]:
    """The card's quality block: the run's held-out crops through encoder, GQ and decoder."""
    val_photos = load_photos(data_dir / "val", cfg.max_side)
    val_set = eval_images(val_photos, cfg.eval_crop, cfg.network.downsample, cfg.eval_images)
    quality = evaluate(encoder, decoder, val_set, cfg.dim, cfg.codebook_size, cfg.codebook_seed,
                       torch.device("cpu"), perceptual)
    quality.update({"val_images": len(val_set), "val_crop": cfg.eval_crop})
    return quality


def export_decoder(
    state: dict[str, Any], cfg: TrainConfig, data_dir: Path, path: Path, name: str, half: bool,
    log: Log, overwrite: bool, blend: float = 1.0,
) -> dict[str, Any]:
    """A --decoder-only run as a decoder file bound to the model it started from (the base's
    weights hash is in the card; gqtok serves it only beside that model).

    ``blend`` b < 1 stores (1 - b) * the base decoder + b * the trained one (network
    interpolation): on the default's held-out photos b = 0.7 beat the trained end itself on
    ST-LPIPS, patch KID and PSNR (README, "The perceptual decoder").
    """
    from gqtok.model import save_decoder
    from gqtok.train.losses import build_perceptual

    encoder, decoder, _, training = _decoder_run(state, cfg, blend)
    init = training["init"]
    quality = _val_quality(cfg, encoder, decoder, data_dir, build_perceptual(cfg))
    card = {
        "name": name,
        "base_model": init.get("model", ""),
        "base_weights_sha256": init["weights_sha256"],
        "arch": "unet",
        "network": cfg.network.to_dict(),
        "description": (f"decoder fine-tuned for L1 + ST-LPIPS ({cfg.perceptual}) + patch GAN "
                        f"on {init.get('model', 'the base model')}'s GQ tokens"),
        "training": {k: v for k, v in training.items() if k not in ("lr_min", "size_range")},
        "quality": quality,
    }
    if blend != 1.0:
        card["description"] += f", blended {blend:g} : {1 - blend:g} with the base decoder"
    stored = save_decoder(path, decoder, card, half=half, overwrite=overwrite)
    log(f"wrote {path}: val PSNR {quality.get('val_psnr_q', float('nan')):.2f} dB, "
        f"ST-LPIPS {quality.get('val_stlpips_q', float('nan')):.4f} (quantized)")
    return stored


def export_own_decoder(
    state: dict[str, Any], cfg: TrainConfig, data_dir: Path, path: Path, name: str, log: Log,
    overwrite: bool, blend: float = 1.0,
) -> dict[str, Any]:
    """A --decoder-only run as a whole model (``--own-decoder``): the base model with the
    trained decoder as its own fidelity decoder. Encoder, quantizer and entropy models are the
    base's byte for byte (gqtok.model.save_with_decoder), so the tokens and file sizes are the
    base's; the new name and weights hash tell its .gq files apart from the base's."""
    from gqtok.model import save_with_decoder

    encoder, decoder, base, training = _decoder_run(state, cfg, blend, need_base=True)
    quality = _val_quality(cfg, encoder, decoder, data_dir, None)
    stage = "decoder fine-tuned"
    if cfg.size_min:
        stage += f" on GQ codewords of every codebook size {cfg.size_min}..{cfg.train_size_max}"
    card = {
        **base.card,
        "name": name,
        "description": f"{base.name} with its {stage} (same encoder, tokens and entropy models)",
        "training": {"stage": "decoder-only", **training},
        "quality": quality,
    }
    stored = save_with_decoder(base, decoder, card, path, overwrite)
    log(f"wrote {path}: val PSNR {quality.get('val_psnr_q', float('nan')):.2f} dB quantized at"
        f" K = {cfg.codebook_size}")
    return stored
