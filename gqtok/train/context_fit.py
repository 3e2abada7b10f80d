"""Fitting a context entropy model (gqtok.format.context) to a model's tokens.

Why a separate, cheap step: the context model changes only how tokens are coded, not which
tokens an image gets, so it is fitted after the network is trained, on the tokens of the
training photos, in a minute or two on a CPU. The network is trained in float (torch), then
every weight becomes an integer so that coding is bit-exact everywhere; the integer model's
bits on the held-out photos are what the card records.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gqtok.format import context as ctx
from gqtok.format import entropy as ent
from gqtok.format.prior import PriorParams, coordinate_bins, fit_values
from gqtok.model import Model
from gqtok.train.hardware import hardware_string

LN2 = math.log(2.0)
LOGIT_UNITS = 16 / LN2  # integer logits are in 1/16 bit; float logits in nats


@dataclass
class FitConfig:
    """Settings of ``gqtok fit-context`` (recorded in the card)."""

    bins: int = 32
    hidden: int = 128
    epochs: float = 6.0
    batch: int = 1024
    lr: float = 3e-3
    seed: int = 0


@dataclass
class FitResult:
    params: ctx.ContextParams
    card: dict[str, Any]
    static: ent.EntropyModel
    per_photo: list[dict[str, float]] = field(default_factory=list)
    prior_card: dict[str, Any] | None = None


class _Net(torch.nn.Module):
    """The float twin of the integer network: two ReLU layers, a head for a and a 1024-way
    head for b of which the row of the true a is used."""

    def __init__(self, inputs: int, hidden: int, bins: int) -> None:
        super().__init__()
        self.l1 = torch.nn.Linear(inputs, hidden)
        self.l2 = torch.nn.Linear(hidden, hidden)
        self.ha = torch.nn.Linear(hidden, bins)
        self.hb = torch.nn.Linear(hidden, bins * bins)
        self.bins = bins

    def hidden_acts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h1 = torch.relu(self.l1(x))
        return h1, torch.relu(self.l2(h1))

    def bits(self, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        _, h2 = self.hidden_acts(x)
        la = self.ha(h2)
        lb = self.hb(h2).view(-1, self.bins, self.bins)[torch.arange(a.numel()), a]
        ce = torch.nn.functional.cross_entropy
        return (ce(la, a, reduction="none") + ce(lb, b, reduction="none")) / LN2


def choose_dims(feats: np.ndarray, targets: np.ndarray, stride: int = 7) -> tuple[int, int]:
    """The two codeword dimensions best predicted (R^2) by a linear map of the features."""
    x = np.c_[feats[::stride], np.ones(len(feats[::stride]))]
    y = targets[::stride]
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    r2 = 1 - ((y - x @ coef) ** 2).mean(0) / np.maximum(y.var(0), 1e-12)
    top = np.argsort(-r2, kind="stable")
    return int(top[0]), int(top[1])


def _scale_shift(max_abs: float, factor: float) -> int:
    """The largest shift s with max_abs * factor * 2^s within the int16 weight range."""
    if max_abs * factor <= 0:
        return 0
    s = math.floor(math.log2((ctx._WEIGHT_LIMIT - 1) / (max_abs * factor)))
    return max(0, min(ctx.MAX_SHIFT, s))


def quantize_net(net: _Net, sample: torch.Tensor) -> dict[str, np.ndarray]:
    """Integer weights, biases and shifts of one group's network (module docstring of
    gqtok.format.context): activations scaled to 0..255, logits to 1/16 bit."""
    with torch.no_grad():
        h1, h2 = net.hidden_acts(sample / ctx.FEATURE_SCALE)
        a1 = ctx.ACT_MAX / max(float(torch.quantile(h1.flatten()[:1_000_000], 0.9999)), 1e-6)
        a2 = ctx.ACT_MAX / max(float(torch.quantile(h2.flatten()[:1_000_000], 0.9999)), 1e-6)
    out: dict[str, np.ndarray] = {}
    shifts = []

    def layer(lin: torch.nn.Linear, in_scale: float, out_scale: float, wname: str, bname: str):
        w = lin.weight.detach().double().T.numpy()  # (in, out)
        b = lin.bias.detach().double().numpy()
        f = out_scale / in_scale
        s = _scale_shift(float(np.abs(w).max()), f)
        out[wname] = np.rint(w * f * 2.0**s).astype(np.int16)
        # + 2^(s-1): floor of the division then rounds to nearest
        half = 2.0 ** (s - 1) if s else 0.0
        bias = np.rint(b * out_scale * 2.0**s + half)
        out[bname] = np.clip(bias, -ctx._BIAS_LIMIT + 1, ctx._BIAS_LIMIT - 1).astype(np.int32)
        shifts.append(s)

    layer(net.l1, ctx.FEATURE_SCALE, a1, "w1", "b1")
    layer(net.l2, a1, a2, "w2", "b2")
    layer(net.ha, a2, LOGIT_UNITS, "wa", "ba")
    layer(net.hb, a2, LOGIT_UNITS, "wb", "bb")
    out["shifts"] = np.array(shifts, dtype=np.int32)
    return out


def static_table(model: Model, train: Sequence[np.ndarray]) -> ent.EntropyModel:
    """The model's frequency table, or one counted from ``train`` where it has none (a model
    converted to other quantizer settings): the position inside a cell is coded with it."""
    if model.entropy.kind == "frequency":
        return model.entropy
    counts = np.zeros(model.quant.size, dtype=np.int64)
    for g in train:
        counts += np.bincount(g.reshape(-1), minlength=model.quant.size)
    return ent.from_counts(counts)


def fit_context(
    model: Model,
    train: Sequence[np.ndarray],
    val: Sequence[np.ndarray],
    cfg: FitConfig,
    log: Callable[[str], None] = print,
    static: ent.EntropyModel | None = None,
) -> FitResult:
    """Fit a context model to token grids (NG, h, w) of training photos; measure it on val
    (against ``static``, by default ``static_table(model, train)``)."""
    from gqtok.quant.codebook import codebook_view

    t0 = time.perf_counter()
    static = static or static_table(model, train)
    torch.manual_seed(cfg.seed)
    q = model.quant
    cb = codebook_view(q.dim, q.size, q.seed).numpy()
    feats_table = ctx.feature_table(cb)
    ng = model.groups
    if cfg.bins * cfg.bins > q.size:
        fits = math.isqrt(q.size)
        raise ValueError(
            f"{cfg.bins}^2 cells exceed the codebook size K={q.size} (use --bins {fits} or less)"
        )
    xs = [ctx.grid_features(feats_table, g) for g in train]
    ys = [g.reshape(ng, -1) for g in train]
    arrays: dict[str, list[np.ndarray]] = {k: [] for k in ctx.LAYER_NAMES}
    for k in range(ng):
        x = np.concatenate([f[k] for f in xs]).astype(np.float32)
        y = np.concatenate([t[k] for t in ys])
        dims = choose_dims(x[:, : len(ctx.NEIGHBOURS) * (ng * q.dim + 1)], cb[y])
        cell = ctx.cell_table(cb, dims, cfg.bins)
        a, b = np.divmod(cell[y], cfg.bins)
        net = _Net(x.shape[1], cfg.hidden, cfg.bins)
        xt = torch.from_numpy(x)
        at, bt = torch.from_numpy(a), torch.from_numpy(b)
        steps = max(1, int(cfg.epochs * len(xt) / cfg.batch))
        opt = torch.optim.Adam(net.parameters(), cfg.lr / 10)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=steps)
        gen = torch.Generator().manual_seed(cfg.seed + k)
        for step in range(steps):
            i = torch.randint(0, len(xt), (cfg.batch,), generator=gen)
            loss = net.bits(xt[i] / ctx.FEATURE_SCALE, at[i], bt[i]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if step % 1000 == 0 or step == steps - 1:
                log(f"group {k}: step {step + 1}/{steps}, cell bits {loss.item():.3f}")
        sample = xt[torch.randint(0, len(xt), (20000,), generator=gen)]
        qn = quantize_net(net, sample)
        for name in ("w1", "b1", "w2", "b2", "wa", "ba", "wb", "bb", "shifts"):
            arrays[name].append(qn[name])
        arrays["dims"].append(np.array(dims, dtype=np.int32))
    params = ctx.ContextParams(cfg.bins, {k: np.stack(v) for k, v in arrays.items()})
    coder = ctx.ContextCoder(params, cb, static)
    per_photo = []
    for g in val:
        n = g.size
        bits = static.ideal_bits(g.reshape(-1)), coder.ideal_bits(g)
        per_photo.append({"tokens": n, "static_bits": bits[0] / n, "context_bits": bits[1] / n})
    tok = sum(p["tokens"] for p in per_photo)
    static_bits = sum(p["static_bits"] * p["tokens"] for p in per_photo) / max(1, tok)
    context = sum(p["context_bits"] * p["tokens"] for p in per_photo) / max(1, tok)
    card = {
        "kind": "mlp-cells",
        "bins": cfg.bins,
        "hidden": cfg.hidden,
        "dims": [list(map(int, d)) for d in params.arrays["dims"]],
        "neighbours": len(ctx.NEIGHBOURS),
        "order": f"wavefront x+{ctx.SLOPE}y",
        "fitted": {
            "train_photos": len(train),
            "train_tokens": int(sum(g.size for g in train)),
            "val_photos": len(val),
            "val_tokens": int(tok),
            "val_static_bits": round(static_bits, 4),
            "val_context_bits": round(context, 4),
            "epochs": cfg.epochs,
            "batch": cfg.batch,
            "lr": cfg.lr,
            "seed": cfg.seed,
            "wall_time_s": round(time.perf_counter() - t0, 1),
        },
    }
    log(f"val: static {static_bits:.3f} -> context {context:.3f} bits/token")
    return FitResult(params, card, static, per_photo)


def photo_tokens(
    model: Model, folder: Path, max_side: int = 0, log: Callable[[str], None] = print
) -> list[np.ndarray]:
    """The (NG, h, w) token grids of every photo in ``folder`` (sorted), as gqtok encodes
    them (whole photos, at most ``max_side`` on the longer side; 0 keeps their size)."""
    from gqtok.codec.engine import encode_arrays
    from gqtok.train.data import list_images, load_photo

    paths = list_images(folder)
    if not paths:
        raise FileNotFoundError(f"no images under {folder}")
    grids = []
    for i, path in enumerate(paths):
        tok = encode_arrays(model, [load_photo(path, max_side)])[0]
        grids.append(tok.indices.numpy().astype(np.int64))
        if (i + 1) % 50 == 0 or i + 1 == len(paths):
            log(f"tokenized {i + 1}/{len(paths)} photos of {folder}")
    return grids


def fit_and_save(
    model: Model,
    train_dir: Path,
    val_dir: Path | None,
    output: Path,
    cfg: FitConfig,
    max_side: int = 0,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    prior_photos: int = 40,
) -> FitResult:
    """``gqtok fit-context``: tokenize the photos, fit, and write the model file with the
    context model added (every other tensor unchanged)."""
    from gqtok.errors import OutputError
    from gqtok.model import save_with_context

    if output.exists() and not overwrite:  # before the work, not after it
        raise OutputError("exists (use --overwrite)", str(output))
    train = photo_tokens(model, train_dir, max_side, log)
    if val_dir is not None:
        val = photo_tokens(model, val_dir, max_side, log)
    else:  # no held-out photos: report on the last tenth of the training ones
        val = train[-max(1, len(train) // 10) :]
    result = fit_context(model, train, val, cfg, log)
    prior = None
    if prior_photos > 0:
        picks, vpicks = prior_photos_of(train_dir, val_dir, prior_photos)
        prior, result.prior_card = fit_prior(model, picks, vpicks, log=log)
    result.card["fitted"]["train_dir"] = str(train_dir)
    result.card["fitted"]["val_dir"] = str(val_dir) if val_dir else None
    result.card["fitted"]["max_side"] = max_side
    result.card["fitted"]["hardware"] = hardware_string(torch.device("cpu"))
    save_with_context(
        model, result.params, result.card, output, overwrite=overwrite, static=result.static,
        prior=prior, prior_card=result.prior_card,
    )  # fmt: skip
    return result


LADDER = tuple(1 << b for b in range(6, 21, 2))  # K = 64 .. 2^20, the prior's fitted rows
SHRINK = (0.0, 0.125, 0.25, 0.5, 0.75, 1.0)  # factors tried per K (see fit_prior)


def fit_prior(
    model: Model,
    train: Sequence[np.ndarray],
    val: Sequence[np.ndarray],
    ladder: Sequence[int] = LADDER,
    log: Callable[[str], None] = print,
) -> tuple[PriorParams, dict[str, Any]]:
    """The parametric prior over codebook sizes (gqtok.format.prior) from the tokens of RGB
    photos ``train`` at each ladder K (the network runs once per photo), measured on ``val``:
    bits per token under the prior and under the uniform code it replaces."""
    from gqtok.codec.engine import tokens_by_model
    from gqtok.codec.rate import at_size
    from gqtok.quant.codebook import codebook_view

    q = model.quant
    sizes = [k for k in ladder if k * q.dim <= 1 << 24]

    def grids(photos: Sequence[np.ndarray]) -> list[dict[int, np.ndarray]]:
        out = []
        for rgb in photos:
            tokens_at = tokens_by_model(model, rgb)
            out.append({k: tokens_at(at_size(model, k, coarse=False)).indices.numpy()
                        for k in sizes})
        return out

    tr = grids(train)
    # a product of per-coordinate marginals is overconfident where few codewords are used
    # (small K): shrink each K's values towards the uniform code by the factor that codes a
    # quarter of the training photos, held out from the fit, best (0: uniform, never worse)
    tune, fit = tr[: max(1, len(tr) // 4)], tr[max(1, len(tr) // 4) :] or tr
    values = []
    for k in sizes:
        cb = codebook_view(q.dim, k, q.seed).numpy()
        counts = np.zeros(k, dtype=np.int64)
        for g in fit:
            counts += np.bincount(g[k].reshape(-1), minlength=k)
        full = fit_values(coordinate_bins(cb), counts)
        tuned = np.concatenate([g[k].reshape(-1) for g in tune])

        def cost(alpha: float, full=full, tuned=tuned, cb=cb) -> float:  # noqa: ANN001
            v = np.rint(alpha * full).astype(np.int64)
            p = PriorParams({"ladder": np.array([cb.shape[0]]), "values": v[None]})
            return p.table(cb).ideal_bits(tuned)

        alpha = min(SHRINK, key=cost)
        values.append(np.rint(alpha * full).astype(np.int64))
        log(f"prior: K={k} fitted on {int(counts.sum())} tokens, shrink {alpha}")
    params = PriorParams(
        {"ladder": np.array(sizes, dtype=np.int64), "values": np.stack(values).astype(np.int64)}
    )
    params.check(q.dim)
    held = grids(val)
    report = {}
    for k in sizes:  # one table per K for all held-out photos
        table = params.table(codebook_view(q.dim, k, q.seed).numpy())
        tokens = np.concatenate([g[k].reshape(-1) for g in held])
        report[str(k)] = {
            "prior_bits": round(table.ideal_bits(tokens) / max(1, tokens.size), 4),
            "uniform_bits": round(math.log2(k), 4),
        }
    for k, v in report.items():
        log(f"prior: K={k}: {v['prior_bits']:.3f} bits/token (uniform {v['uniform_bits']:.0f})")
    return params, {
        "ladder": sizes, "kind": "coordinate-bins", "train_photos": len(train),
        "val_photos": len(val),
        "val_bits": report,
    }  # fmt: skip


def prior_photos_of(
    train_dir: Path, val_dir: Path | None, count: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``count`` training photos spread over the sorted list and the held-out ones (or the
    last two training photos), shrunk to 512 px: the K = 2^20 search is the slow part."""
    from gqtok.train.data import list_images, load_photo

    paths = list_images(train_dir)
    if not paths:
        raise FileNotFoundError(f"no images under {train_dir}")
    step = max(1, len(paths) // max(1, count))
    vpaths = list_images(val_dir) if val_dir is not None else paths[-2:]
    return [load_photo(p, 512) for p in paths[::step][:count]], [
        load_photo(p, 512) for p in vpaths
    ]


def fit_prior_and_save(
    model: Model,
    train_dir: Path,
    val_dir: Path | None,
    output: Path,
    photos: int = 40,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """``gqtok fit-context --prior-only``: add (or refit) the prior over codebook sizes of a
    model that has its context model already, keeping that model as it is."""
    from gqtok.errors import ModelError, OutputError
    from gqtok.model import save_with_context

    if output.exists() and not overwrite:
        raise OutputError("exists (use --overwrite)", str(output))
    if model.context is None:
        raise ModelError("--prior-only needs a model with a context model", model.source)
    train, val = prior_photos_of(train_dir, val_dir, photos)
    prior, prior_card = fit_prior(model, train, val, log=log)
    ccard = {
        k: v
        for k, v in model.card["entropy"]["context"].items()
        if k not in ("bins", "fingerprint")
    }
    save_with_context(
        model, model.context, ccard, output, overwrite=overwrite, prior=prior,
        prior_card=prior_card,
    )  # fmt: skip
    return prior_card
