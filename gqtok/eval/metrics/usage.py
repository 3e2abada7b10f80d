"""Codebook usage and empirical token entropy over a set of images.

Both say how well the rate is spent: a tokenizer that uses few of its K entries, or uses them
very unevenly, wastes bits that the entropy coder can only partly win back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class UsageSummary:
    codebook_size: int
    tokens: int
    used: int
    usage_pct: float  # 100 * used / K
    entropy_bits: float  # -sum p log2 p of the pooled token histogram
    max_entropy_bits: float  # log2 K

    def to_dict(self) -> dict[str, float | int]:
        return dict(self.__dict__)


class TokenCounter:
    """Pooled histogram of token indices across images (one shared codebook for all positions)."""

    def __init__(self, codebook_size: int) -> None:
        self.size = codebook_size
        self.counts = np.zeros(codebook_size, dtype=np.int64)

    def add(self, indices: np.ndarray) -> None:
        flat = np.asarray(indices, dtype=np.int64).reshape(-1)
        self.counts += np.bincount(flat, minlength=self.size)[: self.size]

    def summary(self) -> UsageSummary:
        total = int(self.counts.sum())
        used = int((self.counts > 0).sum())
        if total:
            p = self.counts[self.counts > 0] / total
            entropy = float(-(p * np.log2(p)).sum())
        else:
            entropy = 0.0
        return UsageSummary(
            self.size, total, used, 100.0 * used / self.size, entropy, math.log2(self.size)
        )
