"""A token grid with what is needed to crop its decoded image back to the original size."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Tokens:
    """The token grid of one image plus what is needed to crop the decoded image back."""

    indices: torch.Tensor  # (NG, h, w) int64
    width: int
    height: int
    pad_mode: str = "replicate"
