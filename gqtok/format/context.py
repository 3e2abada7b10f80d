"""Context-adaptive entropy coding of GQ tokens: the token payload of .gq format version 2.

Why: neighbouring GQ tokens are not independent. A few latent channels of a trained encoder are
well predicted from the decoded neighbours, so coding each index with one static table
(format version 1) wastes bits. Here every index j of the K codewords is split into three
symbols: the two coordinates (a, b) of its *cell* (B x B cells over two predictable codeword
dimensions, equal-count bins) and its position inside the cell. (a, b) are coded with
probabilities from a small integer MLP over the codewords of 12 causal neighbours, the position
with the model's static frequency table restricted to the cell (docs/format.md#version-2).

Determinism: the encoder and decoder must compute bit-identical probabilities on any machine,
thread count or CPU. Every number here is an integer: features are codeword values in 1/16,
weights and biases are integers, products and sums are formed in float64 but stay far below
2^53, so they are exact whatever order BLAS sums them in; rescaling is a floor of a division
by a power of two (exact); logits become weights through a 16-entry table of integers and
shifts (``EXP_BASE``), never through exp(). constriction receives integer weights as floats
and quantises them itself, deterministically.

Parallel decoding: tokens are decoded in wavefronts ``t = x + 3 y``. Every neighbour of a
token lies on an earlier wavefront, so all tokens of one wavefront (about min(h, w / 3) of
them) are decoded in one batch, with exactly the probabilities of a raster-order decoder:
parallelism costs no bits. With NG token groups per position, group k of a wavefront follows
group k - 1 and also sees the groups before it at the same position.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from functools import cached_property, lru_cache

import numpy as np

from gqtok.errors import first_line
from gqtok.format import bounds
from gqtok.format.entropy import EntropyModel, check_payload

# Causal neighbours (dy, dx) of a token; with SLOPE 3 each lies on an earlier wavefront.
NEIGHBOURS = (
    (0, -1), (0, -2), (0, -3),
    (-1, -2), (-1, -1), (-1, 0), (-1, 1), (-1, 2),
    (-2, -1), (-2, 0), (-2, 1),
    (-3, 0),
)  # fmt: skip
SLOPE = 3
PAD = 3  # padding rows above and columns beside the grid (the farthest neighbour)
FEATURE_SCALE = 16  # codeword values as integers in 1/16
FEATURE_MAX = 127
VALID = 16  # the last feature of a position: 16 inside the grid, 0 in the padding
ACT_MAX = 255  # hidden activations are integers in 0..255
MAX_SHIFT = 48
MAX_FEATURES = 1 << 16
MAX_HIDDEN = 1024
MAX_BINS = 64
LOGIT_MAX = 1 << 20
# round(2^30 * 2^(-j/16)), j = 0..15: the weight of a symbol whose logit is d sixteenths of a
# bit below the best is EXP_BASE[d % 16] >> (6 + d // 16), d capped at D_MAX (weight >= 16).
EXP_BASE = (
    1073741824, 1028218693, 984625594, 942880699, 902905651, 864625413, 827968132, 792865000,
    759250125, 727060411, 696235434, 666717336, 638450708, 611382493, 585461881, 560640218,
)  # fmt: skip
D_MAX = 319
SENTINEL = 0x4751  # "GQ": the last symbol a stream yields, under a uniform 2^16 model
SENTINEL_BITS = 16

LAYER_NAMES = ("w1", "b1", "w2", "b2", "wa", "ba", "wb", "bb", "shifts", "dims")
_WEIGHT_LIMIT = 1 << 15  # weights are int16, biases int32
_BIAS_LIMIT = 1 << 31


def exp_table() -> np.ndarray:
    """The integer weight of logit distance d = 0..D_MAX (float64, exact integers)."""
    d = np.arange(D_MAX + 1)
    base = np.array(EXP_BASE, dtype=np.int64)
    return (base[d & 15] >> (6 + (d >> 4))).astype(np.float64)


_EXP = exp_table()


def logit_weights(logits: np.ndarray) -> np.ndarray:
    """Integer weights (as float64) of integer logits in 1/16 bit, row by row."""
    d = np.minimum(logits.max(axis=-1, keepdims=True) - logits, D_MAX).astype(np.int64)
    return _EXP[d]


def feature_table(codebook: np.ndarray) -> np.ndarray:
    """The codewords as integer features in 1/16, clipped to +-127: (K, G) int8.

    A float32 codebook is scaled in float32: times 16 is exact there as in float64, so the
    rounding is the same and a 2^20-codeword table costs half the memory traffic."""
    cb = np.asarray(codebook)
    if cb.dtype != np.float32:
        cb = cb.astype(np.float64)
    q = np.rint(cb * cb.dtype.type(FEATURE_SCALE))
    return np.clip(q, -FEATURE_MAX, FEATURE_MAX).astype(np.int8)


def cell_table(codebook: np.ndarray, dims: tuple[int, int], bins: int) -> np.ndarray:
    """The cell a * bins + b of every codeword: a = its equal-count bin along dimension
    dims[0] (rank order, ties by index), b = its equal-count bin along dims[1] among the
    codewords of its a bin. Every cell holds floor or ceil of K / bins^2 codewords."""
    cb = np.asarray(codebook)
    rank_a = np.argsort(cb[:, dims[0]], kind="stable")
    a = _bins_of_ranks(rank_a, bins)
    # within each a bin (contiguous in rank_a), rank along dims[1]
    b = np.empty(rank_a.size, dtype=np.int64)
    starts = np.searchsorted(a[rank_a], np.arange(bins + 1))
    for i in range(bins):
        members = rank_a[starts[i] : starts[i + 1]]
        order = members[np.argsort(cb[members, dims[1]], kind="stable")]
        b[order] = np.arange(order.size) * bins // max(1, order.size)
    return a * bins + b


def codes_size(size: int, bins: int) -> bool:
    """True where a context model of ``bins`` bins can code a codebook of ``size``: two
    codewords a bin at least (B x B cells from K = B^2, the a bins alone below)."""
    return 2 * bins <= size


def coarse_size(size: int, bins: int) -> bool:
    """True where K < B^2: too few codewords for B x B cells, so a token's cell is its a bin
    alone (two symbols: a, then the position in the bin; .gq version 3, docs/format.md)."""
    return size < bins * bins


def bin_table(codebook: np.ndarray, dim: int, bins: int) -> np.ndarray:
    """The equal-count bin (0..bins-1) of every codeword along dimension ``dim``: the a of
    ``cell_table``, and the whole cell of a coarse codebook (K < B^2)."""
    return _bins_of_ranks(np.argsort(np.asarray(codebook)[:, dim], kind="stable"), bins)


def _bins_of_ranks(rank: np.ndarray, bins: int) -> np.ndarray:
    """floor(r B / K) for every codeword of rank r (``rank`` lists the codewords in order)."""
    size = rank.size
    out = np.empty(size, dtype=np.int64)
    out[rank] = np.arange(size) * bins // size
    return out


@lru_cache(maxsize=8)
def wavefronts(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(positions, starts): the grid positions y * w + x in decoding order (by wavefront
    t = x + SLOPE * y, then by y) and where each wavefront starts in that order."""
    ys, xs = np.divmod(np.arange(h * w, dtype=np.int64), w)
    t = xs + SLOPE * ys
    order = np.lexsort((ys, t))
    starts = np.searchsorted(t[order], np.arange(int(t.max()) + 2))
    order.setflags(write=False)
    starts.setflags(write=False)
    return order, starts


