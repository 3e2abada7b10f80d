"""Gaussian Quant: pick, per token, the codeword maximising log q(c|x) - beta * log p(c).

The search is written as a matrix product so it runs at GEMM speed: with a = 1/s^2,

    score_j = sum_i beta*c_ji^2 - ((c_ji - m_i)/s_i)^2
            = sum_i c_ji^2 * (beta - a_i) + c_ji * (2 m_i a_i) + const(token).

That expanded float32 form cancels catastrophically when s is tiny (a ~ 1e13), so it is only
used to shortlist: every codeword whose approximate score lies within twice a rigorous rounding
bound of the approximate maximum is re-scored in float64 with the direct form, and tokens whose
shortlist is too long are searched exhaustively in float64. The result is the exact argmax
(first index on ties) for every input, not just for well-conditioned ones.

Most tokens of a trained model never need the whole codebook: an interval along their sharpest
coordinate provably holds the winner (_windows), and the GEMM runs over those intervals of the
codebook sorted by that coordinate. docs/search.md has the argument and the measurements.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from gqtok.quant.codebook import codebook_view
from gqtok.quant.layout import (  # noqa: F401 - LOGVAR_* re-exported: the training loss uses them
    LOGVAR_MAX,
    LOGVAR_MIN,
    Layout,
    grid_from_tokens,
    latent_from_codewords,
    split_moments,
    to_blc,
)

_F32_EPS = 2.0**-24  # unit roundoff of float32
_SHORTLIST_CAP = 4096  # codewords; longer shortlists are searched exhaustively
_ROW_CHUNK = 256  # tokens per GEMM block: score block 256 x K floats (64 MB at K=2^16); fewer,
# larger parallel regions also keep torch threads from stalling on a busy machine (3x at 64)
_BLOCK = 64  # codewords per max-group in the shortlist pass
_COL_TILE = 2048  # codewords per GEMM tile: a 256 x 2048 float32 tile (2 MB) is still in cache
# when the group max reads it back; whole 64 MB rows went to memory and back (2x slower)
_WINDOW_MIN_K = 8192  # smaller codebooks: the dense search is already cheap
_WINDOW_MIN_TOKENS = 64  # fewer tokens (in all, or windowed along one coordinate): dense
_PROBE = 1024  # codewords whose best gives each token's lower bound for its window
_WIN_ROWS = 128  # tokens per windowed GEMM block (sorted by window centre)
_WIN_GROUP = 16  # codewords per max-group in the windowed shortlist
_WIN_WIDE_QUANTILE = 0.75  # windows wider than this quantile are scanned in blocks of their own
_WIN_MAX_SHARE = 0.25  # windows expected to hold more of the codebook go to the dense search


@lru_cache(maxsize=8)
def _search_tables(
    dim: int, size: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(K, 2G) matrix [c^2, c], per-dimension max c^2 and max |c| for the error bound."""
    cb = codebook_view(dim, size, seed)
    table = torch.cat([cb * cb, cb], dim=1).contiguous()
    return table, (cb * cb).amax(0), cb.abs().amax(0)


def _exact_scores(
    mu: torch.Tensor, std: torch.Tensor, cb: torch.Tensor, beta: float
) -> torch.Tensor:
    """Direct-form float64 scores of tokens (R, G) against codewords (R, J, G) or (J, G)."""
    c = cb.double()
    m = mu.double().unsqueeze(-2)
    s = std.double().unsqueeze(-2)
    return (beta * c * c - ((c - m) / s) ** 2).sum(-1)


