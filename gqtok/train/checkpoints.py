"""Checkpoints: the whole state of a run in one file, so a resumed run is bit-identical to an
uninterrupted one on the same machine and thread count.

A checkpoint holds weights, Adam, the TDC multipliers, the crop sampler's and the noise
generator's states, counters and provenance. Every value is a tensor or a plain container of
str, int, float, bool and None (the numpy Generator state is a dict of ints), so it is read
with ``torch.load(weights_only=True)``: a planted ``last.pt`` cannot run code on resume or
export. A file that needs full unpickling is refused with a one-line error unless the user
passes --trust-pickle (gqtok.zoo.convert's loader, shared with reference checkpoints).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gqtok.errors import ModelError
from gqtok.io.files import atomic_write
from gqtok.nets.config import UNetConfig
from gqtok.nets.unet import Decoder, Encoder
from gqtok.quant.tdc import TargetDivergence
from gqtok.train.config import TrainConfig
from gqtok.train.data import CropSampler, Prefetcher
from gqtok.zoo.convert import load_torch_file

CHECKPOINT = "last.pt"
KEYS = ("encoder", "decoder", "optimizer", "tdc", "sampler", "rng", "step", "images_seen",
        "wall_time_s", "config")  # written by every release; hardware, data... are optional


@dataclass
class TrainState:
    """What the training steps change, plus the counters and provenance a checkpoint keeps."""

    encoder: Encoder
    decoder: Decoder
    optimizer: torch.optim.Optimizer
    tdc: TargetDivergence
    sampler: CropSampler
    noise: torch.Generator
    step: int = 0
    images_seen: int = 0
    wall_before: float = 0.0  # training seconds of earlier sessions
    started: float = 0.0  # perf_counter() when this session's steps began
    last_eval: dict[str, float] = field(default_factory=dict)
    init: dict[str, Any] | None = None  # provenance of a --init warm start
    hardware: str = ""
    disc: torch.nn.Module | None = None  # --decoder-only: the patch discriminator
    disc_optimizer: torch.optim.Optimizer | None = None
    # under torchrun: the DistributedDataParallel wrappers the steps call instead
    forward: tuple[torch.nn.Module, torch.nn.Module] | None = None

    def wall_time(self) -> float:
        """Training wall time over all sessions (steps, evals and checkpoints; not data loading)."""
        return self.wall_before + time.perf_counter() - self.started


def checkpoint_path(source: Path) -> Path:
    """A run directory's checkpoint, or source itself when it names a file."""
    source = Path(source)
    return source / CHECKPOINT if source.is_dir() else source


