"""The whole-image engine: pixels -> network -> GQ tokens, and tokens -> network -> pixels.

Equal-size images share network batches under the memory budget; an image whose whole-image
pass would exceed the budget goes through gqtok.codec.windowed instead. No file format here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from gqtok.codec import budget as mem
from gqtok.codec import windowed
from gqtok.codec.tokens import Tokens
from gqtok.format.card import FIDELITY
from gqtok.format.container import MAX_SCALE
from gqtok.io.color import AFFINE_BYTES, FILTER_RADIUS, apply_color, fit_color
from gqtok.io.color import VALUES as COLOR_VALUES
from gqtok.io.grain import add_grain, grain_seed
from gqtok.io.images import DEFAULT_MAX_PIXELS, crop, from_tensor, pad_to_multiple, to_tensor
from gqtok.io.resample import resample, scaled_size
from gqtok.model import Model


def _prepare(model: Model, rgb: np.ndarray, pad_mode: str) -> torch.Tensor:
    x = to_tensor(rgb)
    padded, _ = pad_to_multiple(x, model.downsample, pad_mode)
    return padded


def scaled_rgb(rgb: np.ndarray, scale: float | None) -> np.ndarray:
    """``rgb`` resampled by ``scale`` (gqtok.io.resample), or itself for None or 1. Never
    larger than the default pixel limit: a file the default decoder refuses is not written,
    so a huge image is coded at the largest scale under the limit instead."""
    if scale is None or scale == 1:
        return rgb
    top = MAX_SCALE
    if not (isinstance(scale, (int, float)) and 1 / top <= scale <= top):
        raise ValueError(f"scale must be in {1 / top:g}..{top}, got {scale!r}")
    h, w = rgb.shape[:2]
    cw, ch = scaled_size(w, h, scale)
    limit = max(DEFAULT_MAX_PIXELS, w * h)  # an image already over it is not enlarged
    while cw * ch > limit and scale > 1:
        scale = max(1.0, scale * 0.999 * (limit / (cw * ch)) ** 0.5)
        cw, ch = scaled_size(w, h, scale)
    # rounding must not take a side past the format's factor (10 px at 1/4 rounds to 2)
    cw, ch = (min(max(c, -(-n // top)), top * n) for c, n in ((cw, w), (ch, h)))
    return rgb if (cw, ch) == (w, h) else resample(rgb, cw, ch)


def resampled_to(tok: Tokens, rgb: np.ndarray) -> Tokens:
    """``tok`` of an image coded at another size, marked to decode to ``rgb``'s size."""
    h, w = rgb.shape[:2]
    if (tok.width, tok.height) != (w, h):
        tok.resample_to = (w, h)
    return tok


