"""Entropy models for GQ token indices and the ANS coder that uses them.

A model is a fixed categorical distribution over the K codewords that travels with the network
weights, so decoding needs nothing but the file and the named model. Two kinds exist:
``uniform`` (exactly log2 K bits per token) and ``frequency`` (token counts measured on training
data, plus additive smoothing so that every codeword stays encodable). Probabilities are derived
from integer counts in float64, which makes the quantised ANS table identical on every machine.

Decoding proves that a payload holds the tokens its header claims (docs/format.md#tokens): a
token count that the payload cannot possibly hold is refused before anything is allocated, and
the stream must end exactly empty. constriction's coder starts empty and encodes index 0 into
an empty coder for free, so the index-0 tokens that end a grid cost nothing, and a payload cut
short decodes exactly as if its grid ended in zeros. Such a free tail is therefore limited to
``FREE_BITS`` of information, on both sides: longer ones are refused when decoding and cannot
be written either.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from gqtok.errors import FormatError, first_line
from gqtok.format.bounds import (  # noqa: F401 - the stream bounds are part of this API
    FREE_BITS,
    LOSS_BITS,
    MAX_SIZE,
    MIN_SIZE,
    PRECISION,
    SLACK_BITS,
    free_tail_limit,
    payload_limit,
    quantized_max,
    token_limit,
)

KIND_IDS = {"uniform": 0, "frequency": 1, "prior": 3}  # prior: gqtok.format.prior

def trailing_zeros(symbols: np.ndarray) -> int:
    nz = np.flatnonzero(symbols)
    return int(symbols.size - (nz[-1] + 1 if nz.size else 0))


def _long_tail(symbols: np.ndarray, limit: int) -> int | None:
    """The length of the trailing index-0 run if it exceeds ``limit``, else None (looking at
    the last limit + 1 symbols only, unless it does)."""
    if symbols.size <= limit or symbols[symbols.size - limit - 1 :].any():
        return None
    return trailing_zeros(symbols)


def check_payload(payload_bytes: int, count: int, limit: int | None, model: str) -> None:
    """ValueError unless a payload of this length can hold ``count`` tokens: whole 32-bit
    words, and no more tokens than ``limit`` (the model's bound; None: no bound). Checked
    before decoding, so a small payload cannot make the decoder allocate for a huge grid."""
    if payload_bytes % 4:
        raise ValueError("token payload length is not a multiple of 4")
    if limit is not None and count > limit:
        raise ValueError(
            f"token payload of {payload_bytes} bytes cannot hold {count} tokens"
            f" (at most {limit} under this {model})"
        )


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
        if not MIN_SIZE <= self.size <= MAX_SIZE:
            raise ValueError(f"entropy model size must be in [{MIN_SIZE}, {MAX_SIZE}]")
        if self.kind != "uniform":
            if self.counts is None or self.counts.shape != (self.size,):
                raise ValueError(f"frequency model needs a counts table of length {self.size}")
            if (self.counts < 0).any():
                raise ValueError("frequency counts must be non-negative")
            if not (self.smoothing > 0 and math.isfinite(self.smoothing)):
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
        if self.kind != "uniform":
            assert self.counts is not None
            h.update(self.counts.astype("<i8").tobytes())
        return h.digest()[:8]

    @cached_property
    def _model(self):  # noqa: ANN202 - constriction type
        import constriction

        return constriction.stream.model.Categorical(self.probabilities, perfect=False)

    @cached_property
    def zero_slot(self) -> int:
        """The exact 2^-24 slots of index 0 in the coder's table: encoding index 1 into an
        empty coder leaves its left cumulative, which is index 0's slot count."""
        import constriction

        coder = constriction.stream.stack.AnsCoder()
        coder.encode_reverse(np.array([1], dtype=np.int32), self._model)
        return int(coder.get_compressed()[0])

    @cached_property
    def free_tail(self) -> int:
        """Most index-0 tokens a valid stream may end with (they cost no payload)."""
        return free_tail_limit(self.zero_slot)

    def max_tokens(self, payload_bytes: int) -> int | None:
        """Most tokens a payload of this many bytes can hold under this model (None: any)."""
        p_max = 1.0 / self.size if self.kind == "uniform" else float(self.probabilities.max())
        return token_limit(payload_bytes, self.size, p_max, self.zero_slot)

    def ideal_bits(self, symbols: np.ndarray) -> float:
        """Cross-entropy of the symbols under this model, in bits (what ANS approaches)."""
        return float(-np.log2(self.probabilities[symbols.astype(np.int64)]).sum())

    def encode(self, symbols: np.ndarray) -> bytes:
        """The ANS payload of the symbols; FormatError for a grid no .gq file can hold (one
        ending in more free index-0 tokens than the decoder accepts)."""
        import constriction

        sym = np.ascontiguousarray(symbols, dtype=np.int32).reshape(-1)
        if sym.size and (sym.min() < 0 or sym.max() >= self.size):
            raise ValueError(f"symbols must lie in [0, {self.size})")
        tail = _long_tail(sym, self.free_tail)
        if tail is not None:
            raise FormatError(
                f"token grid ends in {tail} index-0 tokens, more than the {self.free_tail} a"
                " .gq payload can hold (docs/format.md#tokens)"
            )
        coder = constriction.stream.stack.AnsCoder()
        if sym.size:
            coder.encode_reverse(sym, self._model)
        return coder.get_compressed().astype("<u4").tobytes()

    def decode(self, payload: bytes, count: int) -> np.ndarray:
        """Inverse of encode; ValueError (one line) unless the payload holds exactly ``count``
        tokens: enough data for them (checked before decoding), a coder that ends exactly
        empty, and no more free index-0 tokens at the end than a writer can produce."""
        import constriction

        check_payload(len(payload), count, self.max_tokens(len(payload)), "entropy model")
        if count > 0 and len(payload) > payload_limit(count):
            raise ValueError(
                f"token payload of {len(payload)} bytes is too long for {count} tokens"
            )
        words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
        if count == 0:
            if words.size:
                raise ValueError("token stream has trailing data")
            return np.zeros(0, dtype=np.int64)
        try:
            coder = constriction.stream.stack.AnsCoder(words)
            out = coder.decode(self._model, count)
        except Exception as exc:  # constriction raises plain exceptions on bad streams
            raise ValueError(f"token stream is corrupt ({first_line(exc)[:200]})") from None
        if not coder.is_empty():
            raise ValueError("token stream has trailing data")
        symbols = np.asarray(out, dtype=np.int64)
        tail = _long_tail(symbols, self.free_tail)
        if tail is not None:
            raise ValueError(
                f"token payload ran out {tail} tokens before the end (truncated, or the header"
                " claims more tokens than the payload holds)"
            )
        return symbols


def uniform(size: int) -> EntropyModel:
    return EntropyModel("uniform", size)


def from_counts(counts: np.ndarray, smoothing: float = 0.5) -> EntropyModel:
    c = np.asarray(counts, dtype=np.int64)
    return EntropyModel("frequency", int(c.shape[0]), c, float(smoothing))
