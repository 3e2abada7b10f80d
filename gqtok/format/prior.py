"""A parametric prior over codeword frequencies, for every codebook size K of a model.

Why: rate control (gqtok.codec.rate) codes a model's tokens at any K, and a frequency table is
measured for one K only. A trained encoder's latent channels are not standard normal (some are
narrower, some shifted), so codewords are used with frequencies that nearly factor over their
coordinates: log2 frequency ~ sum over the G dimensions of a function of that coordinate
(within 1 % of the measured table's bits at the model's own K). Each function is a step
function over 32 fixed bins of the coordinate, fitted for a ladder of K values (tensors
``entropy.prior.*`` of the model file); any K in between interpolates the two nearest ladder
rows linearly in K, outside the ladder the nearest row is used.

All integer, so every machine derives the same table: coordinates as integers in 1/16
(gqtok.format.context.feature_table), bin values in 1/16 bit, integer interpolation, and
weights from the same exp table as the context model. The derived weights are the ``counts``
of an ordinary EntropyModel (kind "prior", .gq format version 2), fingerprinted like a
frequency table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gqtok.format.context import _EXP, D_MAX, feature_table
from gqtok.format.entropy import EntropyModel

BINS = 32
EDGES = tuple(range(-64, 65, 4))  # bin i holds features in [EDGES[i], EDGES[i + 1]), ends open
PRIOR_NAMES = ("ladder", "values")
_VALUE_LIMIT = 1 << 16
_EXP_INT = _EXP.astype(np.int64)  # exact integers


@dataclass(frozen=True)
class PriorParams:
    """ladder (n,) int64 codebook sizes, increasing; values (n, G, BINS) int64: log2
    frequency ratio of a codeword coordinate in each bin, in 1/16 bit."""

    arrays: dict[str, np.ndarray] = field(repr=False)

    def check(self, dim: int | None = None) -> None:
        """ValueError naming the first array that breaks the rules above (and, given ``dim``,
        does not fit a codebook of that G)."""
        a = self.arrays
        missing = [k for k in PRIOR_NAMES if k not in a]
        if missing:
            raise ValueError(f"prior lacks {', '.join(missing)}")
        for k in PRIOR_NAMES:
            if a[k].dtype.kind not in "iu":
                raise ValueError(f"prior {k} must be an integer array, got {a[k].dtype}")
        ladder, values = (a[k].astype(np.int64) for k in PRIOR_NAMES)
        if ladder.ndim != 1 or not 1 <= ladder.size <= 64 or (np.diff(ladder) <= 0).any():
            raise ValueError("prior ladder must be 1..64 increasing codebook sizes")
        if ladder[0] < 2 or ladder[-1] > 1 << 24:
            raise ValueError("prior ladder sizes outside 2..2^24")
        g = values.shape[1] if values.ndim == 3 else -1
        if values.shape != (ladder.size, g, BINS) or (dim is not None and g != dim):
            raise ValueError(f"prior values must have shape ({ladder.size}, G, {BINS})")
        if (np.abs(values) >= _VALUE_LIMIT).any():
            raise ValueError("prior values outside +-2^16")

    def row(self, size: int) -> np.ndarray:
        """The (G, BINS) values for codebook size ``size`` (int64, exact)."""
        ladder = self.arrays["ladder"].astype(np.int64)
        values = self.arrays["values"].astype(np.int64)
        if size <= ladder[0]:
            return values[0]
        if size >= ladder[-1]:
            return values[-1]
        i = int(np.searchsorted(ladder, size, side="right")) - 1
        k0, k1 = int(ladder[i]), int(ladder[i + 1])
        return (values[i] * (k1 - size) + values[i + 1] * (size - k0)) // (k1 - k0)

    def weights(self, codebook: np.ndarray) -> np.ndarray:
        """Integer weights (int64, >= 16) of the codewords of ``codebook`` (K, G)."""
        row = self.row(codebook.shape[0])
        b = coordinate_bins(codebook)
        logw = np.zeros(b.shape[0], dtype=np.int64)
        for i in range(b.shape[1]):  # one 32-entry lookup per dimension
            logw += row[i][b[:, i]]
        d = np.minimum(logw.max() - logw, D_MAX)
        return _EXP_INT[d]

    def table(self, codebook: np.ndarray) -> EntropyModel:
        """The entropy model of this prior for ``codebook``: kind "prior", its weights as
        counts (smoothing 0.5 keeps it a valid frequency table; weights are >= 16)."""
        w = self.weights(codebook)
        return EntropyModel("prior", int(w.size), w, 0.5)


def coordinate_bins(codebook: np.ndarray) -> np.ndarray:
    """The bin (0..BINS-1) of every coordinate of every codeword, from the integer features:
    the last edge at or below the feature, ends open. EDGES are evenly spaced, so that is a
    floor division (an arithmetic shift) in int16, not a search: 16 M of them at K = 2^20."""
    f = feature_table(codebook).astype(np.int16)
    step = EDGES[1] - EDGES[0]
    return np.clip((f - EDGES[0]) >> (step.bit_length() - 1), 0, BINS - 1)


def fit_values(bins: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(G, BINS) values of the codebook's coordinate bins ``bins`` (K, G) and how often each
    codeword was chosen: per dimension, log2 of (share of chosen tokens in the bin) over
    (share of codewords in the bin), add-one smoothed, in 1/16 bit."""
    out = []
    for d in range(bins.shape[1]):
        tok = np.bincount(bins[:, d], weights=counts.astype(np.float64), minlength=BINS) + 1.0
        cbk = np.bincount(bins[:, d], minlength=BINS) + 1.0
        out.append(np.log2((tok / tok.sum()) / (cbk / cbk.sum())))
    return np.rint(np.stack(out) * 16).astype(np.int64)
