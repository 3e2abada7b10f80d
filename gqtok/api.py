"""One-call tokenize / detokenize for PIL images, numpy arrays, torch tensors and token grids.

The codec (gqtok.codec) works on uint8 RGB arrays and ``Tokens``; training code holds PIL
images, float tensors in [0, 1] and bare uint16 grids from an export. These wrappers convert
at the edge and nothing else: the tokens are exactly the codec's, large images go through the
same memory-bounded windows (``max_memory``), and a grid decodes the same whether it came
from a ``.gq`` file, an export shard or a generative model.

The decode functions take ``decoder`` and ``realism`` (gqtok.model.Model.with_decoder): the
same tokens through another of the model's decoders. Left out, the model's own choice holds:
"fidelity" for a model from ``load_model``, whatever ``with_decoder`` chose otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from gqtok.codec import Tokens, decode_to_array, encode_arrays
from gqtok.model import Model, select_decoder

ImageLike = Image.Image | np.ndarray | torch.Tensor
GridLike = Tokens | np.ndarray | torch.Tensor


def to_rgb_array(image: ImageLike, value_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """(H, W, 3) uint8 RGB from a PIL image (any mode), an (H, W[, 3]) uint8 array, or a
    tensor (3, H, W) / (1, 3, H, W): uint8 as is, float mapped from ``value_range``."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.ndim == 4 and t.shape[0] == 1:
            t = t[0]
        if t.ndim != 3 or t.shape[0] not in (1, 3):
            raise ValueError(f"expected a (3, H, W) or (1, 3, H, W) tensor, got {tuple(t.shape)}")
        if t.is_floating_point():
            lo, hi = value_range
            t = ((t.float() - lo) * (255.0 / (hi - lo))).round().clamp(0, 255)
        elif t.dtype != torch.uint8:
            raise ValueError(f"integer tensors must be uint8, got {t.dtype}")
        a = t.to(torch.uint8).permute(1, 2, 0).numpy()
        return np.ascontiguousarray(np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a)
    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise ValueError(f"arrays must be uint8 (H, W) or (H, W, 3), got {a.dtype}")
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"arrays must be uint8 (H, W) or (H, W, 3), got {a.shape}")
    return np.ascontiguousarray(a)


def encode(
    model: Model,
    image: ImageLike,
    *,
    value_range: tuple[float, float] = (0.0, 1.0),
    pad_mode: str = "replicate",
    max_memory: int | str | None = None,
    quality: float | None = None,
) -> Tokens:
    """Token grid of one image (see to_rgb_array for what counts as an image); ``quality``
    (0..100) codes it at that quality's codebook size and scale (gqtok.codec.rate: the
    tokens then decode to the image's size through a resampling step)."""
    return encode_batch(model, [image], batch_size=1, value_range=value_range,
                        pad_mode=pad_mode, max_memory=max_memory, quality=quality)[0]  # fmt: skip


def _at_quality(model: Model, quality: float | None) -> tuple[Model, float | None]:
    from gqtok.codec.rate import at_size, quality_setting

    if quality is None:
        return model, None
    setting = quality_setting(model, quality)
    return at_size(model, setting.size), setting.scale


def encode_batch(
    model: Model,
    images: Sequence[ImageLike],
    *,
    batch_size: int = 8,
    value_range: tuple[float, float] = (0.0, 1.0),
    pad_mode: str = "replicate",
    max_memory: int | str | None = None,
    quality: float | None = None,
) -> list[Tokens]:
    """Token grids of many images; images of equal size share network batches."""
    rgbs = [to_rgb_array(im, value_range) for im in images]
    net, scale = _at_quality(model, quality)
    return encode_arrays(net, rgbs, pad_mode, batch_size, max_memory=max_memory, scale=scale)


def as_tokens(grid: GridLike, downsample: int, size: tuple[int, int] | None = None) -> Tokens:
    """Tokens for a grid (NG, h, w) or (h, w) of any integer dtype (e.g. an export's uint16);
    ``size`` = (width, height) in pixels, default the whole grid (h * f, w * f)."""
    if isinstance(grid, Tokens):
        if size is None or size == (grid.width, grid.height):
            return grid
        grid = grid.indices
    t = torch.from_numpy(np.asarray(grid).astype(np.int64)) if not torch.is_tensor(grid) else grid
    t = t.long().cpu()
    if t.ndim == 2:
        t = t.unsqueeze(0)
    if t.ndim != 3:
        raise ValueError(f"a token grid is (NG, h, w) or (h, w), got {tuple(t.shape)}")
    w, h = size or (t.shape[2] * downsample, t.shape[1] * downsample)
    if -(-w // downsample) != t.shape[2] or -(-h // downsample) != t.shape[1]:
        raise ValueError(f"a {t.shape[1]}x{t.shape[2]} grid cannot decode to {w}x{h} pixels")
    return Tokens(t, w, h)


def decode_array(
    model: Model,
    tokens: GridLike,
    *,
    size: tuple[int, int] | None = None,
    max_memory: int | str | None = None,
    decoder: str | None = None,
    realism: float | None = None,
    grain: float | None = None,
) -> np.ndarray:
    """(H, W, 3) uint8 RGB for a token grid. ``decoder`` / ``realism`` pick the decoder,
    ``grain`` (8-bit levels, e.g. 2) adds synthetic film grain (gqtok.io.grain)."""
    net = select_decoder(model, decoder, realism, grain)
    return decode_to_array(net, as_tokens(tokens, net.downsample, size), max_memory)


def decode(
    model: Model,
    tokens: GridLike,
    *,
    size: tuple[int, int] | None = None,
    max_memory: int | str | None = None,
    decoder: str | None = None,
    realism: float | None = None,
    grain: float | None = None,
) -> Image.Image:
    """RGB PIL image for a token grid."""
    a = decode_array(model, tokens, size=size, max_memory=max_memory, decoder=decoder,
                     realism=realism, grain=grain)
    return Image.fromarray(a)


def decode_tensor(
    model: Model,
    tokens: GridLike,
    *,
    size: tuple[int, int] | None = None,
    value_range: tuple[float, float] = (0.0, 1.0),
    max_memory: int | str | None = None,
    decoder: str | None = None,
    realism: float | None = None,
    grain: float | None = None,
) -> torch.Tensor:
    """(3, H, W) float32 tensor in ``value_range`` for a token grid (8-bit exact pixels)."""
    a = decode_array(model, tokens, size=size, max_memory=max_memory, decoder=decoder,
                     realism=realism, grain=grain)
    lo, hi = value_range
    t = torch.from_numpy(a).permute(2, 0, 1).float() / 255.0
    return t * (hi - lo) + lo
