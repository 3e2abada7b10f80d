"""The settings that fix a GQ codebook and score, and how a user overrides them at load time.

Plain dataclasses without torch, so the model registry, model cards and the CLI's option
parsing can name settings without loading the networks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class QuantizerConfig:
    """GQ settings; together they fix the codebook and the score."""

    dim: int = 16
    size: int = 65536
    seed: int = 42
    beta: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"dim": self.dim, "size": self.size, "seed": self.seed, "beta": self.beta}


@dataclass(frozen=True)
class ModelOptions:
    """How to load a model: quantizer overrides (None keeps the model's own value), the heads
    of a ViT checkpoint (invisible in its weights) and whether pickles may run code."""

    dim: int | None = None
    size: int | None = None
    seed: int | None = None
    beta: float | None = None
    heads: int | None = None
    trust_pickle: bool = False

    def overrides(self) -> dict[str, int | float]:
        """The quantizer fields the user set, typed as a card stores them."""
        out: dict[str, int | float] = {}
        for key in ("dim", "size", "seed", "beta"):
            value = getattr(self, key)
            if value is not None:
                out[key] = float(value) if key == "beta" else int(value)
        return out

    def apply(self, base: QuantizerConfig) -> QuantizerConfig:
        """``base`` with the user's overrides."""
        return QuantizerConfig(**{**base.to_dict(), **self.overrides()})
