"""The GQ codebook: K scrambled-Sobol points pushed through the normal inverse CDF.

Files carry only (dim, size, seed); both sides rebuild the codebook, so it must be
bit-identical to the reference on every machine. The Sobol draw is done in float32 (the
reference's default dtype) and the inverse CDF in float64, then rounded to float32.
"""

from __future__ import annotations

import hashlib
import weakref
from functools import lru_cache

import torch

MAX_DIM = 21201  # SobolEngine's dimension limit


def _check(dim: int, size: int) -> None:
    if not 1 <= dim <= MAX_DIM:
        raise ValueError(f"codebook dim must be in [1, {MAX_DIM}], got {dim}")
    if not 1 <= size <= 2**24:
        raise ValueError(f"codebook size must be in [1, 2^24], got {size}")


# (dim, seed) -> the largest codebook drawn that is still alive: a smaller size of the same
# sequence is its first rows (the GQ search of a size that is not a multiple of 64 asks for
# the aligned prefix right after the whole codebook)
_DRAWN: dict[tuple[int, int], weakref.ref[torch.Tensor]] = {}


@lru_cache(maxsize=8)
def _codebook_cached(dim: int, size: int, seed: int) -> torch.Tensor:
    ref = _DRAWN.get((dim, seed))
    drawn = ref() if ref is not None else None
    if drawn is not None and drawn.shape[0] >= size:
        return drawn[:size]  # contiguous rows, bit for bit the draw of ``size``
    engine = torch.quasirandom.SobolEngine(dimension=dim, scramble=True, seed=seed)
    # dtype fixed explicitly: a process whose default dtype is float64 must still get the
    # reference codebook (drawing in float64 changes nearly every row).
    u = engine.draw(size, dtype=torch.float32)
    cb = torch.special.ndtri(u.double()).float().contiguous()
    cb.requires_grad_(False)
    _DRAWN[(dim, seed)] = weakref.ref(cb)
    return cb


def clear_cache() -> None:
    """Forget every codebook built so far: the next call draws anew (tests of the draw)."""
    _codebook_cached.cache_clear()
    _DRAWN.clear()


def codebook(dim: int, size: int = 65536, seed: int = 42) -> torch.Tensor:
    """The (size, dim) float32 codebook; its first K rows are the codebook of size K."""
    _check(dim, size)
    return _codebook_cached(int(dim), int(size), int(seed)).clone()


def codebook_view(dim: int, size: int = 65536, seed: int = 42) -> torch.Tensor:
    """Shared read-only codebook (no copy); callers must not modify it."""
    _check(dim, size)
    return _codebook_cached(int(dim), int(size), int(seed))


def codebook_sha256(dim: int, size: int = 65536, seed: int = 42) -> str:
    """sha256 of the little-endian row-major float32 bytes (the fixtures' hash convention)."""
    cb = codebook_view(dim, size, seed)
    return hashlib.sha256(cb.numpy().astype("<f4", copy=False).tobytes()).hexdigest()


def codebook_fingerprint(dim: int, size: int = 65536, seed: int = 42) -> bytes:
    """First 8 bytes of the codebook hash: stored in .gq headers and checked at decode."""
    return bytes.fromhex(codebook_sha256(dim, size, seed))[:8]