def load_checkpoint(path: Path, trust_pickle: bool = False) -> dict[str, Any]:
    """A training checkpoint, read safely (see the module docstring); maps to the CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    state = load_torch_file(path, trust_pickle)
    missing = [k for k in KEYS if k not in state] if isinstance(state, dict) else list(KEYS)
    if missing:
        raise ModelError(f"not a gqtok training checkpoint (no {', '.join(missing)})", str(path))
    return state


def checkpoint_to_resume(
    path: Path, cfg: TrainConfig, trust_pickle: bool, world_size: int = 1
) -> dict[str, Any] | None:
    """The checkpoint in the run's out dir when cfg resumes it, None for a fresh run.

    A run resumes with the number of processes that wrote the checkpoint: --batch is per
    rank, so another count would change the global batch and the crops every step draws.
    """
    if not path.exists():
        return None
    if not cfg.resume:
        raise FileExistsError(f"{path} exists: resume it or choose another out dir")
    state = load_checkpoint(path, trust_pickle)
    saved = TrainConfig.from_dict(state["config"])
    for key in ("network", "dim", "codebook_size", "codebook_seed", "decoder_only"):
        if getattr(saved, key) != getattr(cfg, key):
            raise ValueError(f"cannot resume: {key} differs from the checkpoint's")
    ranks = int(state.get("world_size", 1))
    if ranks != world_size:
        how = "without torchrun" if ranks == 1 else f"under torchrun with {ranks} processes"
        raise ValueError(f"cannot resume: {path} was written by {ranks} process(es), this run"
                         f" has {world_size}; the global batch (--batch x processes) would"
                         f" change. Resume it {how}")
    return state


def replica_digest(ts: TrainState) -> str:
    """sha256 over the trained weights (and the discriminator's) and the TDC multipliers:
    equal on every rank of a healthy distributed run (the gradients are averaged, the TDC
    rule sees the same all-reduced statistics)."""
    h = hashlib.sha256()
    for module in (ts.encoder, ts.decoder):
        for name, t in module.state_dict().items():
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    if ts.disc is not None:  # its weights; its BatchNorm statistics are each rank's own
        for name, t in ts.disc.named_parameters():
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    h.update(json.dumps(ts.tdc.state_dict(), sort_keys=True).encode())
    return h.hexdigest()


def restore(ts: TrainState, state: dict[str, Any], device: torch.device) -> None:
    """Put a checkpoint's state back into freshly built objects, RNGs included."""
    ts.encoder.load_state_dict(state["encoder"])
    ts.decoder.load_state_dict(state["decoder"])
    ts.optimizer.load_state_dict(state["optimizer"])  # its lr is set from the schedule every step
    ts.tdc.load_state_dict(state["tdc"])
    ts.sampler.load_state_dict(state["sampler"])
    torch.set_rng_state(state["rng"]["torch"])
    ts.noise.set_state(state["rng"]["noise"])
    if device.type == "cuda" and state["rng"].get("cuda") is not None:
        torch.cuda.set_rng_state(state["rng"]["cuda"], device)
    ts.step, ts.images_seen = state["step"], state["images_seen"]
    ts.wall_before = state["wall_time_s"]
    ts.last_eval = state.get("last_eval", {})
    ts.init = state.get("init")
    if ts.disc is not None and ts.disc_optimizer is not None:
        ts.disc.load_state_dict(state["disc"])
        ts.disc_optimizer.load_state_dict(state["disc_optimizer"])


def save_checkpoint(
    path: Path, ts: TrainState, feed: CropSampler | Prefetcher, cfg: TrainConfig,
    data_summary: dict[str, Any], device: torch.device, world_size: int = 1,
    replicas: list[str] | None = None,
) -> None:
    """Write the checkpoint atomically: a crash mid-write leaves the previous one intact.

    The sampler state comes from ``feed``, which a Prefetcher keeps at the last batch handed
    out, not at the batches it drew ahead. ``world_size`` processes trained it (its sampler
    and noise states are every rank's); ``replicas`` are their replica_digest values.
    """
    rng: dict[str, Any] = {"torch": torch.get_rng_state(), "noise": ts.noise.get_state().cpu()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    state = {
        "encoder": ts.encoder.state_dict(), "decoder": ts.decoder.state_dict(),
        "optimizer": ts.optimizer.state_dict(), "tdc": ts.tdc.state_dict(),
        "sampler": feed.state_dict(), "rng": rng, "step": ts.step,
        "images_seen": ts.images_seen, "wall_time_s": ts.wall_time(), "config": cfg.to_dict(),
        "hardware": ts.hardware, "data": data_summary, "last_eval": ts.last_eval,
        "init": ts.init, "world_size": world_size,
    }
    if replicas is not None:
        state["replicas"] = replicas
    if ts.disc is not None and ts.disc_optimizer is not None:
        state["disc"] = ts.disc.state_dict()
        state["disc_optimizer"] = ts.disc_optimizer.state_dict()
    atomic_write(path, lambda tmp: torch.save(state, tmp), overwrite=True)


def load_init(
    path: Path, cfg: TrainConfig, encoder: Encoder, decoder: Decoder, tdc: TargetDivergence
) -> dict[str, Any]:
    """Warm start from a gqtok model file; returns its provenance for the model card.

    The TDC multipliers come from the card so the constraint continues where the earlier run
    left it instead of re-converging from 1.0 (which would let the KL drift for hundreds of
    steps). A model of the same network trained for another token dimension or codebook size
    (the rate family: the default's network retrained for G = 8 or 4 tokens per position)
    gives its weights only: its multipliers held another target, so they start at 1.0.
    """
    from safetensors import safe_open

    from gqtok.format.card import read_card

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file to start from")
    card = read_card(path)
    if card.get("arch", "unet") != "unet":
        raise ValueError(f"{path}: only UNet models can be trained further")
    net = UNetConfig.from_dict(card["network"])
    if net != cfg.network:
        raise ValueError(f"{path}: its network {net.to_dict()} differs from the configured one")
    quant = card.get("quantizer", {})
    same_tokens = (quant.get("dim"), quant.get("size")) == (cfg.dim, cfg.codebook_size)
    if cfg.decoder_only and not same_tokens:
        raise ValueError(f"{path}: --decoder-only decodes this model's own tokens (dim"
                         f" {quant.get('dim')}, K {quant.get('size')}): use the same --dim and"
                         " --codebook-size")
    parts: dict[str, dict[str, torch.Tensor]] = {"encoder": {}, "decoder": {}}
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
            head, _, rest = key.partition(".")
            if head in parts:
                parts[head][rest] = f.get_tensor(key).float()
    encoder.load_state_dict(parts["encoder"])
    decoder.load_state_dict(parts["decoder"])
    training = card.get("training", {})
    if training.get("tdc") and same_tokens:
        tdc.load_state_dict({k: v for k, v in training["tdc"].items() if k != "target"})
    earlier = {k: training.get(k) for k in ("steps", "images_seen", "wall_time_s", "hardware")}
    if not same_tokens:  # the card of the new model says what the weights were trained for
        earlier["quantizer"] = {"dim": quant.get("dim"), "size": quant.get("size")}
    if training.get("init"):  # a chain of warm starts: keep the whole budget
        earlier["init"] = training["init"]
    return {"model": card.get("name", path.stem), "weights_sha256": card.get("weights_sha256"),
            **earlier}
