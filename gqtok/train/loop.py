"""Train a gqtok Gaussian VAE with the target divergence constraint, and export it as a model.

Objective per batch (GQ_SPEC §5, without the GAN and the learned output log-variance):

    loss = sum|x - x_hat| / B  +  w_p * (3*H*W) * mean ST-LPIPS(x_hat, x)  +  w_kl * TDC

The reconstruction terms use the reference's scaling (summed over pixels, averaged over the
batch; LPIPS broadcast to every pixel), so ``kl_weight`` = 0.1 means what it means in the
reference's HEAD configs. The decoder sees the reparameterised sample mu + eps*sigma; GQ is only
used for evaluation and export.

Runs where only torch, numpy, pillow and safetensors are installed (rich is used when present);
nothing here imports constriction. Everything that makes a run reproducible (weights, Adam,
TDC multipliers, crop sampler and noise generator states) is checkpointed, so a resumed run is
bit-identical to an uninterrupted one on the same machine and thread count.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import platform
import queue
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from gqtok.io.files import IMAGE_EXTS
from gqtok.model import save_model
from gqtok.nets.config import UNetConfig
from gqtok.nets.unet import Decoder, Encoder
from gqtok.quant.search import LOGVAR_MAX, LOGVAR_MIN, quantize
from gqtok.quant.tdc import TargetDivergence, kl_bits_from_moments, kl_bits_per_token

CHECKPOINT = "last.pt"
METRICS = "metrics.csv"
METRIC_COLUMNS = (
    "kind", "step", "images", "wall_s", "loss", "l1", "perceptual", "kl_loss", "bits_mean",
    "bits_min", "bits_max", "lam", "lam_min", "lam_max", "img_per_s", "lr", "val_psnr_q",
    "val_psnr", "val_bits_mean", "val_bits_min", "val_bits_max",
)


def fast_cpu_network() -> UNetConfig:
    """The CPU-friendly default: pixel-unshuffle stem, f = 8, no attention (~2.9 M params)."""
    return UNetConfig(ch=32, ch_mult=(2, 2, 4), num_res_blocks=1, attn_resolutions=(),
                      z_channels=16, stem=2)


@dataclass
class TrainConfig:
    """Everything a training run depends on; stored in every checkpoint."""

    data: Path = Path("data/prepared")  # folder with train/ and val/ image folders
    out: Path = Path("runs/gqtok")
    network: UNetConfig = field(default_factory=fast_cpu_network)
    dim: int = 16  # GQ token dimension (z_channels / dim tokens per position)
    codebook_size: int = 65536  # K; the TDC target is log2(K) bits per token
    codebook_seed: int = 42
    crop: int = 128
    batch: int = 8
    lr: float = 1e-4  # Adam, PyTorch default betas, as in the reference
    lr_schedule: str = "constant"  # "constant" | "cosine" (lr -> lr_min over the steps)
    lr_min: float = 0.0
    kl_weight: float = 0.1  # reference HEAD configs (the released weights may have used 1.0)
    perceptual: str = "alex"  # "alex" | "vgg" (ST-LPIPS backbone) | "none"
    perceptual_weight: float = 1.0
    steps: int = 100_000
    minutes: float = 0.0  # wall-clock budget of this invocation (incl. loading); 0 = none
    log_every: int = 20
    ckpt_every: int = 500  # 0 = only at the end
    eval_every: int = 1000  # 0 = never during training
    eval_crop: int = 256  # centre crops of the val photos
    eval_images: int = 16
    seed: int = 0
    threads: int = 0  # torch CPU threads; 0 = leave torch's default
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    scale_min: float = 0.25  # multi-scale: photo resized by s in [scale_min, scale_max]
    scale_max: float = 1.0  # (log-uniform; never so small that the crop does not fit)
    scale_levels: int = 0  # >0: photos pre-resized to this many log-spaced scales, crops are
    #                        plain slices (fast enough to feed a GPU); 0 = any scale per crop
    warmup_steps: int = 0  # lr ramps linearly from 0 over these steps (fresh Adam, warm start)
    flip: bool = True
    max_side: int = 2048  # photos are downscaled to this longest side when loaded; 0 = keep
    resume: bool = False
    init: str = ""  # gqtok model file to start from (weights + TDC multipliers); "" = random

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["data"], d["out"] = str(self.data), str(self.out)
        d["network"] = self.network.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {k: v for k, v in d.items() if k in {f.name for f in fields(cls)}}
        known["data"], known["out"] = Path(known["data"]), Path(known["out"])
        known["network"] = UNetConfig.from_dict(known["network"])
        return cls(**known)


# ----------------------------------------------------------------------------------------------
# Data


def list_images(folder: Path) -> list[Path]:
    """Image files below folder, recursively, in a stable order."""
    if not folder.is_dir():
        return []
    found = (p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
    return sorted(p for p in found if p.is_file())


def load_photo(path: Path, max_side: int = 0) -> np.ndarray:
    """Decode to (H, W, 3) uint8 RGB, shrinking so the longer side is at most max_side."""
    with Image.open(path) as im:
        if max_side and max(im.size) > max_side:
            im.draft("RGB", (max_side, max_side))  # cheap JPEG DCT scaling, stays >= target
        rgb = im.convert("RGB")
    if max_side and max(rgb.size) > max_side:
        s = max_side / max(rgb.size)
        size = (max(1, round(rgb.width * s)), max(1, round(rgb.height * s)))
        rgb = rgb.resize(size, Image.Resampling.LANCZOS)
    return np.asarray(rgb, dtype=np.uint8).copy()


def load_photos(folder: Path, max_side: int = 0) -> list[np.ndarray]:
    return [load_photo(p, max_side) for p in list_images(folder)]


class CropSampler:
    """Random multi-scale crops (+ flips) from in-memory photos, driven by one numpy Generator.

    Photos are drawn with probability proportional to sqrt(pixel count): a compromise between
    one photo = one sample (over-samples small photos) and one pixel = one sample (lets the
    few very large photos dominate).
    """

    def __init__(
        self, photos: list[np.ndarray], crop: int, scale_range: tuple[float, float] = (1.0, 1.0),
        flip: bool = True, seed: int = 0,
    ) -> None:
        if not photos:
            raise ValueError("no training photos")
        self.photos = photos
        self.crop = crop
        self.scale_range = scale_range
        self.flip = flip
        self.rng = np.random.default_rng(seed)
        w = np.sqrt(np.array([p.shape[0] * p.shape[1] for p in photos], dtype=np.float64))
        self.p = w / w.sum()

    def _one(self, photo: np.ndarray) -> np.ndarray:
        h, w = photo.shape[:2]
        c = self.crop
        lo = max(self.scale_range[0], c / min(h, w))  # smallest scale where the crop fits
        hi = max(self.scale_range[1], lo)
        s = math.exp(self.rng.uniform(math.log(lo), math.log(hi))) if hi > lo else lo
        side = min(c / s, float(min(h, w)))  # source pixels the crop covers
        x0 = int(self.rng.integers(0, int(w - side) + 1))
        y0 = int(self.rng.integers(0, int(h - side) + 1))
        flip = self.flip and bool(self.rng.random() < 0.5)
        if side == c:
            out = photo[y0 : y0 + c, x0 : x0 + c]
        else:
            m = 4  # margin so the resampling filter sees real neighbours, not a clamped edge
            ax0, ay0 = max(0, x0 - m), max(0, y0 - m)
            ax1, ay1 = min(w, math.ceil(x0 + side) + m), min(h, math.ceil(y0 + side) + m)
            sub = Image.fromarray(np.ascontiguousarray(photo[ay0:ay1, ax0:ax1]))
            box = (x0 - ax0, y0 - ay0, x0 - ax0 + side, y0 - ay0 + side)
            out = np.asarray(sub.resize((c, c), Image.Resampling.BICUBIC, box=box))
        return out[:, ::-1] if flip else out

    def _pick(self, index: int) -> np.ndarray:
        return self._one(self.photos[index])

    def batch(self, n: int) -> np.ndarray:
        """(n, crop, crop, 3) uint8."""
        idx = self.rng.choice(len(self.photos), size=n, p=self.p)
        return np.stack([self._pick(int(i)) for i in idx])

    def state_dict(self) -> dict[str, Any]:
        return {"bit_generator": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["bit_generator"]


class PyramidSampler(CropSampler):
    """CropSampler over photos resized once to fixed log-spaced scales.

    Resampling each crop costs milliseconds of CPU, which starves a GPU; slicing a pre-resized
    level does not. Scales are drawn uniformly among the levels where the crop fits (the
    discrete counterpart of the log-uniform draw); a photo too small for every level is
    enlarged so its short side equals the crop, as CropSampler does.
    """

    def __init__(
        self, photos: list[np.ndarray], crop: int, scale_range: tuple[float, float] = (1.0, 1.0),
        levels: int = 8, flip: bool = True, seed: int = 0,
    ) -> None:
        super().__init__(photos, crop, scale_range, flip, seed)
        lo, hi = scale_range
        n = max(1, levels)
        scales = [hi] if n == 1 or hi <= lo else list(np.geomspace(lo, hi, n))
        self.levels: list[list[np.ndarray]] = []
        for photo in photos:
            h, w = photo.shape[:2]
            fits = [s for s in scales if min(h, w) * s >= crop]
            if not fits:
                fits = [crop / min(h, w)]
            self.levels.append([_resized(photo, s) for s in fits])
        # mirrored copies: slicing them is ~5x faster than copying a negative-stride view
        self.mirrored = [[lv[:, ::-1].copy() for lv in lvs] for lvs in self.levels] if flip else []

    def _pick(self, index: int) -> np.ndarray:
        levels = self.levels[index]
        k = int(self.rng.integers(0, len(levels)))
        h, w = levels[k].shape[:2]
        c = self.crop
        y0 = int(self.rng.integers(0, h - c + 1))
        x0 = int(self.rng.integers(0, w - c + 1))
        if self.flip and self.rng.random() < 0.5:  # = levels[k][y0:y0+c, x0:x0+c][:, ::-1]
            return self.mirrored[index][k][y0 : y0 + c, w - x0 - c : w - x0]
        return levels[k][y0 : y0 + c, x0 : x0 + c]


class Prefetcher:
    """Draws the next batches on a background thread so the sampler's CPU time overlaps the
    accelerator's step. state_dict() is the sampler's state after the last batch handed out,
    not after the ones drawn ahead, so a checkpoint resumes exactly where training stood."""

    def __init__(self, sampler: CropSampler, batch: int, depth: int = 3) -> None:
        self.sampler, self.batch_size = sampler, batch
        self._state = sampler.state_dict()
        self._queue: queue.Queue[tuple[np.ndarray, dict[str, Any]] | BaseException] = (
            queue.Queue(maxsize=depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, daemon=True)
        self._thread.start()

    def _put(self, item: tuple[np.ndarray, dict[str, Any]] | BaseException) -> None:
        while not self._stop.is_set():  # never block close() on a full queue
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _fill(self) -> None:
        try:
            while not self._stop.is_set():
                self._put((self.sampler.batch(self.batch_size), self.sampler.state_dict()))
        except BaseException as exc:  # raised again on the training thread by batch()
            self._put(exc)

    def batch(self, n: int) -> np.ndarray:
        if n != self.batch_size:
            raise ValueError(f"prefetcher draws batches of {self.batch_size}, asked for {n}")
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        batch, self._state = item
        return batch

    def state_dict(self) -> dict[str, Any]:
        return self._state

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def _resized(photo: np.ndarray, scale: float) -> np.ndarray:
    h, w = photo.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size == (w, h):
        return photo
    im = Image.fromarray(photo).resize(size, Image.Resampling.LANCZOS)
    return np.asarray(im, dtype=np.uint8).copy()


def to_tensor(batch: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 in [-1, 1]."""
    return batch_to_device(batch, torch.device("cpu"))


