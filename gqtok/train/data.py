"""Training photos in memory and the random crops drawn from them.

Photos are decoded once (a few hundred fit in memory); every crop and flip comes from one
numpy Generator whose state is checkpointed, so a resumed run draws exactly the crops the
uninterrupted one would have. Prefetcher moves the drawing to a thread for accelerators.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from gqtok.io.files import IMAGE_EXTS
from gqtok.io.images import to_tensor
from gqtok.train.config import TrainConfig


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


def center_crop(photo: np.ndarray, size: int, multiple: int) -> np.ndarray:
    """Centre crop of at most size x size, each side a multiple of the network's downsampling.

    Not eval.evaluate.preprocess: that one is the paper's fixed-size protocol (rounded offsets,
    no multiple); this keeps whole latent positions and the offsets earlier runs used.
    """
    h, w = photo.shape[:2]
    ch = min(size, h) // multiple * multiple
    cw = min(size, w) // multiple * multiple
    if ch == 0 or cw == 0:
        raise ValueError(f"photo {w}x{h} is smaller than the downsampling factor {multiple}")
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    return photo[y0 : y0 + ch, x0 : x0 + cw]


def crop_tensor(photo: np.ndarray, size: int, multiple: int) -> torch.Tensor:
    """center_crop as the network's (1, 3, h, w) input, in contiguous (NCHW) memory: the
    layout conv kernels were timed and checkpointed with."""
    return to_tensor(center_crop(photo, size, multiple)).contiguous()


def eval_images(
    photos: list[np.ndarray], size: int, multiple: int, count: int
) -> list[torch.Tensor]:
    """Fixed held-out set: centre crops of the first count photos (sorted by path)."""
    return [crop_tensor(p, size, multiple) for p in photos[:count]]


def batch_to_device(batch: np.ndarray, device: torch.device) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 in [-1, 1] on the device, the values of
    io.images.to_tensor; uint8 crosses the bus, 4x less than float32."""
    x = torch.from_numpy(np.ascontiguousarray(batch)).to(device, non_blocking=True)
    return x.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0).contiguous()


@dataclass
class TrainingData:
    """The decoded photos of a run and the fixed eval crops; summary goes into checkpoints."""

    train: list[np.ndarray]
    val: list[np.ndarray]
    val_set: list[torch.Tensor]
    summary: dict[str, Any]


def load_training_data(cfg: TrainConfig) -> TrainingData:
    root = Path(cfg.data)
    train = load_photos(root / "train", cfg.max_side)
    val = load_photos(root / "val", cfg.max_side)
    if not train:
        raise FileNotFoundError(f"no training images under {root / 'train'}")
    val_set = eval_images(val, cfg.eval_crop, cfg.network.downsample, cfg.eval_images)
    summary = {"dir": str(cfg.data), "train_photos": len(train), "val_photos": len(val),
               "max_side": cfg.max_side}
    return TrainingData(train, val, val_set, summary)


# ----------------------------------------------------------------------------------------------
# Samplers


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
        self.share = (0, 1)  # (rank, ranks): which slice of the global batch batch() cuts

    def _draw(self, index: int) -> tuple[Any, ...]:
        """The random choices of one crop of photo ``index`` (scale, corner, flip)."""
        h, w = self.photos[index].shape[:2]
        c = self.crop
        lo = max(self.scale_range[0], c / min(h, w))  # smallest scale where the crop fits
        hi = max(self.scale_range[1], lo)
        s = math.exp(self.rng.uniform(math.log(lo), math.log(hi))) if hi > lo else lo
        side = min(c / s, float(min(h, w)))  # source pixels the crop covers
        x0 = int(self.rng.integers(0, int(w - side) + 1))
        y0 = int(self.rng.integers(0, int(h - side) + 1))
        flip = self.flip and bool(self.rng.random() < 0.5)
        return side, x0, y0, flip

    def _cut(self, index: int, choice: tuple[Any, ...]) -> np.ndarray:
        """The pixels of the crop _draw chose; draws nothing."""
        photo = self.photos[index]
        side, x0, y0, flip = choice
        h, w = photo.shape[:2]
        c = self.crop
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

    def batch(self, n: int) -> np.ndarray:
        """(n, crop, crop, 3) uint8: this rank's n crops of the global batch.

        Every rank draws the choices of all ``n * ranks`` crops from the same Generator and
        cuts only its own slice of them, so the ranks hold one sampler state (a checkpoint
        stores it once) and together see exactly the crops one process drawing the global
        batch would see.
        """
        rank, ranks = self.share
        idx = self.rng.choice(len(self.photos), size=n * ranks, p=self.p)
        choices = [(int(i), self._draw(int(i))) for i in idx]
        return np.stack([self._cut(i, c) for i, c in choices[rank * n : (rank + 1) * n]])

    def state_dict(self) -> dict[str, Any]:
        """The Generator's state: a dict of str and int, so torch.load(weights_only=True)
        reads it without allowing any numpy class."""
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

    def _draw(self, index: int) -> tuple[Any, ...]:
        levels = self.levels[index]
        k = int(self.rng.integers(0, len(levels)))
        h, w = levels[k].shape[:2]
        c = self.crop
        y0 = int(self.rng.integers(0, h - c + 1))
        x0 = int(self.rng.integers(0, w - c + 1))
        return k, y0, x0, bool(self.flip and self.rng.random() < 0.5)

    def _cut(self, index: int, choice: tuple[Any, ...]) -> np.ndarray:
        k, y0, x0, flip = choice
        w, c = self.levels[index][k].shape[1], self.crop
        if flip:  # = levels[k][y0:y0+c, x0:x0+c][:, ::-1]
            return self.mirrored[index][k][y0 : y0 + c, w - x0 - c : w - x0]
        return self.levels[index][k][y0 : y0 + c, x0 : x0 + c]


def _resized(photo: np.ndarray, scale: float) -> np.ndarray:
    h, w = photo.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size == (w, h):
        return photo
    im = Image.fromarray(photo).resize(size, Image.Resampling.LANCZOS)
    return np.asarray(im, dtype=np.uint8).copy()


def make_sampler(
    cfg: TrainConfig, photos: list[np.ndarray], rank: int = 0, ranks: int = 1
) -> CropSampler:
    """PyramidSampler with --scale-levels, else a CropSampler that resizes every crop; it cuts
    slice ``rank`` of ``ranks`` of each global batch."""
    scale_range = (cfg.scale_min, cfg.scale_max)
    sampler: CropSampler
    if cfg.scale_levels > 0:
        sampler = PyramidSampler(photos, cfg.crop, scale_range, cfg.scale_levels, cfg.flip,
                                 cfg.seed)
    else:
        sampler = CropSampler(photos, cfg.crop, scale_range, cfg.flip, cfg.seed)
    sampler.share = (rank, ranks)
    return sampler


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


@contextmanager
def batches(sampler: CropSampler, batch: int, prefetch: bool) -> Iterator[CropSampler | Prefetcher]:
    """The sampler itself, or a Prefetcher around it that is closed on the way out.

    Checkpoints must take the state from what this yields (a prefetcher draws ahead).
    """
    if not prefetch:
        yield sampler
        return
    feed = Prefetcher(sampler, batch)
    try:
        yield feed
    finally:
        feed.close()