def num_features(dim: int, groups: int) -> int:
    """Inputs of the MLP: every neighbour's codewords (all groups) and valid flag, then the
    earlier groups at the token's own position."""
    return len(NEIGHBOURS) * (groups * dim + 1) + (groups - 1) * dim


def empty_table(h: int, w: int, channels: int) -> np.ndarray:
    """The padded feature grid of an (h, w) token grid: rows (h + PAD) * (w + 2 PAD), columns
    the codewords of all groups then the valid flag; int8, zero codewords, VALID inside."""
    t = np.zeros((h + PAD, w + 2 * PAD, channels + 1), dtype=np.int8)
    t[PAD:, PAD : PAD + w, channels] = VALID
    return t.reshape(-1, channels + 1)


def padded_positions(pos: np.ndarray, w: int) -> np.ndarray:
    """Grid positions y * w + x as rows of the padded feature grid."""
    y, x = np.divmod(pos, w)
    return (y + PAD) * (w + 2 * PAD) + x + PAD


def neighbour_offsets(w: int) -> np.ndarray:
    wp = w + 2 * PAD
    return np.array([dy * wp + dx for dy, dx in NEIGHBOURS], dtype=np.int64)


def filled_table(features: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """The padded feature grid of a whole (NG, h, w) grid of indices (the encoder's view)."""
    ng, h, w = indices.shape
    dim = features.shape[1]
    table = empty_table(h, w, ng * dim)
    ppos = padded_positions(np.arange(h * w), w)
    for k in range(ng):
        table[ppos, k * dim : (k + 1) * dim] = features[indices[k].reshape(-1)]
    return table


def grid_inputs(
    table: np.ndarray, ppos: np.ndarray, offs: np.ndarray, k: int, groups: int, dim: int
) -> np.ndarray:
    """The MLP inputs (n, F) of the group-k tokens at padded rows ``ppos``, as float64."""
    n = ppos.size
    nb = table[ppos[:, None] + offs[None, :]].reshape(n, -1).astype(np.float64)
    if groups == 1:
        return nb
    same = table[ppos, : (groups - 1) * dim].astype(np.float64)
    same[:, k * dim :] = 0.0  # groups k.. of this position are not decoded yet
    return np.concatenate([nb, same], axis=1)


def grid_features(features: np.ndarray, indices: np.ndarray) -> list[np.ndarray]:
    """Per group, the MLP inputs (h * w, F) of every token in raster order (for fitting)."""
    ng, h, w = indices.shape
    table = filled_table(features, indices)
    ppos = padded_positions(np.arange(h * w), w)
    offs = neighbour_offsets(w)
    return [grid_inputs(table, ppos, offs, k, ng, features.shape[1]) for k in range(ng)]


@dataclass(frozen=True)
class ContextParams:
    """The fitted integer network of a context model (tensors ``entropy.context.*``).

    Per token group k: w1 (F, H), b1 (H), w2 (H, H), b2 (H), wa (H, B), ba (B), wb (H, B*B),
    bb (B*B) and shifts (s1, s2, sa, sb); dims (NG, 2) are the codeword dimensions of the
    cells and B = ``bins``. Every array has the group axis first."""

    bins: int
    arrays: dict[str, np.ndarray] = field(repr=False, compare=False)

    @property
    def groups(self) -> int:
        return int(self.arrays["dims"].shape[0])

    @property
    def hidden(self) -> int:
        return int(self.arrays["w1"].shape[2])

    def check(self, size: int, dim: int, groups: int) -> None:
        """ValueError naming the first array that does not fit a model of K = size, G = dim
        and NG = groups, or breaks the exactness bounds of the module docstring."""
        a = self.arrays
        missing = [k for k in LAYER_NAMES if k not in a]
        if missing:
            raise ValueError(f"context model lacks {', '.join(missing)}")
        b = self.bins
        if not 2 <= b <= MAX_BINS or not codes_size(size, b):
            raise ValueError(f"context bins {b} outside 2..{MAX_BINS} or 2B > K={size}")
        f = num_features(dim, groups)
        if f > MAX_FEATURES:
            raise ValueError(f"context model would have {f} inputs, over {MAX_FEATURES}")
        h = int(a["w1"].shape[-1]) if a["w1"].ndim == 3 else -1
        if not 1 <= h <= MAX_HIDDEN:
            raise ValueError(f"context hidden width outside 1..{MAX_HIDDEN}")
        shapes = {
            "w1": (groups, f, h), "b1": (groups, h), "w2": (groups, h, h), "b2": (groups, h),
            "wa": (groups, h, b), "ba": (groups, b), "wb": (groups, h, b * b),
            "bb": (groups, b * b), "shifts": (groups, 4), "dims": (groups, 2),
        }  # fmt: skip
        for name, shape in shapes.items():
            arr = a[name]
            if arr.shape != shape:
                raise ValueError(f"context {name} has shape {arr.shape}, expected {shape}")
            if arr.dtype.kind not in "iu":
                raise ValueError(f"context {name} must be an integer array, got {arr.dtype}")
            limit = _BIAS_LIMIT if name.startswith("b") else _WEIGHT_LIMIT
            if arr.size and int(np.abs(arr.astype(np.int64)).max()) >= limit:
                raise ValueError(f"context {name} has values outside +-{limit}")
        if ((a["shifts"] < 0) | (a["shifts"] > MAX_SHIFT)).any():
            raise ValueError(f"context shifts outside 0..{MAX_SHIFT}")
        d = a["dims"]
        if ((d < 0) | (d >= dim)).any() or (d[:, 0] == d[:, 1]).any():
            raise ValueError(f"context dims must be two different codeword dimensions < {dim}")

    @cached_property
    def fingerprint(self) -> bytes:
        h = hashlib.sha256(f"gqtok-context-1:bins={self.bins}".encode())
        for name in LAYER_NAMES:
            arr = self.arrays[name]
            h.update(f"|{name}:{arr.shape}|".encode())
            h.update(arr.astype("<i8").tobytes())
        return h.digest()


def coder_fingerprint(params: ContextParams, static: EntropyModel) -> bytes:
    """8 bytes identifying a context coder exactly (its network and the static table it codes
    positions with): stored in .gq headers and model cards, checked at decode."""
    h = hashlib.sha256(params.fingerprint)
    h.update(static.fingerprint)
    return h.digest()[:8]


def _layer(x: np.ndarray, w: np.ndarray, b: np.ndarray, shift: int, hi: float) -> np.ndarray:
    """floor((x @ w + b) / 2^shift) clipped to [0, hi] (or [-hi, hi] for logits); exact."""
    acc = x @ w + b
    out = np.floor(acc * (2.0**-shift))
    return np.clip(out, 0.0 if hi == ACT_MAX else -hi, hi)


class ContextCoder:
    """A fitted context model bound to its codebook and static table: codes token grids.

    ``codebook`` is the model's (K, G) float32 codebook (features and cells derive from it);
    ``static`` the model's frequency table (the position inside a cell is coded with it)."""

    def __init__(
        self, params: ContextParams, codebook: np.ndarray, static: EntropyModel
    ) -> None:
        size, dim = codebook.shape
        ng = params.groups
        params.check(size, dim, ng)
        if static.size != size:
            raise ValueError("static table and codebook differ in size")
        self.params = params
        self.size, self.dim, self.groups, self.bins = size, dim, ng, params.bins
        self.features = feature_table(codebook)
        a = params.arrays
        self._w = {k: a[k].astype(np.float64) for k in ("w1", "b1", "w2", "b2", "wa", "ba")}
        b = self.bins
        # (NG, B, H, B): the b-head's slice for each value of a, contiguous
        wb = a["wb"].astype(np.float64).reshape(ng, self.hidden, b, b)
        self._wb = np.ascontiguousarray(wb.transpose(0, 2, 1, 3))
        self._bb = a["bb"].astype(np.float64).reshape(ng, b, b)
        self._shifts = a["shifts"].astype(np.int64)
        # cells, their members and the in-cell rows, per group; the rows hold counts +
        # smoothing (half-integers by default: exact, so is constriction's sum of a row)
        if static.kind == "uniform" or static.counts is None:
            raise ValueError("a context model codes positions with a frequency table")
        probs = static.counts.astype(np.float64) + static.smoothing
        self.cells: list[np.ndarray] = []
        self.position: list[np.ndarray] = []
        self.members: list[np.ndarray] = []
        self.incell: list[np.ndarray] = []
        widths = []
        # K < B^2: the cell is the a bin alone and a token is two symbols (a, position)
        self.coarse = coarse_size(size, b)
        ncells = b if self.coarse else b * b
        for k in range(ng):
            dims = tuple(int(v) for v in a["dims"][k])
            cell = bin_table(codebook, dims[0], b) if self.coarse else cell_table(codebook, dims, b)
            order = np.argsort(cell, kind="stable")
            counts = np.bincount(cell, minlength=ncells)
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
            pos = np.empty(size, dtype=np.int64)
            pos[order] = np.arange(size) - starts[cell[order]]
            self.cells.append(cell)
            self.position.append(pos)
            widths.append(int(counts.max()))
        self.width = max(b, *widths)
        for k in range(ng):
            mem = np.full((ncells, self.width), -1, dtype=np.int64)
            mem[self.cells[k], self.position[k]] = np.arange(size)
            rows = np.where(mem >= 0, probs[np.maximum(mem, 0)], 0.0)
            self.members.append(mem)
            self.incell.append(rows)
        self.static = static

    @property
    def hidden(self) -> int:
        return self.params.hidden

    @property
    def parts(self) -> int:
        """Symbols a token: a, b, position; a, position when coarse."""
        return 2 if self.coarse else 3

    @cached_property
    def fingerprint(self) -> bytes:
        return coder_fingerprint(self.params, self.static)

    # -- the network ---------------------------------------------------------------------

    def _hidden(self, k: int, x: np.ndarray) -> np.ndarray:
        w, s = self._w, self._shifts[k]
        h1 = _layer(x, w["w1"][k], w["b1"][k], int(s[0]), ACT_MAX)
        return _layer(h1, w["w2"][k], w["b2"][k], int(s[1]), ACT_MAX)

    def _rows_a(self, k: int, h2: np.ndarray) -> np.ndarray:
        la = _layer(h2, self._w["wa"][k], self._w["ba"][k], int(self._shifts[k, 2]), LOGIT_MAX)
        return self._pad(logit_weights(la))

    def _rows_b(self, k: int, h2: np.ndarray, a: np.ndarray) -> np.ndarray:
        wb, bb = self._wb[k], self._bb[k]
        if a.size <= 4 * self.bins:  # a wavefront: gather each token's slice of the head
            acc = np.matmul(h2[:, None, :], wb[a])[:, 0, :] + bb[a]
        else:  # a whole image (encoder): one product per value of a, not an (n, H, B) gather
            acc = np.empty((a.size, self.bins))
            for v in np.unique(a):
                sel = np.flatnonzero(a == v)
                acc[sel] = h2[sel] @ wb[v] + bb[v]
        lb = np.clip(np.floor(acc * (2.0 ** -int(self._shifts[k, 3]))), -LOGIT_MAX, LOGIT_MAX)
        return self._pad(logit_weights(lb))

    def _pad(self, rows: np.ndarray) -> np.ndarray:
        if rows.shape[1] == self.width:
            return rows
        out = np.zeros((rows.shape[0], self.width))
        out[:, : rows.shape[1]] = rows
        return out

    def _inputs(self, table: np.ndarray, ppos: np.ndarray, offs: np.ndarray, k: int) -> np.ndarray:
        return grid_inputs(table, ppos, offs, k, self.groups, self.dim)

    # -- coding --------------------------------------------------------------------------

    @cached_property
    def _family(self):  # noqa: ANN202 - constriction type
        import constriction

        return constriction.stream.model.Categorical(perfect=False)

    def _symbols(
        self, table: np.ndarray, indices: np.ndarray, pos: np.ndarray, w: int, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The (3n,) symbols a, b, position and their (3n, width) rows of the tokens of group
        k at grid positions ``pos`` (one wavefront), in the order the decoder reads them;
        (2n,) symbols a, position for a coarse codebook."""
        ppos = padded_positions(pos, w)
        h2 = self._hidden(k, self._inputs(table, ppos, neighbour_offsets(w), k))
        idx = indices[k].reshape(-1)[pos]
        cell = self.cells[k][idx]
        position = self.position[k][idx]
        if self.coarse:
            rows = np.concatenate([self._rows_a(k, h2), self.incell[k][cell]])
            return np.concatenate([cell, position]).astype(np.int32), rows
        a, b = np.divmod(cell, self.bins)
        rows = np.concatenate(
            [self._rows_a(k, h2), self._rows_b(k, h2, a), self.incell[k][cell]]
        )
        return np.concatenate([a, b, position]).astype(np.int32), rows

    def encode(self, indices: np.ndarray, chunk_tokens: int = 4096) -> bytes:
        """The token payload of a (NG, h, w) grid of indices (.gq version 2, or 3 when
        coarse)."""
        import constriction

        ind = np.asarray(indices, dtype=np.int64)
        ng, h, w = ind.shape
        if ng != self.groups:
            raise ValueError(f"grid has {ng} token groups, the context model {self.groups}")
        if ind.size and (ind.min() < 0 or ind.max() >= self.size):
            raise ValueError(f"symbols must lie in [0, {self.size})")
        table = filled_table(self.features, ind)
        order, starts = wavefronts(h, w)
        coder = constriction.stream.stack.AnsCoder()
        coder.encode_reverse(np.array([SENTINEL], dtype=np.int32), _sentinel_model())
        # ANS is a stack: code the wavefronts last to first, in chunks of bounded memory
        steps = len(starts) - 1
        end = steps
        while end > 0:
            begin = end
            while begin > 0 and starts[end] - starts[begin - 1] <= max(1, chunk_tokens // ng):
                begin -= 1
            begin = min(begin, end - 1)
            # the network runs once per group over the whole chunk (the tokens of wavefronts
            # begin..end-1 are contiguous in ``order``); then the symbols are put in the
            # decoder's order: per wavefront, per group, the a's, b's and positions
            lo, hi = int(starts[begin]), int(starts[end])
            parts = [self._symbols(table, ind, order[lo:hi], w, k) for k in range(ng)]
            n = hi - lo
            pick = [
                np.arange(starts[s] - lo, starts[s + 1] - lo) + (k * self.parts + j) * n
                for s in range(begin, end)
                for k in range(ng)
                for j in range(self.parts)
            ]
            sel = np.concatenate(pick)
            syms = np.concatenate([p[0] for p in parts])[sel]
            rows = np.concatenate([p[1] for p in parts])[sel]
            coder.encode_reverse(syms, self._family, rows)
            end = begin
        return coder.get_compressed().astype("<u4").tobytes()

    @cached_property
    def min_bits(self) -> float:
        """Fewest bits any token can cost (its three symbols, or two when coarse), for the
        payload rule."""
        b = self.bins
        p_ab = _EXP[0] / (_EXP[0] + (b - 1) * _EXP[D_MAX])
        p_pos = max(float((r / r.sum(axis=1, keepdims=True)).max()) for r in self.incell)
        total = 0.0
        for p in (p_ab, p_pos) if self.coarse else (p_ab, p_ab, p_pos):
            total += bounds.PRECISION - math.log2(bounds.quantized_max(p, self.width))
        return total - self.parts * bounds.LOSS_BITS

    def max_tokens(self, payload_bytes: int) -> int | None:
        """Most tokens a payload of this many bytes can hold (None: any number)."""
        if self.min_bits <= 0:
            return None
        return int((8 * payload_bytes + bounds.SLACK_BITS) / self.min_bits)

    def decode(self, payload: bytes, shape: tuple[int, int, int]) -> np.ndarray:
        """Inverse of encode: the (NG, h, w) int64 grid; ValueError (one line) unless the
        payload holds exactly these tokens and then the sentinel, with nothing left over."""
        import constriction

        ng, h, w = shape
        count = ng * h * w
        if ng != self.groups:
            raise ValueError(f"file has {ng} token groups, the context model {self.groups}")
        check_payload(len(payload), count, self.max_tokens(len(payload)), "context model")
        words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
        out = np.zeros((ng, h * w), dtype=np.int64)
        table = empty_table(h, w, self.groups * self.dim)
        order, starts = wavefronts(h, w)
        offs = neighbour_offsets(w)
        try:
            coder = constriction.stream.stack.AnsCoder(words)
            for s in range(len(starts) - 1):
                pos = order[starts[s] : starts[s + 1]]
                ppos = padded_positions(pos, w)
                for k in range(ng):
                    h2 = self._hidden(k, self._inputs(table, ppos, offs, k))
                    a = np.asarray(coder.decode(self._family, self._rows_a(k, h2)), np.int64)
                    if (a >= self.bins).any():
                        raise ValueError("a cell coordinate is out of range")
                    cell = a
                    if not self.coarse:
                        rows_b = self._rows_b(k, h2, a)
                        b = np.asarray(coder.decode(self._family, rows_b), np.int64)
                        if (b >= self.bins).any():
                            raise ValueError("a cell coordinate is out of range")
                        cell = a * self.bins + b
                    p = np.asarray(coder.decode(self._family, self.incell[k][cell]), np.int64)
                    idx = self.members[k][cell, p]
                    if (idx < 0).any():
                        raise ValueError("a position lies outside its cell")
                    out[k, pos] = idx
                    table[ppos, k * self.dim : (k + 1) * self.dim] = self.features[idx]
            sentinel = int(coder.decode(_sentinel_model(), 1)[0])
        except Exception as exc:  # constriction raises plain exceptions on bad streams
            raise ValueError(f"token stream is corrupt ({first_line(exc)[:200]})") from None
        if sentinel != SENTINEL:
            raise ValueError(
                "token stream does not end in its end marker (truncated, or the header claims"
                " other tokens than the payload holds)"
            )
        if not coder.is_empty():
            raise ValueError("token stream has trailing data")
        return out.reshape(ng, h, w)

    def ideal_bits(self, indices: np.ndarray) -> float:
        """Information content of a grid under this model, in bits (what ANS approaches)."""
        ind = np.asarray(indices, dtype=np.int64)
        ng, h, w = ind.shape
        table = filled_table(self.features, ind)
        pos = np.arange(h * w)
        bits = 0.0
        for k in range(ng):
            sy, rows = self._symbols(table, ind, pos, w, k)
            p = rows[np.arange(sy.size), sy] / rows.sum(axis=1)
            bits -= float(np.log2(p).sum())
        return bits


@lru_cache(maxsize=1)
def _sentinel_model():  # noqa: ANN202 - constriction type
    import constriction

    return constriction.stream.model.Categorical(np.ones(1 << SENTINEL_BITS), perfect=False)