def host_batch(model: Model, parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """One network batch of equal-size images, concatenated straight into pinned (page-locked)
    memory when the network runs on CUDA: Model.moments then copies it to the GPU
    asynchronously instead of through a staging copy."""
    if model.device.type != "cuda":
        return torch.cat(list(parts))
    first = parts[0]
    shape = (sum(p.shape[0] for p in parts), *first.shape[1:])
    out = torch.empty(shape, dtype=first.dtype, pin_memory=True)
    return torch.cat(list(parts), out=out)


def encode_pil(
    model: Model,
    image: Image.Image,
    pad_mode: str = "replicate",
    max_memory: int | str | None = None,
) -> Tokens:
    """Token grid of a PIL image (converted to RGB; alpha is not part of the tokens)."""
    rgb = np.asarray(image.convert("RGB"))
    return encode_arrays(model, [rgb], pad_mode, max_memory=max_memory)[0]


def encode_arrays(
    model: Model,
    images: Sequence[np.ndarray],
    pad_mode: str = "replicate",
    batch_size: int = 4,
    timings: dict[str, float] | None = None,
    max_memory: int | str | None = None,
    scale: float | None = None,
    color: bool | None = None,
) -> list[Tokens]:
    """Token grids of (H, W, 3) uint8 images; equal-size images share network batches.

    Batches are kept under the memory budget (default $GQTOK_MEMORY_BUDGET or 4 GB); an image
    whose whole-image pass would exceed it is encoded window by window (gqtok.codec.windowed).
    ``scale`` codes each image resampled by that factor (``scaled_rgb``); its tokens then
    decode to the image's own size (``Tokens.resample_to``). ``color``: None fits the colour
    correction (``with_color``) where an image is coded larger than it, True to every image
    (an extra decode each), False to none.
    """
    scaled = scale is not None and scale != 1
    if scaled or color:
        coded = [scaled_rgb(im, scale) for im in images] if scaled else images
        toks = encode_arrays(model, coded, pad_mode, batch_size, timings, max_memory, None,
                             False)  # fmt: skip
        t0 = time.perf_counter()
        out = [resampled_to(t, im) for t, im in zip(toks, images, strict=True)]
        if color is not False:
            out = [with_color(model, t, im, max_memory, always=bool(color))
                   for t, im in zip(out, images, strict=True)]  # fmt: skip
        if timings is not None and any(t.color for t in out):
            timings["color_fit"] = timings.get("color_fit", 0.0) + time.perf_counter() - t0
        return out
    out: list[Tokens | None] = [None] * len(images)
    groups: dict[tuple[int, int], list[int]] = {}
    budget = mem.resolve_budget(max_memory)
    t = timings if timings is not None else {}
    prepared: dict[int, torch.Tensor] = {}
    for i, im in enumerate(images):
        h, w = im.shape[:2]
        if mem.needs_tiling(model, h, w, "encode", budget):
            idx_large = windowed.encode_large(model, im, pad_mode, budget, timings=t)
            out[i] = Tokens(idx_large, w, h, pad_mode)
            continue
        x = prepared[i] = _prepare(model, im, pad_mode)
        groups.setdefault((x.shape[2], x.shape[3]), []).append(i)
    for (ph, pw), members in groups.items():
        step = min(batch_size, mem.fit_batch(model, ph, pw, "encode", budget))
        for b0 in range(0, len(members), step):
            idx = members[b0 : b0 + step]
            batch = host_batch(model, [prepared[i] for i in idx])
            t0 = time.perf_counter()
            moments = model.moments(batch).cpu()  # waits for the GPU: the timings stay honest
            t1 = time.perf_counter()
            indices, _ = model.quantize(moments)  # on the model's device
            t2 = time.perf_counter()
            t["network"] = t.get("network", 0.0) + t1 - t0
            t["search"] = t.get("search", 0.0) + t2 - t1
            for j, i in enumerate(idx):
                h, w = images[i].shape[:2]
                out[i] = Tokens(indices[j].cpu(), w, h, pad_mode)
    return [o for o in out if o is not None]


def tokens_by_model(
    model: Model,
    rgb: np.ndarray,
    pad_mode: str = "replicate",
    max_memory: int | str | None = None,
    scale: float | None = None,
) -> Callable[[Model], Tokens]:
    """A function from ``model`` at other quantizer settings (Model.requantized) to the
    image's tokens under them (coded at ``scale``, as in ``encode_arrays``). The network runs
    once, here, and only the GQ search per call (rate control tries several codebook sizes);
    an image over the memory budget is encoded window by window on each call instead."""
    if scale is not None and scale != 1:
        run = tokens_by_model(model, scaled_rgb(rgb, scale), pad_mode, max_memory)
        return lambda m: resampled_to(run(m), rgb)
    h, w = rgb.shape[:2]
    budget = mem.resolve_budget(max_memory)
    if mem.needs_tiling(model, h, w, "encode", budget):
        return lambda m: Tokens(windowed.encode_large(m, rgb, pad_mode, budget), w, h, pad_mode)
    moments = model.moments(host_batch(model, [_prepare(model, rgb, pad_mode)])).cpu()

    def tokens(m: Model) -> Tokens:
        indices, _ = m.quantize(moments)
        return Tokens(indices[0].cpu(), w, h, pad_mode)

    return tokens


def decode_tokens(model: Model, tokens: Tokens, max_memory: int | str | None = None) -> Image.Image:
    """RGB PIL image for a token grid."""
    return Image.fromarray(decode_to_array(model, tokens, max_memory))


def with_color(
    model: Model,
    tok: Tokens,
    rgb: np.ndarray,
    max_memory: int | str | None = None,
    always: bool = False,
) -> Tokens:
    """``tok`` of ``rgb`` coded larger than it (or any, ``always``), with the colour
    correction that brings its decoded pixels closest to ``rgb`` (gqtok.io.color: format
    version 6 with its restoration filter, 5 when coded larger without one); other tokens as
    they are. The fit decodes the tokens once, with the model's own decoder, as a file is
    decoded by default."""
    larger = tok.resample_to is not None and tok.width * tok.height > rgb.shape[0] * rgb.shape[1]
    if not (larger or always):
        return tok
    own = model if _fidelity(model) and not model.grain else model.with_decoder(FIDELITY, None, 0.0)
    # the correction must be worth its bytes: the payload's size, from the tokens' bits (the
    # context model's ~15 % off), is what they are weighed against; a version 6 file at the
    # image's own size also carries the extension and the radius byte
    payload = 0.85 * tok.indices.numel() * math.log2(model.quant.size) / 8
    affine = AFFINE_BYTES + (0 if larger else 11)
    tok.color = fit_color(rgb, _pixels(own, tok, max_memory), FILTER_RADIUS, payload, affine)
    return tok


def _fidelity(model: Model) -> bool:
    """True when ``model`` decodes with its own (fidelity) decoder, the one a colour
    correction is fitted to."""
    return model.decoder_name == FIDELITY and model.realism is None


def decode_to_array(
    model: Model, tokens: Tokens, max_memory: int | str | None = None
) -> np.ndarray:
    """(H, W, 3) uint8 pixels; window by window when a whole-image pass exceeds the budget.
    Tokens of an image coded at another scale are resampled to its size (gqtok.io.resample)
    and colour-corrected (gqtok.io.color) when they carry a correction, and the model's grain
    (``Model.with_decoder(grain=...)``) is added to the finished pixels. Another decoder of
    the same tokens (perceptual, a realism blend) takes the correction's affine map and not
    its filter: the filter sharpens what the fidelity decoder renders soft, and on the
    perceptual decoder's texture it raised ST-LPIPS (docs/format.md, version 6)."""
    color = tokens.color if _fidelity(model) else tokens.color[:COLOR_VALUES]
    rgb = apply_color(_pixels(model, tokens, max_memory), color)
    if model.grain:
        add_grain(rgb, model.grain, grain_seed(tokens.indices))
    return rgb


def _pixels(model: Model, tokens: Tokens, max_memory: int | str | None) -> np.ndarray:
    """The decoder network's pixels at the image's size: cropped, resampled when scaled."""
    _, gh, gw = tokens.indices.shape
    f = model.downsample
    budget = mem.resolve_budget(max_memory)
    if mem.needs_tiling(model, gh * f, gw * f, "decode", budget):
        rgb = windowed.decode_large(model, tokens.indices, tokens.height, tokens.width, budget)
    else:
        x = model.decode_indices(tokens.indices.unsqueeze(0))
        rgb = from_tensor(crop(x.cpu(), tokens.height, tokens.width))
    if tokens.size != (tokens.width, tokens.height):
        rgb = resample(rgb, *tokens.size)
    return rgb
