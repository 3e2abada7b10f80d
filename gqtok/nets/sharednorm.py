"""GroupNorm with statistics shared by every window of one image.

GroupNorm normalises with the mean and variance of the whole feature map, so a network run on
windows of an image normalises each window differently, and the windows disagree where they
meet (seams, tone shifts). Measuring the statistics once and giving the same numbers to every
window removes that: the windowed network then computes one translation-equivariant function,
and overlapping windows agree up to the receptive-field border effects that blending hides.

Both helpers return a *clone* of the module that shares its parameter tensors, so the model
itself is never patched and stays safe to use from other threads.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class NormStats:
    """(mean, var) per group for each GroupNorm, keyed by its position in ``module.modules()``
    (not call order: the decoder runs its levels in reverse); float64 on the CPU."""

    layers: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


def _clone_sharing(module: nn.Module) -> nn.Module:
    """Structural copy whose parameters and buffers are the original tensors (no copy)."""
    memo: dict[int, object] = {id(t): t for t in module.parameters()}
    memo.update({id(t): t for t in module.buffers()})
    return copy.deepcopy(module, memo)


def group_norms(module: nn.Module) -> list[nn.GroupNorm]:
    return [m for m in module.modules() if isinstance(m, nn.GroupNorm)]


def _measure(mod: nn.GroupNorm, sink: NormStats, key: int, x: torch.Tensor) -> torch.Tensor:
    if x.shape[0] != 1:
        raise ValueError("statistics are measured on one image at a time")
    if key in sink.layers:
        raise ValueError("a GroupNorm ran twice in one measuring pass")
    # float32 statistics also under bf16 autocast (a no-op for float32 activations)
    flat = x.detach().float().reshape(mod.num_groups, -1)
    var, mean = torch.var_mean(flat, dim=1, correction=0)
    sink.layers[key] = (mean.double().cpu(), var.double().cpu())
    return F.group_norm(x, mod.num_groups, mod.weight, mod.bias, mod.eps)


def _apply(
    mod: nn.GroupNorm, mean: torch.Tensor, var: torch.Tensor, x: torch.Tensor
) -> torch.Tensor:
    c, g = x.shape[1], mod.num_groups
    inv = torch.rsqrt(var + mod.eps).to(x.device, torch.float32)
    scale = inv.repeat_interleave(c // g)
    shift = -mean.to(x.device, torch.float32).repeat_interleave(c // g) * scale
    if mod.affine:
        scale, shift = scale * mod.weight, shift * mod.weight + mod.bias
    return torch.addcmul(shift.view(1, c, 1, 1), x, scale.view(1, c, 1, 1))


def measuring(module: nn.Module) -> tuple[nn.Module, NormStats]:
    """A clone that records every GroupNorm's statistics while running normally."""
    clone = _clone_sharing(module)
    stats = NormStats()
    for key, mod in enumerate(group_norms(clone)):
        mod.forward = lambda x, mod=mod, key=key: _measure(mod, stats, key, x)  # type: ignore[method-assign]
    return clone, stats


def sharing(module: nn.Module, stats: NormStats) -> nn.Module:
    """A clone whose GroupNorm layers normalise with the given statistics instead of their own."""
    clone = _clone_sharing(module)
    mods = group_norms(clone)
    if sorted(stats.layers) != list(range(len(mods))):
        raise ValueError(f"{len(stats.layers)} measured layers for {len(mods)} GroupNorms")
    for key, mod in enumerate(mods):
        mean, var = stats.layers[key]
        mod.forward = lambda x, mod=mod, m=mean, v=var: _apply(mod, m, v, x)  # type: ignore[method-assign]
    return clone