def batch_to_device(batch: np.ndarray, device: torch.device) -> torch.Tensor:
    """to_tensor on the device: uint8 crosses the bus, 4x less than float32 (same values)."""
    x = torch.from_numpy(np.ascontiguousarray(batch)).to(device, non_blocking=True)
    return x.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0).contiguous()


def center_crop(photo: np.ndarray, size: int, multiple: int) -> np.ndarray:
    """Centre crop of at most size x size, each side a multiple of the network's downsampling."""
    h, w = photo.shape[:2]
    ch = min(size, h) // multiple * multiple
    cw = min(size, w) // multiple * multiple
    if ch == 0 or cw == 0:
        raise ValueError(f"photo {w}x{h} is smaller than the downsampling factor {multiple}")
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    return photo[y0 : y0 + ch, x0 : x0 + cw]


def eval_images(
    photos: list[np.ndarray], size: int, multiple: int, count: int
) -> list[torch.Tensor]:
    """Fixed held-out set: centre crops of the first count photos (sorted by path)."""
    return [to_tensor(center_crop(p, size, multiple)[None]) for p in photos[:count]]


# ----------------------------------------------------------------------------------------------
# Evaluation


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


# ----------------------------------------------------------------------------------------------
# Helpers: device, hardware, logging, checkpoints


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but CUDA is not available")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def hardware_string(device: torch.device) -> str:
    """Human-readable description of where training ran (goes into the model card)."""
    if device.type == "cuda":
        what = torch.cuda.get_device_name(device)
    else:
        what = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    what = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        what = f"{what}, {torch.get_num_threads()} threads"
    return f"{what}; {platform.system()} {platform.machine()}; torch {torch.__version__}"


