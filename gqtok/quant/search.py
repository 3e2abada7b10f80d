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

The search runs on the tokens' device (CPU or CUDA) with the same result, bit for bit: the
codebook is built on the CPU and copied, every float64 score sums its G terms in one fixed
order (torch's own reductions order them by device), the float32 GEMM runs in IEEE mode
(TF32 or bf16 matmul settings and autocast are switched off around it) and its guard uses the
rounding error of the mode actually in effect.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
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
_EXHAUSTIVE_CPU = 1 << 21  # float64 scores per exhaustive step (16 MB)
_RESCORE_CPU = 8192  # (token, codeword) pairs per float64 re-scoring chunk: stays in cache
# A GPU has no cache to fit and pays per kernel launch: larger blocks, fewer launches.
_CUDA_ROW_CHUNK = 2048  # score tile 2048 x _CUDA_COL_TILE floats (128 MB)
_CUDA_COL_TILE = 16384
_CUDA_WIN_ROWS = 512
_CUDA_EXHAUSTIVE = 1 << 25  # 256 MB of float64 scores per step
_CUDA_RESCORE = 1 << 18
# Relative error of one product in a float32 GEMM whose inputs are first cut to TF32 or bf16
# (rounded or truncated: one unit in the last kept place, 10 and 7 fraction bits).
_GEMM_INPUT_ERROR = {"ieee": 0.0, "none": 0.0, "tf32": 2.0**-10, "bf16": 2.0**-7}


def _sizes(device: torch.device) -> tuple[int, int, int, int, int]:
    """(row chunk, column tile, windowed rows, exhaustive step, re-scoring chunk) for a
    device; read at call time so that tests can shrink the CPU values."""
    if device.type == "cuda":
        return _CUDA_ROW_CHUNK, _CUDA_COL_TILE, _CUDA_WIN_ROWS, _CUDA_EXHAUSTIVE, _CUDA_RESCORE
    return _ROW_CHUNK, _COL_TILE, _WIN_ROWS, _EXHAUSTIVE_CPU, _RESCORE_CPU


def _matmul_backend(device: torch.device) -> object | None:
    """The torch.backends object whose ``fp32_precision`` rules float32 torch.mm on device."""
    if device.type == "cuda":
        return torch.backends.cuda.matmul
    if device.type == "cpu":
        return torch.backends.mkldnn.matmul  # "medium" matmul precision sets bf16 here
    return None


def _mode(backend: object | None) -> str | None:
    """A backend's fp32_precision ("ieee", "none", "tf32", "bf16"), None where unreadable
    (no backend, a torch before 2.9, a state torch refuses to report)."""
    try:
        return str(backend.fp32_precision) if backend is not None else None  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - any failure: treated as unknown
        return None


def _set_mode(backend: object, mode: str) -> None:
    try:
        backend.fp32_precision = mode  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - the guard reads what is in effect (gemm_input_error)
        pass


def gemm_input_error(device: str | torch.device) -> float:
    """Relative error a float32 GEMM on ``device`` adds to each product by cutting its inputs
    (0 in IEEE mode), as torch is configured now; an unknown mode counts as bf16."""
    mode = _mode(_matmul_backend(torch.device(device))) or "bf16"
    return _GEMM_INPUT_ERROR.get(mode, _GEMM_INPUT_ERROR["bf16"])


_MODE_LOCK = threading.Lock()
_MODE_USERS: dict[int, list] = {}  # id(backend) -> [searches running, mode to restore]


@contextmanager
def ieee_gemm(device: str | torch.device) -> Iterator[None]:
    """float32 GEMMs on ``device`` in IEEE precision and outside autocast while inside.

    ``torch.set_float32_matmul_precision("high")`` (TF32 on CUDA) or ``"medium"`` (bf16, also
    for CPU matmuls) would make the search's shortlist guard far wider: searches share the
    switch (the last one out restores the user's mode) and the guard reads the mode in effect
    anyway (gemm_input_error), so a thread that changes it meanwhile, or a torch that cannot
    switch, costs time, not exactness.
    """
    dev = torch.device(device)
    backend = _matmul_backend(dev)
    if _mode(backend) is None:
        backend = None
    if backend is not None:
        with _MODE_LOCK:
            users = _MODE_USERS.setdefault(id(backend), [0, None])
            if users[0] == 0:
                users[1] = _mode(backend)
                if users[1] not in ("ieee", "none"):
                    _set_mode(backend, "ieee")
            users[0] += 1
    try:
        with torch.autocast(dev.type, enabled=False):
            yield
    finally:
        if backend is not None:
            with _MODE_LOCK:
                users[0] -= 1
                if users[0] == 0 and users[1] not in ("ieee", "none", None):
                    _set_mode(backend, users[1])


@lru_cache(maxsize=8)
def _codebook_on(dim: int, size: int, seed: int, device: str) -> torch.Tensor:
    """The codebook on ``device``: built on the CPU (bit-identical everywhere), then copied."""
    cb = codebook_view(dim, size, seed)
    return cb if device == "cpu" else cb.to(device)


@lru_cache(maxsize=8)
def _search_tables(
    dim: int, size: int, seed: int, device: str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(K, 2G) matrix [c^2, c], per-dimension max c^2 and max |c| for the error bound."""
    if device != "cpu":
        return tuple(t.to(device) for t in _search_tables(dim, size, seed))  # type: ignore[return-value]
    cb = codebook_view(dim, size, seed)
    table = torch.cat([cb * cb, cb], dim=1).contiguous()
    return table, (cb * cb).amax(0), cb.abs().amax(0)


def _sum_terms(x: torch.Tensor) -> torch.Tensor:
    """Sum over the last dimension in one fixed pairwise order, the same on every device.

    torch.sum orders its additions by device and kernel, so the last bit of a float64 score
    could differ between CPU and GPU and flip a near-tie; elementwise IEEE adds in a fixed
    tree cannot (adding 0.0 to a lone odd term is exact)."""
    while x.shape[-1] > 1:
        n = x.shape[-1]
        half = (n + 1) // 2
        lo, hi = x[..., :half], x[..., half:]
        if n % 2:
            hi = torch.nn.functional.pad(hi, (0, 1))
        x = lo + hi
    return x[..., 0]


def _exact_scores(
    mu: torch.Tensor, std: torch.Tensor, cb: torch.Tensor, beta: float
) -> torch.Tensor:
    """Direct-form float64 scores of tokens (R, G) against codewords (R, J, G) or (J, G).

    Operation for operation the arithmetic of _rescore: the two must agree to the last bit."""
    c = cb.double()
    m = mu.double().unsqueeze(-2)
    s = std.double().unsqueeze(-2)
    d = (c - m) / s
    return _sum_terms(c * beta * c - d * d)


def _exhaustive(mu: torch.Tensor, std: torch.Tensor, cb: torch.Tensor, beta: float) -> torch.Tensor:
    """Exact argmax over the whole codebook, a few tokens at a time (bounded memory); first
    index on ties (torch.argmax's rule on every device)."""
    out = torch.empty(mu.shape[0], dtype=torch.int64, device=mu.device)
    step = max(1, _sizes(mu.device)[3] // (cb.shape[0] * cb.shape[1]))
    cb64 = cb.double()  # once, not per step
    for r in range(0, mu.shape[0], step):
        scores = _exact_scores(mu[r : r + step], std[r : r + step], cb64, beta)
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

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._bufs: dict[str, torch.Tensor] = {}

    def get(self, name: str, numel: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        buf = self._bufs.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != dtype:
            buf = self._bufs[name] = torch.empty(numel, dtype=dtype, device=self.device)
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

    One GEMM (in column tiles) gives approximate scores, a max over groups of ``block``
    columns finds the groups whose best could beat the approximate winner given a rigorous
    rounding bound for the GEMM as configured; every column of those groups is a candidate.
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
    col_tile = _sizes(m.device)[1]
    wt = -(-n_groups // -(-n_groups // max(1, col_tile // block)))  # groups per tile:
    # tiles of (nearly) equal width, no small remainder GEMM
    n_tiles = -(-n_groups // wt)
    tile = wt * block
    buf = scratch.get("tile", rows_here * min(tile, j_total))
    # read where the GEMMs run: ieee_gemm normally made it 0
    input_error = gemm_input_error(m.device)
    for c0 in range(0, j_total, tile):
        c1 = min(j_total, c0 + tile)
        w = (c1 - c0) // block
        part = buf[: rows_here * (c1 - c0)].view(rows_here, c1 - c0)
        torch.mm(coef, table_t[:, c0:c1], out=part)
        g0 = c0 // block
        torch.amax(part.view(rows_here, block, w), dim=1, out=bmax[:, g0 : g0 + w])
    top = bmax.amax(dim=1)
    # gamma_n for the length-2G dot product, plus slack for forming a and c^2 in float32, plus
    # twice the input cut of a TF32/bf16 GEMM (both factors of each product are cut).
    gamma = (2 * m.shape[1] + 6) * _F32_EPS + 2.01 * input_error
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
        block, device=m.device
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
) -> None:
    """out[t] = the candidate code of token t with the best float64 direct-form score, the
    smallest code on ties, for every token t named in tok (pairs tok[i], code[i]).

    Same arithmetic as _exact_scores, done in place in chunks (cache-sized on a CPU)."""
    if not tok.numel():
        return
    n, dim = mu.shape
    dev = mu.device
    chunk = _sizes(dev)[4]
    m64, s64 = mu.double(), std.double()
    exact = torch.empty(tok.numel(), dtype=torch.float64, device=dev)
    c32 = torch.empty(chunk, dim, device=dev)
    c, m, sq, d = (torch.empty(chunk, dim, dtype=torch.float64, device=dev) for _ in range(4))
    for i in range(0, tok.numel(), chunk):
        k = min(chunk, tok.numel() - i)
        t_i, j_i = tok[i : i + k], code[i : i + k]
        torch.index_select(cb, 0, j_i, out=c32[:k])
        c[:k].copy_(c32[:k])
        torch.index_select(m64, 0, t_i, out=m[:k])
        torch.index_select(s64, 0, t_i, out=d[:k])
        torch.sub(c[:k], m[:k], out=m[:k])
        m[:k].div_(d[:k])
        m[:k].mul_(m[:k])  # ((c - m) / s)^2
        torch.mul(c[:k], beta, out=sq[:k]).mul_(c[:k]).sub_(m[:k])  # c*beta*c - ...
        exact[i : i + k] = _sum_terms(sq[:k])
    best = torch.full((n,), float("-inf"), dtype=torch.float64, device=dev)
    best.scatter_reduce_(0, tok, exact, reduce="amax", include_self=True)
    is_best = exact == best[tok]
    never = torch.iinfo(torch.int64).max
    first = torch.full((n,), never, dtype=torch.int64, device=dev)
    # the smallest code among each token's best: no masked indexing, so no host sync
    first.scatter_reduce_(0, tok, torch.where(is_best, code, never), reduce="amin")
    out.copy_(torch.where(first < never, first, out))


@lru_cache(maxsize=16)  # 9 MB each at K=2^16, G=16; a trained model uses a few
def _sorted_by(
    dim: int, size: int, seed: int, d: int, device: str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The codebook ordered by coordinate d: (codebook indices, [c^2, c] columns (2G, K), keys).

    In this order a token's window along d is one contiguous slice of codewords. Sorted on
    the CPU (stable) and copied to other devices, without a CPU entry in the cache.
    """
    cb = codebook_view(dim, size, seed)
    order = torch.sort(cb[:, d], stable=True).indices
    keys = cb[order, d].double().contiguous()
    out = order, torch.index_select(_transposed(dim, size, seed), 1, order), keys
    return out if device == "cpu" else tuple(t.to(device) for t in out)  # type: ignore[return-value]


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
def _ranges(
    dim: int, size: int, seed: int, device: str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-coordinate min and max of the codebook, in float64."""
    cb = codebook_view(dim, size, seed)
    return cb.amin(0).double().to(device), cb.amax(0).double().to(device)


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
    or the shortlist is too long. Host syncs: a few per coordinate and one per block."""
    dev = mu.device
    where = str(dev)
    cb = _codebook_on(dim, size, seed, where)
    table, c2max, cmax = _search_tables(dim, size, seed, where)
    n = mu.shape[0]
    out = torch.full((n,), -1, dtype=torch.int64, device=dev)
    lower = _lower_bounds(mu, std, cb, table, beta)
    # Windows over a large share of the codebook cost more than the dense search (a block
    # scans the union of its windows).
    d, lo, hi = _windows(mu, std, _ranges(dim, size, seed, where), beta, lower, _WIN_MAX_SHARE)
    g = _WIN_GROUP
    win_rows = _sizes(dev)[2]
    toks, codes = [], []
    scratch = _Scratch(dev)
    useful = lo <= hi
    for dd in torch.unique(d[useful]).tolist():
        sel = torch.nonzero((d == dd) & useful).squeeze(1)
        if sel.numel() < _WINDOW_MIN_TOKENS:  # the sorted copy and blocks would not pay
            continue
        order, table_t, keys = _sorted_by(dim, size, seed, dd, where)
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
            for r0 in range(lo_r, hi_r, win_rows):
                r1 = min(hi_r, r0 + win_rows)
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
    row_chunk: int | None = None,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Exact GQ argmax for tokens mu, std of shape (N, dim); returns int64 indices (N,) on
    ``device`` (default: mu's), where the search runs; every device gives the same indices.

    Large codebooks first try each token's window (a provable superset of the winners, a few %
    of the codebook for a trained model's tokens); tokens no window prunes take the dense
    guarded GEMM over every codeword, and the rare token whose shortlist stays too long there
    is searched exhaustively in float64.
    """
    dev = torch.device(device) if device is not None else mu.device
    with torch.no_grad(), ieee_gemm(dev):
        return _search(mu.to(dev).float(), std.to(dev).float(), dim, size, seed, beta, row_chunk)


def _search(
    mu: torch.Tensor,
    std: torch.Tensor,
    dim: int,
    size: int,
    seed: int,
    beta: float,
    row_chunk: int | None,
) -> torch.Tensor:
    aligned = size - size % _BLOCK
    if aligned != size and aligned >= _WINDOW_MIN_K:
        return _search_with_tail(mu, std, dim, size, aligned, seed, beta, row_chunk)
    dev = mu.device
    where = str(dev)
    cb = _codebook_on(dim, size, seed, where)
    _, c2max, cmax = _search_tables(dim, size, seed, where)
    k = cb.shape[0]
    n = mu.shape[0]
    out = torch.full((n,), -1, dtype=torch.int64, device=dev)
    if k >= _WINDOW_MIN_K and k % _WIN_GROUP == 0 and n >= _WINDOW_MIN_TOKENS:
        finite = torch.nonzero(torch.isfinite(mu).all(1) & torch.isfinite(std).all(1))
        rows = finite.squeeze(1)
        if rows.numel():
            out[rows] = _search_windowed(mu[rows], std[rows], dim, size, seed, beta)
    block = _BLOCK if k % _BLOCK == 0 else 1
    table_t = _transposed(dim, size, seed, where)
    left = torch.nonzero(out < 0).squeeze(1)
    scratch = _Scratch(dev)
    step = row_chunk or _sizes(dev)[0]
    for r0 in range(0, left.numel(), step):
        rows = left[r0 : r0 + step]
        r_idx, cols = _scan(mu[rows], std[rows], beta, table_t, (c2max, cmax), block, scratch)
        sub = torch.full((rows.numel(),), -1, dtype=torch.int64, device=dev)
        _rescore(mu[rows], std[rows], cb, beta, r_idx, cols, sub)
        out[rows] = sub
    rest = torch.nonzero(out < 0).squeeze(1)
    if rest.numel():
        out[rest] = _exhaustive(mu[rest], std[rest], cb, beta)
    return out


def _search_with_tail(
    mu: torch.Tensor,
    std: torch.Tensor,
    dim: int,
    size: int,
    aligned: int,
    seed: int,
    beta: float,
    row_chunk: int | None,
) -> torch.Tensor:
    """Exact argmax over a codebook whose size is not a multiple of _BLOCK (a hand-picked
    --codebook-size): the windowed and blocked passes need aligned sizes, and the first
    ``aligned`` codewords are the codebook of that size, so search that prefix, then set its
    winner against the < 64 codewords of the tail by exact score. A tie keeps the prefix's
    (smaller) index, as the exhaustive argmax would; a row with any non-finite score there
    is searched exhaustively over the whole codebook (3.6 -> ~1 s for 2 048 tokens at K =
    300 001)."""
    out = _search(mu, std, dim, aligned, seed, beta, row_chunk)
    cb = _codebook_on(dim, size, seed, str(mu.device))
    best = _exact_scores(mu, std, cb[out].unsqueeze(1), beta).squeeze(1)
    tail = _exact_scores(mu, std, cb[aligned:], beta)
    tail_best, tail_idx = tail.max(dim=1)  # the first maximum of each row
    out = torch.where(tail_best > best, aligned + tail_idx, out)
    odd = torch.nonzero(~(torch.isfinite(best) & torch.isfinite(tail).all(dim=1))).squeeze(1)
    if odd.numel():
        out[odd] = _exhaustive(mu[odd], std[odd], cb, beta)
    return out


@lru_cache(maxsize=8)
def _transposed(dim: int, size: int, seed: int, device: str = "cpu") -> torch.Tensor:
    """[c^2, c] as (2G, K) columns: the GEMM reads column slices of it faster than rows.t()."""
    return _search_tables(dim, size, seed, device)[0].t().contiguous()


def search_naive(
    mu: torch.Tensor,
    std: torch.Tensor,
    dim: int,
    size: int = 65536,
    seed: int = 42,
    beta: float = 1.0,
    row_chunk: int = 16,
) -> torch.Tensor:
    """Reference broadcast search in float32 direct form (the upstream kernel formula): every
    token against all K codewords, ``row_chunk`` tokens at a time, on mu's device. The
    baseline of the benchmarks; float32 rounding makes it differ from search on near-ties."""
    cb = _codebook_on(dim, size, seed, str(mu.device))
    out = torch.empty(mu.shape[0], dtype=torch.int64, device=mu.device)
    with torch.no_grad():
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
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize encoder moments; returns (indices, zhat) in the reference layouts, on the
    moments' device. The search runs on ``device`` (default: the moments'), on the moments
    cast to float32 whatever the network's precision.

    bchw: moments (B, 2C, h, w) -> indices (B, NG, h, w), zhat (B, C, h, w)
    blc:  moments (B, L, 2C)    -> indices (B, L, NG),    zhat (B, L, C)

    The posterior's std = exp(logvar / 2) is always computed on the CPU: float32 exp differs
    by an ulp between CPU and CUDA libraries, and the same moments must give the same tokens.
    """
    x = to_blc(moments, layout)
    if not torch.isfinite(x).all():
        raise ValueError("moments contain NaN or infinity")
    dev = torch.device(device) if device is not None else moments.device
    with torch.inference_mode():
        mu, std = split_moments(moments.detach().float().cpu(), dim, layout)
        flat = search(mu, std, dim, size, seed, beta, device=dev)
    idx = grid_from_tokens(flat, moments.shape, dim, layout).to(moments.device)
    return idx, dequantize(idx, dim, size, seed, layout)


def dequantize(
    indices: torch.Tensor, dim: int, size: int = 65536, seed: int = 42, layout: Layout = "bchw"
) -> torch.Tensor:
    """Codeword latents for indices, on their device; the exact inverse of quantize's token
    layout (a gather: the same float32 values on every device)."""
    idx = indices.long()
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= size):
        raise ValueError(f"indices must lie in [0, {size})")
    cb = _codebook_on(dim, size, seed, str(idx.device))
    return latent_from_codewords(cb, idx, layout)
