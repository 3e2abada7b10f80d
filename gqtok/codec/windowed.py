"""Encode and decode images of any size with bounded memory, window by window on the latent grid.

A whole-image pass of the convolutional network needs a few hundred bytes per pixel (about
30 GB for 8000x6000), so above a memory budget the image goes through in windows:

* GroupNorm statistics are measured once, on the image (or token grid) subsampled with the
  smallest stride that fits the budget (averaged over up to 2 x 2 subsampling phases), and
  shared by every window (gqtok.sharednorm). With
  shared statistics the windowed network is one translation-equivariant function, so windows
  agree where they overlap; per-window statistics would make each window's tone differ.
* Encoder: each core block of latent cells is encoded from a pixel window with ``ENC_CONTEXT``
  cells of real image context on every side, and only the core's tokens are kept, so every
  token is computed exactly once.
* Decoder: overlapping latent windows; in each overlap the outer ``DEC_MARGIN`` cells of a
  window (where zero padding is felt) get weight 0, then a linear ramp over ``DEC_RAMP`` cells
  hands over to the neighbour. Rows of pixels are finished and written to the uint8 output as
  soon as no later window touches them, so only one band of float pixels is ever held.

The window layout and the subsampling stride depend only on the grid size, the model and the
budget, so decoding a file with a given budget is deterministic. Tokens and the .gq format do
not depend on any of this; tiled encoding gives slightly different (equally good) tokens than a
whole-image pass because its GroupNorm statistics are estimated.
"""

from __future__ import annotations

import ctypes
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gqtok.codec.budget import (
    BASELINE_BYTES,
    IMAGE_BYTES_PER_PIXEL,
    PASS_BYTES,
    bytes_per_pixel,
    resolve_budget,
)
from gqtok.errors import InputError
from gqtok.io.images import pad_to_multiple, to_tensor
from gqtok.model import Model
from gqtok.nets.sharednorm import NormStats, measuring, sharing
from gqtok.quant.search import dequantize

ENC_CONTEXT = 8  # latent cells of context around an encoder core block
DEC_MARGIN, DEC_RAMP = 6, 4  # latent cells: ignored border, then blend ramp
DEC_OVERLAP = 2 * DEC_MARGIN + DEC_RAMP
MAX_SIDE = 160  # latent cells per window side: larger windows barely speed up a conv net
MIN_SIDE = 24

@dataclass(frozen=True)
class Plan:
    """Windows of window_h x window_w latent cells (context and overlap included); GroupNorm
    statistics from the grid subsampled by ``stride`` (1: exact whole-image statistics)."""

    window_h: int
    window_w: int
    stride: int