class _Log:
    """rich when available, plain print otherwise (training must not need rich)."""

    def __init__(self, console: Any | None) -> None:
        if console is None:
            try:
                from rich.console import Console

                console = Console(highlight=False)
            except ImportError:
                console = None
        self.console = console

    def __call__(self, msg: str) -> None:
        if self.console is not None:
            self.console.print(msg, markup=False, highlight=False, soft_wrap=True)
        else:
            print(msg, flush=True)


class _Metrics:
    """Appends rows to out/metrics.csv; a resumed run first drops rows past its checkpoint."""

    def __init__(self, path: Path, resume_step: int | None) -> None:
        self.path = path
        rows: list[dict[str, Any]] = []
        if resume_step is not None and path.exists():
            with path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        self._write(rows, "w")

    def _write(self, rows: list[dict[str, Any]], mode: str) -> None:
        with self.path.open(mode, newline="") as f:
            w = csv.DictWriter(f, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
            if mode == "w":
                w.writeheader()
            w.writerows(rows)

    def add(self, row: dict[str, Any]) -> None:
        fmt = {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
        self._write([fmt], "a")


def _save_atomic(obj: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint dict (trusted local file: it holds numpy RNG state, so not weights_only)."""
    return torch.load(path, map_location="cpu", weights_only=False)


@contextmanager
def _closing(feed: Any) -> Iterator[None]:
    try:
        yield
    finally:
        if isinstance(feed, Prefetcher):
            feed.close()


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


def build_perceptual(cfg: TrainConfig) -> torch.nn.Module | None:
    if cfg.perceptual == "none" or cfg.perceptual_weight == 0:
        return None
    from gqtok.nets.stlpips import STLPIPS

    return STLPIPS(cfg.perceptual)


# ----------------------------------------------------------------------------------------------
# Training


@dataclass
class _Window:
    """Running sums between two log lines."""

    steps: int = 0
    images: int = 0
    seconds: float = 0.0
    loss: float = 0.0
    l1: float = 0.0
    perceptual: float = 0.0
    kl_loss: float = 0.0
    bits_mean: float = 0.0
    bits_min: float = math.inf
    bits_max: float = -math.inf


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


def load_init(
    path: Path, cfg: TrainConfig, encoder: Encoder, decoder: Decoder, tdc: TargetDivergence
) -> dict[str, Any]:
    """Warm start from a gqtok model file; returns its provenance for the model card.

    The TDC multipliers come from the card so the constraint continues where the earlier run
    left it instead of re-converging from 1.0 (which would let the KL drift for hundreds of
    steps).
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
    if (quant.get("dim"), quant.get("size")) != (cfg.dim, cfg.codebook_size):
        raise ValueError(f"{path}: trained for dim {quant.get('dim')}, K {quant.get('size')}")
    parts: dict[str, dict[str, torch.Tensor]] = {"encoder": {}, "decoder": {}}
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
            head, _, rest = key.partition(".")
            if head in parts:
                parts[head][rest] = f.get_tensor(key).float()
    encoder.load_state_dict(parts["encoder"])
    decoder.load_state_dict(parts["decoder"])
    training = card.get("training", {})
    if training.get("tdc"):
        tdc.load_state_dict({k: v for k, v in training["tdc"].items() if k != "target"})
    earlier = {k: training.get(k) for k in ("steps", "images_seen", "wall_time_s", "hardware")}
    if training.get("init"):  # a chain of warm starts: keep the whole budget
        earlier["init"] = training["init"]
    return {"model": card.get("name", path.stem), "weights_sha256": card.get("weights_sha256"),
            **earlier}


def step_losses(
    cfg: TrainConfig, encoder: Encoder, decoder: Decoder, x: torch.Tensor,
    tdc: TargetDivergence, noise: torch.Generator, perceptual: torch.nn.Module | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward pass of one training step: (loss, L1, perceptual, TDC term), and the TDC update.

    Shared by run() and bench/train_speed.py, so the bench times the step that trains.
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
    tdc.update(kl2)  # once per AE step: there is no discriminator step (see gqtok.tdc)
    return loss, l1, p_mean, kl_loss


def run(cfg: TrainConfig, console: Any | None = None) -> Path:
    """Train (or resume) according to cfg; returns the path of the final checkpoint."""
    t_begin = time.perf_counter()  # the time budget counts data loading too
    log = _Log(console)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    net = cfg.network
    if net.z_channels % cfg.dim:
        raise ValueError(f"z_channels {net.z_channels} is not divisible by dim {cfg.dim}")
    if cfg.crop % net.downsample:
        raise ValueError(f"crop {cfg.crop} is not a multiple of the downsampling {net.downsample}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / CHECKPOINT
    state = None
    if ckpt_path.exists():
        if not cfg.resume:
            raise FileExistsError(f"{ckpt_path} exists: resume it or choose another out dir")
        state = load_checkpoint(ckpt_path)
        saved = TrainConfig.from_dict(state["config"])
        for key in ("network", "dim", "codebook_size", "codebook_seed"):
            if getattr(saved, key) != getattr(cfg, key):
                raise ValueError(f"cannot resume: {key} differs from the checkpoint's")

    t_load = time.perf_counter()
    train_photos = load_photos(Path(cfg.data) / "train", cfg.max_side)
    val_photos = load_photos(Path(cfg.data) / "val", cfg.max_side)
    if not train_photos:
        raise FileNotFoundError(f"no training images under {Path(cfg.data) / 'train'}")
    val_set = eval_images(val_photos, cfg.eval_crop, net.downsample, cfg.eval_images)
    data_summary = {"dir": str(cfg.data), "train_photos": len(train_photos),
                    "val_photos": len(val_photos), "max_side": cfg.max_side}
    log(f"data: {len(train_photos)} train / {len(val_photos)} val photos "
        f"({time.perf_counter() - t_load:.1f} s to decode)")

    torch.manual_seed(cfg.seed)
    encoder, decoder = Encoder(net).to(device), Decoder(net).to(device)
    params = [*encoder.parameters(), *decoder.parameters()]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    tdc = TargetDivergence(cfg.codebook_size)
    scale_range = (cfg.scale_min, cfg.scale_max)
    sampler = (PyramidSampler(train_photos, cfg.crop, scale_range, cfg.scale_levels, cfg.flip,
                              cfg.seed) if cfg.scale_levels > 0
               else CropSampler(train_photos, cfg.crop, scale_range, cfg.flip, cfg.seed))
    feed: CropSampler | Prefetcher = sampler
    noise = torch.Generator(device=device)
    noise.manual_seed(cfg.seed + 1)
    perceptual = build_perceptual(cfg)
    if perceptual is not None:
        perceptual.to(device)
    step, images_seen, wall = 0, 0, 0.0
    last_eval: dict[str, float] = {}
    init_info: dict[str, Any] | None = None
    if state is not None:
        encoder.load_state_dict(state["encoder"])
        decoder.load_state_dict(state["decoder"])
        opt.load_state_dict(state["optimizer"])  # its lr is set from the schedule every step
        tdc.load_state_dict(state["tdc"])
        sampler.load_state_dict(state["sampler"])
        torch.set_rng_state(state["rng"]["torch"])
        noise.set_state(state["rng"]["noise"])
        if device.type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"], device)
        step, images_seen, wall = state["step"], state["images_seen"], state["wall_time_s"]
        last_eval = state.get("last_eval", {})
        init_info = state.get("init")
        log(f"resumed from {ckpt_path} at step {step}")
    elif cfg.init:
        init_info = load_init(Path(cfg.init), cfg, encoder, decoder, tdc)
        log(f"starting from {cfg.init} ({init_info['model']}, {init_info['steps']} steps), "
            f"TDC lam {tdc.lam:.3g}")
    metrics = _Metrics(out / METRICS, step if state is not None else None)
    n_params = sum(p.numel() for p in params)
    log(f"network: {n_params / 1e6:.2f} M params, f={net.downsample}, device {device}, "
        f"{torch.get_num_threads()} threads, perceptual {cfg.perceptual}")
    hardware = hardware_string(device)
    if state is not None and state.get("hardware") and hardware not in state["hardware"]:
        hardware = f"{state['hardware']} | {hardware}"  # resumed on another machine

    session_start = time.perf_counter()

    def wall_now() -> float:
        """Training wall time over all sessions (steps, evals and checkpoints; not data loading)."""
        return wall + time.perf_counter() - session_start

    def save() -> None:
        rng: dict[str, Any] = {"torch": torch.get_rng_state(), "noise": noise.get_state().cpu()}
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(device)
        _save_atomic({
            "encoder": encoder.state_dict(), "decoder": decoder.state_dict(),
            "optimizer": opt.state_dict(), "tdc": tdc.state_dict(),
            "sampler": feed.state_dict(), "rng": rng, "step": step,
            "images_seen": images_seen, "wall_time_s": wall_now(), "config": cfg.to_dict(),
            "hardware": hardware, "data": data_summary, "last_eval": last_eval,
            "init": init_info,
        }, ckpt_path)

    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crop shape: pick the fastest kernels once
    pixels = 3 * cfg.crop * cfg.crop
    encoder.train()
    decoder.train()
    flag = {"stop": False}
    win = _Window()
    if device.type != "cpu" or cfg.scale_levels > 0:  # not with CPU steps + per-crop resizing,
        feed = Prefetcher(sampler, cfg.batch)          # which would only share the same cores
    with _stop_on_sigint(flag), _closing(feed):
        while step < cfg.steps:
            if cfg.minutes > 0 and time.perf_counter() - t_begin > cfg.minutes * 60:
                log(f"time budget of {cfg.minutes:g} min reached")
                break
            if flag["stop"]:
                log("interrupted: saving the checkpoint")
                break
            t0 = time.perf_counter()
            for group in opt.param_groups:
                group["lr"] = learning_rate(cfg, step)
            x = batch_to_device(feed.batch(cfg.batch), device)
            loss, l1, p_mean, kl_loss = step_losses(cfg, encoder, decoder, x, tdc, noise,
                                                    perceptual)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            images_seen += cfg.batch
            vals = torch.stack([loss.detach(), l1.detach(), p_mean.detach(), kl_loss.detach()])
            v_loss, v_l1, v_p, v_kl = (float(v) for v in vals.tolist())
            dt = time.perf_counter() - t0
            st = tdc.stats()
            win.steps += 1
            win.images += cfg.batch
            win.seconds += dt
            win.loss += v_loss
            win.l1 += v_l1 / pixels
            win.perceptual += v_p
            win.kl_loss += v_kl
            win.bits_mean += st["bits_mean"]
            win.bits_min = min(win.bits_min, st["bits_min"])
            win.bits_max = max(win.bits_max, st["bits_max"])
            if not math.isfinite(v_loss):
                raise FloatingPointError(f"loss is {v_loss} at step {step}")
            if (cfg.log_every and step % cfg.log_every == 0) or step == cfg.steps:
                n = win.steps
                row = {
                    "kind": "train", "step": step, "images": images_seen, "wall_s": wall_now(),
                    "loss": win.loss / n, "l1": win.l1 / n, "perceptual": win.perceptual / n,
                    "kl_loss": win.kl_loss / n, "bits_mean": win.bits_mean / n,
                    "bits_min": win.bits_min, "bits_max": win.bits_max, "lam": st["lam"],
                    "lam_min": st["lam_min"], "lam_max": st["lam_max"],
                    "img_per_s": win.images / max(win.seconds, 1e-9),
                    "lr": opt.param_groups[0]["lr"],
                }
                metrics.add(row)
                log(f"step {step:>7} | loss {row['loss']:9.1f} | L1 {row['l1']:.4f} | "
                    f"lpips {row['perceptual']:.4f} | bits {row['bits_mean']:6.2f} "
                    f"[{row['bits_min']:5.2f}, {row['bits_max']:5.2f}] | lam {st['lam']:.3g} "
                    f"min {st['lam_min']:.3g} max {st['lam_max']:.3g} | "
                    f"{row['img_per_s']:.2f} img/s")
                win = _Window()
            if cfg.eval_every and step % cfg.eval_every == 0 and val_set:
                last_eval = evaluate(encoder, decoder, val_set, cfg.dim, cfg.codebook_size,
                                     cfg.codebook_seed, device)
                metrics.add({"kind": "eval", "step": step, "images": images_seen,
                             "wall_s": wall_now(), **last_eval})
                log(f"eval {step:>7} | PSNR quantized {last_eval['val_psnr_q']:.2f} dB | "
                    f"unquantized {last_eval['val_psnr']:.2f} dB | bits "
                    f"{last_eval['val_bits_mean']:.2f} [{last_eval['val_bits_min']:.2f}, "
                    f"{last_eval['val_bits_max']:.2f}]")
            if cfg.ckpt_every and step % cfg.ckpt_every == 0:
                save()
    save()
    log(f"checkpoint {ckpt_path} (step {step}, {images_seen} images, {wall_now() / 60:.1f} min)")
    return ckpt_path


# ----------------------------------------------------------------------------------------------
# Export


def _checkpoint_path(source: Path) -> Path:
    source = Path(source)
    return source / CHECKPOINT if source.is_dir() else source


@torch.no_grad()
def token_counts(
    encoder: Encoder, photos: list[np.ndarray], dim: int, size: int, seed: int,
    multiple: int, max_side: int, device: torch.device,
) -> tuple[np.ndarray, int]:
    """GQ token frequencies over centre crops (at most max_side square) of photos."""
    encoder.eval()
    counts = np.zeros(size, dtype=np.int64)
    for p in photos:
        x = to_tensor(center_crop(p, max_side, multiple)[None]).to(device)
        idx, _ = quantize(encoder(x).float(), dim, size, seed)
        counts += np.bincount(idx.flatten().cpu().numpy(), minlength=size)
    return counts, int(counts.sum())


def export(
    source: Path,
    model_path: Path,
    name: str,
    token_stats_images: int = 64,
    token_stats_side: int = 512,
    data: Path | None = None,
    half: bool = False,
    console: Any | None = None,
) -> dict[str, Any]:
    """Write a gqtok model file from a run directory or checkpoint; returns the stored card.

    The frequency table comes from GQ-quantizing centre crops (<= token_stats_side) of up to
    token_stats_images training photos, spread evenly over the sorted list; val quality is
    measured afresh on the run's eval set.
    """
    log = _Log(console)
    state = load_checkpoint(_checkpoint_path(source))
    cfg = TrainConfig.from_dict(state["config"])
    data_dir = Path(data) if data is not None else cfg.data
    net = cfg.network
    device = torch.device("cpu")
    encoder, decoder = Encoder(net), Decoder(net)
    encoder.load_state_dict(state["encoder"])
    decoder.load_state_dict(state["decoder"])
    encoder.eval()
    decoder.eval()

    paths = list_images(data_dir / "train")
    if not paths:
        raise FileNotFoundError(f"no training images under {data_dir / 'train'}")
    n = min(token_stats_images, len(paths))
    picks = [paths[int(i)] for i in np.linspace(0, len(paths) - 1, n).round()] if n else []
    photos = [load_photo(p, cfg.max_side) for p in dict.fromkeys(picks)]
    counts, tokens = token_counts(encoder, photos, cfg.dim, cfg.codebook_size, cfg.codebook_seed,
                                  net.downsample, token_stats_side, device)
    log(f"token statistics: {tokens} tokens from {len(photos)} photos, "
        f"{int((counts > 0).sum())} distinct codewords")
    val_photos = load_photos(data_dir / "val", cfg.max_side)
    val_set = eval_images(val_photos, cfg.eval_crop, net.downsample, cfg.eval_images)
    quality = evaluate(encoder, decoder, val_set, cfg.dim, cfg.codebook_size, cfg.codebook_seed,
                       device)
    quality.update({"val_images": len(val_set), "val_crop": cfg.eval_crop})
    card = {
        "name": name,
        "arch": "unet",
        "layout": "bchw",
        "network": net.to_dict(),
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
        "token_stats": {"photos": len(photos), "tokens": tokens, "max_side": token_stats_side},
    }
    stored = save_model(model_path, encoder, decoder, card, counts, half=half)
    log(f"wrote {model_path}: val PSNR {quality.get('val_psnr_q', float('nan')):.2f} dB "
        f"quantized, {quality.get('val_psnr', float('nan')):.2f} dB unquantized")
    return stored


# ----------------------------------------------------------------------------------------------
# Command line (convenience; the gqtok CLI has its own `gqtok train`)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


_NET_FIELDS = ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "z_channels", "stem")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m gqtok.train",
                                 description="Train a gqtok model or export a checkpoint.")
    sub = ap.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="train or resume (see TrainConfig for the meaning)")
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        if f.name == "network":
            continue
        value = getattr(defaults, f.name)
        flag = f"--{f.name.replace('_', '-')}"
        if isinstance(value, bool):
            tr.add_argument(flag, action=argparse.BooleanOptionalAction, default=value)
            continue
        kind = Path if isinstance(value, Path) else type(value)
        choices = {"perceptual": ["alex", "vgg", "none"], "device": ["auto", "cpu", "cuda"],
                   "lr_schedule": ["constant", "cosine"]}
        tr.add_argument(flag, type=kind, default=value, choices=choices.get(f.name),
                        help=f"default {value}")
    net = asdict(defaults.network)
    for key in _NET_FIELDS:
        value = net[key]
        kind = _ints if isinstance(value, tuple) else type(value)
        shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
        tr.add_argument(f"--{key.replace('_', '-')}", type=kind, default=value,
                        help=f"network: default {shown}")
    ex = sub.add_parser("export", help="write a .safetensors model from a run")
    ex.add_argument("source", type=Path, help="run directory or checkpoint file")
    ex.add_argument("model", type=Path, help="output .safetensors path")
    ex.add_argument("--name", required=True)
    ex.add_argument("--token-stats-images", type=int, default=64)
    ex.add_argument("--token-stats-side", type=int, default=512)
    ex.add_argument("--data", type=Path, default=None, help="override the run's data dir")
    ex.add_argument("--half", action="store_true", help="store weights as float16")
    return ap


def main(argv: list[str] | None = None) -> None:
    ap = _parser()
    args = ap.parse_args(argv)
    try:
        if args.command == "export":
            export(args.source, args.model, args.name, args.token_stats_images,
                   args.token_stats_side, args.data, args.half)
            return
        values = vars(args)
        network = replace(fast_cpu_network(), **{k: values[k] for k in _NET_FIELDS})
        cfg = TrainConfig(network=network, **{
            f.name: values[f.name] for f in fields(TrainConfig) if f.name != "network"
        })
        run(cfg)
    except (FileExistsError, FileNotFoundError, ValueError) as exc:
        ap.exit(2, f"error: {exc}\n")


if __name__ == "__main__":
    main()
