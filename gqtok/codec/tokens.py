"""A token grid with what is needed to bring its decoded image back to the original size."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Tokens:
    """The token grid of one image plus what is needed to crop the decoded image back, and,
    for an image coded at another scale, the size it is then resampled to (and, coded larger,
    the colour correction the encoder fitted: format version 5)."""

    indices: torch.Tensor  # (NG, h, w) int64
    width: int  # the decoded grid is cropped to width x height
    height: int
    pad_mode: str = "replicate"
    resample_to: tuple[int, int] | None = None  # (width, height) of the image, when scaled
    color: tuple[int, ...] = ()  # the colour correction after it (gqtok.io.color), or ()

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the image these tokens decode to."""
        return self.resample_to or (self.width, self.height)
