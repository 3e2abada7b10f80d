"""The memory budget of a codec pass: how many bytes a whole-image pass needs, how many images
fit one network batch, and when an image must go through in windows (gqtok.codec.windowed).

Estimates only read the model's network config, so this module needs no torch.
"""

from __future__ import annotations

import math
import os
import re
from typing import TYPE_CHECKING

from gqtok.errors import InputError

if TYPE_CHECKING:
    from gqtok.model import Model

DEFAULT_MAX_MEMORY = 4_000_000_000
MEMORY_ENV = "GQTOK_MEMORY_BUDGET"
# Interpreter, torch, model weights and GQ search tables: 250-290 MB measured on CPU.
BASELINE_BYTES = 300_000_000
PASS_BYTES = 96_000_000  # per pass whatever its size: oneDNN primitives and scratch, GQ search
IMAGE_BYTES_PER_PIXEL = 12  # uint8 input and output arrays, PIL copies while reading/writing

_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_UNITS |= {"ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_memory(text: str | int) -> int:
    """Bytes for "4G", "600M", "600MB", "1.5GiB" or a plain number (k/M/G are powers of 10)."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]i?)?b?\s*", text.lower())
    if not m:
        raise ValueError(f"not a memory size: {text!r} (e.g. 4G, 600M, 1.5GiB)")
    return int(float(m.group(1)) * _UNITS[m.group(2) or ""])


def resolve_budget(max_memory: int | str | None = None) -> int:
    """The budget in bytes: the argument, else $GQTOK_MEMORY_BUDGET, else 4 GB."""
    if max_memory is not None:
        return parse_memory(max_memory)
    env = os.environ.get(MEMORY_ENV)
    try:
        return parse_memory(env) if env else DEFAULT_MAX_MEMORY
    except ValueError as e:
        raise InputError(f"${MEMORY_ENV}: {e}") from None


def supports(model: Model) -> bool:
    """Windowing is exact only for convolutional nets (the ViT tiles itself)."""
    cfg = model.encoder.cfg
    return hasattr(cfg, "ch_mult") and hasattr(cfg, "stem")


def bytes_per_pixel(model: Model, kind: str) -> float:
    """Peak network memory per image pixel: live float32 maps at the finest level. Measured
    for the default model (64 B/px per map) with 1-2 threads: encode 300-480 B/px, decode
    350-670 B/px (small windows cost more per pixel); this errs on the high side."""
    cfg = model.encoder.cfg
    per_px = 4 * cfg.ch * cfg.ch_mult[0] / cfg.stem**2
    return per_px * (10 if kind == "decode" else 8) + 24


def whole_image_bytes(model: Model, height: int, width: int, kind: str, batch: int = 1) -> int:
    """Estimated peak RSS of a whole-image pass over ``batch`` images of this size."""
    f = model.downsample
    px = math.ceil(height / f) * f * math.ceil(width / f) * f
    per_px = bytes_per_pixel(model, kind) + 12 + IMAGE_BYTES_PER_PIXEL  # + float input/output
    return int(BASELINE_BYTES + PASS_BYTES + batch * px * per_px)


def fit_batch(model: Model, height: int, width: int, kind: str, budget: int) -> int:
    """How many images of this size fit one network batch under the budget (at least 1;
    unlimited for models that bound their own memory by tiles, the ViT)."""
    if not supports(model):
        return 1024
    n = 1
    while n < 1024 and whole_image_bytes(model, height, width, kind, n + 1) <= budget:
        n += 1
    return n


def needs_tiling(model: Model, height: int, width: int, kind: str, budget: int) -> bool:
    return supports(model) and whole_image_bytes(model, height, width, kind) > budget