def plan_tiles(model: Model, grid_h: int, grid_w: int, kind: str, budget: int) -> Plan:
    """The largest windows and the finest statistics stride that fit the budget."""
    f = model.downsample
    bpp = bytes_per_pixel(model, kind)
    width_px = grid_w * f
    avail = budget - BASELINE_BYTES - PASS_BYTES - IMAGE_BYTES_PER_PIXEL * grid_h * grid_w * f * f
    band = 16 * f * width_px if kind == "decode" else 0  # float band rows + weighted window
    side = MAX_SIDE
    while side >= MIN_SIDE and bpp * (side * f) ** 2 + band * side > avail:
        side -= 4
    if side < MIN_SIDE:
        need = budget - avail + bpp * (MIN_SIDE * f) ** 2 + band * MIN_SIDE
        raise InputError(
            f"a memory budget of {budget / 1e6:.0f} MB is too small for a"
            f" {grid_w * f}x{grid_h * f} image with this model (needs about {need / 1e6:.0f} MB)"
        )
    wh = min(grid_h, side)
    ww = min(grid_w, max(side, (side * side) // wh), 4 * MAX_SIDE)
    stride = 2
    while bpp * math.ceil(grid_h / stride) * math.ceil(grid_w / stride) * f * f > avail:
        stride += 1
    return Plan(wh, ww, stride)


def window_starts(n: int, size: int, overlap: int) -> list[int]:
    """Window origins along an axis of n cells, evenly spread, neighbours overlapping >= overlap."""
    if n <= size:
        return [0]
    k = -(-(n - size) // (size - overlap)) + 1
    return [(i * (n - size) + (k - 1) // 2) // (k - 1) for i in range(k)]


def ramp_weights(start: int, stop: int, n: int, margin: int, ramp: int) -> np.ndarray:
    """Blend weights of the window [start, stop) of an axis of n pixels: 0 over ``margin``
    pixels at inner edges, then a linear ramp to 1 over ``ramp`` pixels; 1 at image borders."""
    p = np.arange(start, stop, dtype=np.float64) + 0.5
    w = np.ones(stop - start)
    if start > 0:
        w = np.minimum(w, np.clip((p - start - margin) / ramp, 0.0, 1.0))
    if stop < n:
        w = np.minimum(w, np.clip((stop - margin - p) / ramp, 0.0, 1.0))
    return w


def _pad_index(n: int, f: int, mode: str) -> np.ndarray:
    """Source pixel of each padded position, exactly as pad_to_multiple extends an image."""
    idx = torch.arange(n, dtype=torch.float32).view(1, 1, 1, n)
    return pad_to_multiple(idx, f, mode)[0][0, 0, 0].long().numpy()


def _release_memory() -> None:
    """Hand freed heap memory back to the OS (glibc keeps it otherwise, and what it keeps
    from one window adds to the next window's peak); a no-op where there is no glibc."""
    global _TRIM
    if _TRIM is None:
        try:
            _TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _TRIM = False
    if _TRIM:
        _TRIM(0)


_TRIM: Any = None


def _add_time(timings: dict[str, float] | None, key: str, t0: float) -> float:
    now = time.perf_counter()
    if timings is not None:
        timings[key] = timings.get(key, 0.0) + now - t0
    return now


def phases(stride: int) -> list[int]:
    """Subsampling offsets per axis whose statistics are averaged: 0 and stride // 2.

    One decimated copy aliases: its statistics depend on which pixels (or tokens) happen to be
    kept, and the decoder amplifies that noise (v3 default, 768x512 sample: 45.7 dB against
    the whole-image decode from one copy, 49.9 dB from the mean of 2 x 2 phases). At most
    four copies keep the cost at 4 / stride^2 of a whole-image pass and memory at one copy.
    """
    return [0] if stride == 1 else sorted({0, stride // 2})


def pooled(parts: list[NormStats]) -> NormStats:
    """Statistics of the union of equally sized samples: mean of means, pooled variance."""
    out = NormStats()
    for key in parts[0].layers:
        means = torch.stack([p.layers[key][0] for p in parts])
        second = torch.stack([p.layers[key][1] + p.layers[key][0] ** 2 for p in parts])
        mean = means.mean(0)
        out.layers[key] = (mean, (second.mean(0) - mean**2).clamp_min(0.0))
    return out


@torch.inference_mode()
def encoder_stats(model: Model, rgb: np.ndarray, stride: int, pad_mode: str) -> NormStats:
    """GroupNorm statistics of the encoder on the image subsampled by ``stride`` pixels."""

    def one(dy: int, dx: int) -> NormStats:
        small = np.ascontiguousarray(rgb[dy::stride, dx::stride])
        x, _ = pad_to_multiple(to_tensor(small), model.downsample, pad_mode)
        net, stats = measuring(model.encoder)
        with model.autocast():
            net(x.to(model.device))
        return stats

    return _over_phases(stride, one)


@torch.inference_mode()
def decoder_stats(model: Model, indices: torch.Tensor, stride: int) -> NormStats:
    """GroupNorm statistics of the decoder on the token grid subsampled by ``stride`` cells."""
    q = model.quant

    def one(dy: int, dx: int) -> NormStats:
        sub = indices[None, :, dy::stride, dx::stride]
        net, stats = measuring(model.decoder)
        with model.autocast():
            net(dequantize(sub, q.dim, q.size, q.seed).to(model.device, torch.float32))
        return stats

    return _over_phases(stride, one)


def _over_phases(stride: int, measure: Callable[[int, int], NormStats]) -> NormStats:
    """measure(dy, dx) for every pair of phases, one copy in memory at a time, pooled."""
    parts = []
    for dy in phases(stride):
        for dx in phases(stride):
            parts.append(measure(dy, dx))
            _release_memory()
    return pooled(parts)


@torch.inference_mode()
def encode_large(
    model: Model,
    rgb: np.ndarray,
    pad_mode: str = "replicate",
    max_memory: int | str | None = None,
    *,
    plan: Plan | None = None,
    stats: NormStats | None = None,
    timings: dict[str, float] | None = None,
) -> torch.Tensor:
    """Token grid (NG, h, w) int64 of an (H, W, 3) uint8 image, window by window."""
    f = model.downsample
    height, width = rgb.shape[:2]
    h, w = -(-height // f), -(-width // f)
    plan = plan or plan_tiles(model, h, w, "encode", resolve_budget(max_memory))
    t0 = time.perf_counter()
    if stats is None:
        stats = encoder_stats(model, rgb, plan.stride, pad_mode)
    net = sharing(model.encoder, stats)
    t0 = _add_time(timings, "network", t0)
    rows, cols = _pad_index(height, f, pad_mode), _pad_index(width, f, pad_mode)
    core_h = max(1, plan.window_h - 2 * ENC_CONTEXT)
    core_w = max(1, plan.window_w - 2 * ENC_CONTEXT)
    out = torch.empty(model.groups, h, w, dtype=torch.int64)
    for y0 in range(0, h, core_h):
        y1 = min(h, y0 + core_h)
        a, b = max(0, y0 - ENC_CONTEXT), min(h, y1 + ENC_CONTEXT)
        band = np.take(rgb, rows[a * f : b * f], axis=0)
        for x0 in range(0, w, core_w):
            x1 = min(w, x0 + core_w)
            c, d = max(0, x0 - ENC_CONTEXT), min(w, x1 + ENC_CONTEXT)
            window = np.take(band, cols[c * f : d * f], axis=1)
            with model.autocast():
                moments = net(to_tensor(window).to(model.device)).float()
            core = moments[:, :, y0 - a : y1 - a, x0 - c : x1 - c].cpu()
            t0 = _add_time(timings, "network", t0)
            del moments
            _release_memory()
            out[:, y0:y1, x0:x1] = model.quantize(core)[0][0]
            _release_memory()
            t0 = _add_time(timings, "search", t0)
    return out


@torch.inference_mode()
def decode_large(
    model: Model,
    indices: torch.Tensor,
    height: int,
    width: int,
    max_memory: int | str | None = None,
    *,
    plan: Plan | None = None,
    stats: NormStats | None = None,
    timings: dict[str, float] | None = None,
) -> np.ndarray:
    """(height, width, 3) uint8 image for a token grid (NG, h, w), window by window."""
    f = model.downsample
    _, h, w = indices.shape
    plan = plan or plan_tiles(model, h, w, "decode", resolve_budget(max_memory))
    t0 = time.perf_counter()
    if stats is None:
        stats = decoder_stats(model, indices, plan.stride)
    net = sharing(model.decoder, stats)
    t0 = _add_time(timings, "network", t0)
    q = model.quant
    ys = window_starts(h, plan.window_h, DEC_OVERLAP)
    xs = window_starts(w, plan.window_w, DEC_OVERLAP)
    hp, wp, m, r = h * f, w * f, DEC_MARGIN * f, DEC_RAMP * f
    wy = [ramp_weights(y * f, min(h, y + plan.window_h) * f, hp, m, r) for y in ys]
    wx = [ramp_weights(x * f, min(w, x + plan.window_w) * f, wp, m, r) for x in xs]
    norm_y, norm_x = np.zeros(hp), np.zeros(wp)
    for y, wt in zip(ys, wy, strict=True):
        norm_y[y * f : y * f + len(wt)] += wt
    for x, wt in zip(xs, wx, strict=True):
        norm_x[x * f : x * f + len(wt)] += wt
    inv_x = torch.from_numpy(1.0 / norm_x).float()
    out = np.empty((height, width, 3), dtype=np.uint8)
    band_h = min(h, plan.window_h) * f
    band = torch.zeros(3, band_h, wp)
    for i, y in enumerate(ys):
        y1 = min(h, y + plan.window_h)
        for x, wt_x in zip(xs, wx, strict=True):
            x1 = min(w, x + plan.window_w)
            z = dequantize(indices[None, :, y:y1, x:x1], q.dim, q.size, q.seed)
            with model.autocast():
                img = net(z.to(model.device, torch.float32)).float()
            if model.clamp is not None:
                img = img.clamp(*model.clamp)
            weight = torch.from_numpy(np.outer(wy[i], wt_x)).float()
            band[:, : (y1 - y) * f, x * f : x1 * f] += img[0].cpu() * weight
            del img, z, weight
            _release_memory()
            t0 = _add_time(timings, "network", t0)
        done = ys[i + 1] * f if i + 1 < len(ys) else hp
        rows = done - y * f
        inv_y = torch.from_numpy(1.0 / norm_y[y * f : done]).float()
        pix = band[:, :rows] * inv_y.view(1, -1, 1) * inv_x.view(1, 1, -1)
        pix = ((pix + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)
        lo, hi = min(height, y * f), min(height, done)
        out[lo:hi] = pix[:, : hi - lo, :width].permute(1, 2, 0).numpy()
        band[:, : band_h - rows] = band[:, rows:].clone()
        band[:, band_h - rows :] = 0
        t0 = _add_time(timings, "blend", t0)
    return out
