"""Entropy models for GQ token indices and the ANS coder that uses them.

A model is a fixed categorical distribution over the K codewords that travels with the network
weights, so decoding needs nothing but the file and the named model. Two kinds exist:
``uniform`` (exactly log2 K bits per token) and ``frequency`` (token counts measured on training
data, plus additive smoothing so that every codeword stays encodable). Probabilities are derived
from integer counts in float64, which makes the quantised ANS table identical on every machine.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

KIND_IDS = {"uniform": 0, "frequency": 1}


@dataclass(frozen=True)
class EntropyModel:
    """A stationary categorical model over ``size`` symbols."""

    kind: str
    size: int
    counts: np.ndarray | None = field(default=None, repr=False, compare=False)
    smoothing: float = 0.5

    def __post_init__(self) -> None:
        if self.kind not in KIND_IDS:
            raise ValueError(f"unknown entropy model kind {self.kind!r}")
        if self.kind == "frequency":
            if self.counts is None or self.counts.shape != (self.size,):
                raise ValueError(f"frequency model needs a counts table of length {self.size}")
            if (self.counts < 0).any():
                raise ValueError("frequency counts must be non-negative")
            if not self.smoothing > 0:
                raise ValueError("frequency smoothing must be positive (no zero probabilities)")

    @property
    def kind_id(self) -> int:
        return KIND_IDS[self.kind]

    @cached_property
    def probabilities(self) -> np.ndarray:
        if self.kind == "uniform":
            return np.full(self.size, 1.0 / self.size)
        assert self.counts is not None
        p = self.counts.astype(np.float64) + float(self.smoothing)
        return p / p.sum()

    @cached_property
    def fingerprint(self) -> bytes:
        """8 bytes identifying the exact table; stored in .gq headers and checked at decode."""
        h = hashlib.sha256()
        h.update(f"{self.kind}:{self.size}:{self.smoothing!r}".encode())
        if self.kind == "frequency":
            assert self.counts is not None
            h.update(self.counts.astype("<i8").tobytes())
        return h.digest()[:8]

    @cached_property
    def _model(self):  # noqa: ANN202 - constriction type
        import constriction

        return constriction.stream.model.Categorical(self.probabilities, perfect=False)

    def ideal_bits(self, symbols: np.ndarray) -> float:
        """Cross-entropy of the symbols under this model, in bits (what ANS approaches)."""
        return float(-np.log2(self.probabilities[symbols.astype(np.int64)]).sum())

    def encode(self, symbols: np.ndarray) -> bytes:
        import constriction

        sym = np.ascontiguousarray(symbols, dtype=np.int32).reshape(-1)
        if sym.size and (sym.min() < 0 or sym.max() >= self.size):
            raise ValueError(f"symbols must lie in [0, {self.size})")
        coder = constriction.stream.stack.AnsCoder()
        if sym.size:
            coder.encode_reverse(sym, self._model)
        return coder.get_compressed().astype("<u4").tobytes()

    def decode(self, payload: bytes, count: int) -> np.ndarray:
        """Inverse of encode; raises ValueError when the payload cannot be a valid stream."""
        import constriction

        if len(payload) % 4:
            raise ValueError("token payload length is not a multiple of 4")
        words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
        if count == 0:
            return np.zeros(0, dtype=np.int64)
        try:
            coder = constriction.stream.stack.AnsCoder(words)
            out = coder.decode(self._model, count)
        except Exception as exc:  # constriction raises plain exceptions on bad streams
            raise ValueError(f"token stream is corrupt ({exc})") from exc
        if not coder.is_empty():
            raise ValueError("token stream has trailing data")
        return np.asarray(out, dtype=np.int64)


def uniform(size: int) -> EntropyModel:
    return EntropyModel("uniform", size)


def from_counts(counts: np.ndarray, smoothing: float = 0.5) -> EntropyModel:
    c = np.asarray(counts, dtype=np.int64)
    return EntropyModel("frequency", int(c.shape[0]), c, float(smoothing))