def _exhaustive(mu: torch.Tensor, std: torch.Tensor, cb: torch.Tensor, beta: float) -> torch.Tensor:
    """Exact argmax over the whole codebook, a few tokens at a time (bounded memory)."""
    out = torch.empty(mu.shape[0], dtype=torch.int64)
    step = max(1, (1 << 21) // (cb.shape[0] * cb.shape[1]))
    for r in range(0, mu.shape[0], step):
        scores = _exact_scores(mu[r : r + step], std[r : r + step], cb, beta)
        out[r : r + step] = scores.argmax(dim=1)
    return out


def _coefficients(
    m: torch.Tensor, s: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(beta - a, 2 m a) with a = 1/s^2: a token's weights on a codeword's [c^2, c]."""
    inv = 1.0 / (s * s)
    return beta - inv, 2.0 * m * inv


class _Scratch:
    """Buffers reused across the blocks of one search: a fresh multi-MB tensor per block
    page-faults its memory in (with the chunked re-scoring, 0.24 -> 0.19 s on the sample's
    6144 tokens)."""

    def __init__(self) -> None:
        self._bufs: dict[str, torch.Tensor] = {}

    def get(self, name: str, numel: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        buf = self._bufs.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != dtype:
            buf = self._bufs[name] = torch.empty(numel, dtype=dtype)
        return buf[:numel]


def _scan(
    m: torch.Tensor,
    s: torch.Tensor,
    beta: float,
    table_t: torch.Tensor,
    bound_tables: tuple[torch.Tensor, torch.Tensor],
    block: int,
    scratch: _Scratch,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shortlist for tokens (R, G) among the J codewords whose [c^2, c] columns are table_t
    (2G, J), J a multiple of block: (row, column) pairs that may hold each row's winner. Rows
    whose shortlist is too long (or not finite) get no pairs: the caller searches them again.

    One GEMM (in cache-sized column tiles) gives approximate scores, a max over groups of
    ``block`` columns finds the groups whose best could beat the approximate winner given a
    rigorous float32 rounding bound; every column of those groups is a candidate.
    """
    c2max, cmax = bound_tables
    rows_here, j_total = m.shape[0], table_t.shape[1]
    n_groups = j_total // block
    a1, a2 = _coefficients(m, s, beta)
    coef = torch.cat([a1, a2], dim=1)
    # Group g of a tile of width w holds its columns g, g + w/block, g + 2w/block, ...: the
    # group max is then an elementwise max of contiguous rows (7x faster than reducing
    # runs of 16 adjacent floats), and any partition of the columns serves the shortlist.
    bmax = scratch.get("bmax", rows_here * n_groups).view(rows_here, n_groups)
    wt = -(-n_groups // -(-n_groups // max(1, _COL_TILE // block)))  # groups per tile:
    # tiles of (nearly) equal width, no small remainder GEMM
    n_tiles = -(-n_groups // wt)
    tile = wt * block
    buf = scratch.get("tile", rows_here * min(tile, j_total))
    for c0 in range(0, j_total, tile):
        c1 = min(j_total, c0 + tile)
        w = (c1 - c0) // block
        part = buf[: rows_here * (c1 - c0)].view(rows_here, c1 - c0)
        torch.mm(coef, table_t[:, c0:c1], out=part)
        g0 = c0 // block
        torch.amax(part.view(rows_here, block, w), dim=1, out=bmax[:, g0 : g0 + w])
    top = bmax.amax(dim=1)
    # gamma_n for the length-2G dot product, plus slack for forming a and c^2 in float32.
    gamma = (2 * m.shape[1] + 6) * _F32_EPS
    bound = gamma * ((a1.abs() * c2max).sum(1) + (a2.abs() * cmax).sum(1))
    # A codeword whose exact score could beat the approximate winner scores above thr.
    thr = top - 2.0 * bound * (1.0 + 1e-3)
    cand = bmax >= thr.unsqueeze(1)
    counts = cand.sum(dim=1, dtype=torch.int32)
    short = torch.isfinite(top) & torch.isfinite(thr) & (counts * block <= _SHORTLIST_CAP)
    cand &= short.unsqueeze(1)
    r_idx, g_idx = torch.nonzero(cand, as_tuple=True)
    t_idx = g_idx // wt  # tile of each group; the last tile may hold fewer groups
    width = torch.where(t_idx == n_tiles - 1, n_groups - (n_tiles - 1) * wt, wt)
    cols = (t_idx * tile + g_idx - t_idx * wt).unsqueeze(1) + width.unsqueeze(1) * torch.arange(
        block
    )
    return r_idx.repeat_interleave(block), cols.reshape(-1)


def _rescore(
    mu: torch.Tensor,
    std: torch.Tensor,
    cb: torch.Tensor,
    beta: float,
    tok: torch.Tensor,
    code: torch.Tensor,
    out: torch.Tensor,
    chunk: int = 8192,
) -> None:
    """out[t] = the candidate code of token t with the best float64 direct-form score, the
    smallest code on ties, for every token t named in tok (pairs tok[i], code[i]).

    Same arithmetic as _exact_scores, done in place in cache-sized chunks."""
    if not tok.numel():
        return
    n, dim = mu.shape
    m64, s64 = mu.double(), std.double()
    exact = torch.empty(tok.numel(), dtype=torch.float64)
    c32 = torch.empty(chunk, dim)
    c, m, sq, d = (torch.empty(chunk, dim, dtype=torch.float64) for _ in range(4))
    for i in range(0, tok.numel(), chunk):
        k = min(chunk, tok.numel() - i)
        t_i, j_i = tok[i : i + k], code[i : i + k]
        torch.index_select(cb, 0, j_i, out=c32[:k])
        c[:k].copy_(c32[:k])
        torch.index_select(m64, 0, t_i, out=m[:k])
        torch.index_select(s64, 0, t_i, out=d[:k])
        torch.sub(c[:k], m[:k], out=m[:k])
        m[:k].div_(d[:k]).mul_(m[:k])  # ((c - m) / s)^2
        torch.mul(c[:k], beta, out=sq[:k]).mul_(c[:k]).sub_(m[:k])  # beta*c*c - ...
        torch.sum(sq[:k], dim=1, out=exact[i : i + k])
    best = torch.full((n,), float("-inf"), dtype=torch.float64)
    best.scatter_reduce_(0, tok, exact, reduce="amax", include_self=True)
    is_best = exact == best[tok]
    first = torch.full((n,), torch.iinfo(torch.int64).max, dtype=torch.int64)
    first.scatter_reduce_(0, tok[is_best], code[is_best], reduce="amin")
    hit = first < torch.iinfo(torch.int64).max
    out[hit] = first[hit]


@lru_cache(maxsize=16)  # 9 MB each at K=2^16, G=16; a trained model uses a few
def _sorted_by(
    dim: int, size: int, seed: int, d: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The codebook ordered by coordinate d: (codebook indices, [c^2, c] columns (2G, K), keys).

    In this order a token's window along d is one contiguous slice of codewords.
    """
    cb = codebook_view(dim, size, seed)
    order = torch.sort(cb[:, d], stable=True).indices
    keys = cb[order, d].double().contiguous()
    return order, torch.index_select(_transposed(dim, size, seed), 1, order), keys


def _lower_bounds(
    mu: torch.Tensor, std: torch.Tensor, cb: torch.Tensor, table: torch.Tensor, beta: float
) -> torch.Tensor:
    """A float64 score each token certainly reaches: the exact score of the approximate best
    of the first _PROBE codewords (any codeword's exact score is a valid lower bound)."""
    probe = min(_PROBE, cb.shape[0]) // 64 * 64
    coef = torch.cat(_coefficients(mu, std, beta), dim=1)
    scores = torch.mm(coef, table[:probe].t()).view(-1, probe // 64, 64)
    # argmax in two steps (best column of 64 strided groups, then its best row): torch's
    # row argmax over 1024 floats ran at under 1 GFLOP/s here
    col = scores.amax(dim=1).argmax(dim=1, keepdim=True)
    row = scores.gather(2, col.unsqueeze(1).expand(-1, scores.shape[1], 1)).argmax(dim=1)
    j0 = row.squeeze(1) * 64 + col.squeeze(1)
    return _exact_scores(mu, std, cb[j0].unsqueeze(1), beta).squeeze(1)


@lru_cache(maxsize=8)
def _ranges(dim: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-coordinate min and max of the codebook, in float64."""
    cb = codebook_view(dim, size, seed)
    return cb.amin(0).double(), cb.amax(0).double()


def _windows(
    mu: torch.Tensor,
    std: torch.Tensor,
    ranges: tuple[torch.Tensor, torch.Tensor],
    beta: float,
    lower: torch.Tensor,
    max_share: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per token, the coordinate d and interval [lo, hi] of c_d outside which no codeword can
    reach ``lower``; returns (d, lo, hi) in float64, lo > hi where no coordinate prunes, or
    where the window is expected to hold more than ``max_share`` of the codebook.

    The score is a sum of one term per coordinate, f_i(c) = beta*c^2 - a_i*(c - m_i)^2 with
    a = 1/s^2. Bounding every other term by its maximum over the codebook's range leaves, for
    a concave f_d (a_d > beta), an interval around its vertex: the GQ posterior is much
    narrower than the prior along the model's informative channels, so that interval holds a
    few % of the codewords. The bounds carry a relative slack far above float64 rounding.
    """
    m = mu.double()
    a = 1.0 / std.double() ** 2
    lo_cb, hi_cb = ranges

    def f(c: torch.Tensor) -> torch.Tensor:
        return beta * c * c - a * (c - m) ** 2

    concave = a > beta
    vertex = torch.where(concave, a * m / (a - beta), torch.zeros_like(m))
    at_vertex = f(vertex)
    best_term = torch.where(
        concave,
        f(torch.minimum(torch.maximum(vertex, lo_cb), hi_cb)),
        torch.maximum(f(lo_cb.expand_as(m)), f(hi_cb.expand_as(m))),
    )
    slack = 1e-9 * (lower.abs() + best_term.abs().sum(1) + at_vertex.abs().amax(1)) + 1e-12
    need = (lower - slack).unsqueeze(1) - (best_term.sum(1, keepdim=True) - best_term)
    radius = torch.sqrt((at_vertex - need).clamp(min=0) / (a - beta)) * (1 + 1e-9) + 1e-12
    # Expected share of the (standard normal) codewords inside each window picks d.
    share = torch.special.ndtr(vertex + radius) - torch.special.ndtr(vertex - radius)
    share = torch.where(concave & torch.isfinite(share) & (at_vertex >= need), share, 2.0)
    d = share.argmin(dim=1)
    pick = d.unsqueeze(1)
    v, r = vertex.gather(1, pick).squeeze(1), radius.gather(1, pick).squeeze(1)
    ok = share.gather(1, pick).squeeze(1) <= max_share
    lo = torch.where(ok, v - r, torch.ones_like(v))
    hi = torch.where(ok, v + r, torch.zeros_like(v))
    return d, lo, hi


def _search_windowed(
    mu: torch.Tensor, std: torch.Tensor, dim: int, size: int, seed: int, beta: float
) -> torch.Tensor:
    """Exact argmax restricted to each token's window (see _windows); -1 where none prunes
    or the shortlist is too long."""
    cb = codebook_view(dim, size, seed)
    table, c2max, cmax = _search_tables(dim, size, seed)
    n = mu.shape[0]
    out = torch.full((n,), -1, dtype=torch.int64)
    lower = _lower_bounds(mu, std, cb, table, beta)
    # Windows over a large share of the codebook cost more than the dense search (a block
    # scans the union of its windows).
    d, lo, hi = _windows(mu, std, _ranges(dim, size, seed), beta, lower, _WIN_MAX_SHARE)
    g = _WIN_GROUP
    toks, codes = [], []
    scratch = _Scratch()
    useful = lo <= hi
    for dd in torch.unique(d[useful]).tolist():
        sel = torch.nonzero((d == dd) & useful).squeeze(1)
        if sel.numel() < _WINDOW_MIN_TOKENS:  # the sorted copy and blocks would not pay
            continue
        order, table_t, keys = _sorted_by(dim, size, seed, dd)
        start = torch.searchsorted(keys, lo[sel])
        end = torch.searchsorted(keys, hi[sel], right=True)
        # A block scans the union of its tokens' windows, which the widest one dominates:
        # blocks of similar width (narrow / widest quarter), each sorted by window centre,
        # scan ~20% fewer columns on a trained model's tokens than one centre-sorted list.
        width = (end - start).double()
        wide = width > torch.quantile(width, _WIN_WIDE_QUANTILE)
        key = wide.double() * (4.0 * size) + (start + end).double()
        by_key = torch.argsort(key, stable=True)
        sel, c0s, ends = sel[by_key], (start[by_key] // g * g).tolist(), end[by_key].tolist()
        n_narrow = int((~wide).sum())
        for lo_r, hi_r in ((0, n_narrow), (n_narrow, sel.numel())):
            for r0 in range(lo_r, hi_r, _WIN_ROWS):
                r1 = min(hi_r, r0 + _WIN_ROWS)
                rows = sel[r0:r1]
                # at least one group: a window holds the probe's codeword, so it is never
                # empty, but rounding must not make the slice empty either
                c1 = max(g, min(size, -(-max(ends[r0:r1]) // g) * g))
                c0 = min(min(c0s[r0:r1]), c1 - g)
                r_idx, cols = _scan(
                    mu[rows], std[rows], beta, table_t[:, c0:c1], (c2max, cmax), g, scratch
                )
                toks.append(rows[r_idx])
                codes.append(order[c0 + cols])
    if toks:
        _rescore(mu, std, cb, beta, torch.cat(toks), torch.cat(codes), out)
    return out


def search(
    mu: torch.Tensor,
    std: torch.Tensor,
    dim: int,
    size: int = 65536,
    seed: int = 42,
    beta: float = 1.0,
    row_chunk: int = _ROW_CHUNK,
) -> torch.Tensor:
    """Exact GQ argmax for tokens mu, std of shape (N, dim); returns int64 indices (N,).

    Large codebooks first try each token's window (a provable superset of the winners, a few %
    of the codebook for a trained model's tokens); tokens no window prunes take the dense
    guarded GEMM over every codeword, and the rare token whose shortlist stays too long there
    is searched exhaustively in float64.
    """
    cb = codebook_view(dim, size, seed)
    _, c2max, cmax = _search_tables(dim, size, seed)
    k = cb.shape[0]
    n = mu.shape[0]
    mu, std = mu.float(), std.float()
    out = torch.full((n,), -1, dtype=torch.int64)
    if k >= _WINDOW_MIN_K and k % _WIN_GROUP == 0 and n >= _WINDOW_MIN_TOKENS:
        finite = torch.nonzero(torch.isfinite(mu).all(1) & torch.isfinite(std).all(1))
        rows = finite.squeeze(1)
        if rows.numel():
            out[rows] = _search_windowed(mu[rows], std[rows], dim, size, seed, beta)
    block = _BLOCK if k % _BLOCK == 0 else 1
    table_t = _transposed(dim, size, seed)
    left = torch.nonzero(out < 0).squeeze(1)
    scratch = _Scratch()
    for r0 in range(0, left.numel(), row_chunk):
        rows = left[r0 : r0 + row_chunk]
        r_idx, cols = _scan(mu[rows], std[rows], beta, table_t, (c2max, cmax), block, scratch)
        sub = torch.full((rows.numel(),), -1, dtype=torch.int64)
        _rescore(mu[rows], std[rows], cb, beta, r_idx, cols, sub)
        out[rows] = sub
    rest = torch.nonzero(out < 0).squeeze(1)
    if rest.numel():
        out[rest] = _exhaustive(mu[rest], std[rest], cb, beta)
    return out


@lru_cache(maxsize=8)
def _transposed(dim: int, size: int, seed: int) -> torch.Tensor:
    """[c^2, c] as (2G, K) columns: the GEMM reads column slices of it faster than rows.t()."""
    return _search_tables(dim, size, seed)[0].t().contiguous()


def search_naive(
    mu: torch.Tensor,
    std: torch.Tensor,
    dim: int,
    size: int = 65536,
    seed: int = 42,
    beta: float = 1.0,
    row_chunk: int = 16,
) -> torch.Tensor:
    """Reference broadcast search in float32 direct form (the upstream kernel formula)."""
    cb = codebook_view(dim, size, seed)
    out = torch.empty(mu.shape[0], dtype=torch.int64)
    for r in range(0, mu.shape[0], row_chunk):
        m = mu[r : r + row_chunk].unsqueeze(1)
        s = std[r : r + row_chunk].unsqueeze(1)
        scores = (beta * cb * cb - ((cb - m) / s) ** 2).sum(-1)
        out[r : r + row_chunk] = scores.argmax(dim=1)
    return out


def quantize(
    moments: torch.Tensor,
    dim: int,
    size: int = 65536,
    seed: int = 42,
    beta: float = 1.0,
    layout: Layout = "bchw",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize encoder moments; returns (indices, zhat) in the reference layouts.

    bchw: moments (B, 2C, h, w) -> indices (B, NG, h, w), zhat (B, C, h, w)
    blc:  moments (B, L, 2C)    -> indices (B, L, NG),    zhat (B, L, C)
    """
    x = to_blc(moments, layout)
    if not torch.isfinite(x).all():
        raise ValueError("moments contain NaN or infinity")
    with torch.inference_mode():
        mu, std = split_moments(moments.detach().cpu(), dim, layout)
        flat = search(mu, std, dim, size, seed, beta)
    idx = grid_from_tokens(flat, moments.shape, dim, layout).to(moments.device)
    return idx, dequantize(idx, dim, size, seed, layout)


def dequantize(
    indices: torch.Tensor, dim: int, size: int = 65536, seed: int = 42, layout: Layout = "bchw"
) -> torch.Tensor:
    """Codeword latents for indices; the exact inverse of quantize's token layout."""
    cb = codebook_view(dim, size, seed)
    idx = indices.long().cpu()
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= size):
        raise ValueError(f"indices must lie in [0, {size})")
    return latent_from_codewords(cb, idx, layout).to(indices.device)
