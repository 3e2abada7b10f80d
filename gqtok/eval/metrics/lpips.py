"""Learned perceptual distances on 8-bit RGB: ST-LPIPS (AlexNet, VGG) and plain LPIPS (AlexNet).

ST-LPIPS is fully offline: gqtok.nets.stlpips rebuilds it from the ``stlpips-pytorch`` wheel.
Plain LPIPS (Zhang et al. 2018, v0.1) needs torchvision's ImageNet AlexNet, which no registry
here ships: it is used only when ``alexnet-owt-7be5be79.pth`` is already in the torch hub cache
(``$TORCH_HOME/hub/checkpoints``), together with the 6 KB linear heads from the ``lpips`` wheel.
Otherwise the metric is reported as unavailable, with the reason: never a substitute number.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gqtok.eval.metrics.weights import MetricUnavailable, WeightsMismatch, package_dir, verify

HUB_FILE = "alexnet-owt-7be5be79.pth"
HUB_SHA256_PREFIX = "7be5be79"  # torch hub names files by their sha256 prefix and checks it
LIN_PIN = "lpips==0.1.4"
LIN_FILE = ("weights", "v0.1", "alex.pth")
LIN_SHA256 = "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0"
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)

Distance = Callable[[np.ndarray, np.ndarray], float]


def backbone_file() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / HUB_FILE


def linear_file() -> Path:
    return package_dir("lpips", LIN_PIN).joinpath(*LIN_FILE)


def lpips_unavailable() -> str | None:
    """Why plain LPIPS cannot run here, or None if both weight files are present."""
    if not backbone_file().is_file():
        return (
            f"torchvision's AlexNet ({HUB_FILE}) is not in the torch hub cache"
            f" {backbone_file().parent}"
        )
    try:
        if not linear_file().is_file():
            return f"{linear_file()} is missing"
    except MetricUnavailable as e:
        return str(e)
    return None


class AlexNetLPIPS(nn.Module):
    """LPIPS v0.1 with torchvision's AlexNet: taps after each of the five ReLU'd conv layers."""

    channels = (64, 192, 384, 256, 256)

    def __init__(self, backbone: Path | None = None, linear: Path | None = None) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(),  # 0-1
            nn.MaxPool2d(3, 2), nn.Conv2d(64, 192, 5, 1, 2), nn.ReLU(),  # 2-4
            nn.MaxPool2d(3, 2), nn.Conv2d(192, 384, 3, 1, 1), nn.ReLU(),  # 5-7
            nn.Conv2d(384, 256, 3, 1, 1), nn.ReLU(),  # 8-9
            nn.Conv2d(256, 256, 3, 1, 1), nn.ReLU(),  # 10-11
        )  # fmt: skip
        self.taps = (1, 4, 7, 9, 11)
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in self.channels)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1))
        why = lpips_unavailable() if backbone is None or linear is None else None
        if why:
            raise MetricUnavailable(why)
        bb = verify(Path(backbone or backbone_file()), HUB_SHA256_PREFIX)
        lin = verify(Path(linear or linear_file()), LIN_SHA256)
        ref = torch.load(bb, map_location="cpu", weights_only=True)
        feats = {k[len("features.") :]: v for k, v in ref.items() if k.startswith("features.")}
        heads = torch.load(lin, map_location="cpu", weights_only=True)
        try:
            self.features.load_state_dict(feats, strict=True)
            for i, layer in enumerate(self.lins):
                layer.weight.data.copy_(heads[f"lin{i}.model.1.weight"])
        except (KeyError, RuntimeError) as e:
            raise WeightsMismatch(f"unexpected LPIPS weight layout ({e})") from None
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Distance per image (B,) for inputs in [-1, 1]."""
        fx, fy = (x - self.shift) / self.scale, (y - self.shift) / self.scale
        total = x.new_zeros(x.shape[0])
        k = 0
        for i, layer in enumerate(self.features):
            fx, fy = layer(fx), layer(fy)
            if i in self.taps:
                nx = fx / (fx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                ny = fy / (fy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                total = total + self.lins[k]((nx - ny) ** 2).mean(dim=(1, 2, 3))
                k += 1
        return total


def _unit_range(rgb: np.ndarray, device: torch.device) -> torch.Tensor:
    x = torch.from_numpy(np.array(rgb, dtype=np.float32)).permute(2, 0, 1)[None]
    return (x / 127.5 - 1.0).to(device)


def _wrap_cached(net: Any, device: str | torch.device) -> Distance:
    """Like _wrap, but the reference side's features are kept for the next call.

    compare/eval measure one original against many reconstructions; the backbone pass over
    the original is half the cost (seconds per photo for ST-LPIPS's stride-1 layers).
    """
    dev = torch.device(device)
    net.to(dev)
    memo: dict[bytes, list[torch.Tensor]] = {}

    @torch.inference_mode()
    def distance(a: np.ndarray, b: np.ndarray) -> float:
        key = hashlib.blake2b(np.ascontiguousarray(a).data, digest_size=16).digest()
        key += repr(a.shape).encode()
        if key not in memo:
            memo.clear()
            memo[key] = net.features(_unit_range(a, dev))
        return float(net.compare(memo[key], net.features(_unit_range(b, dev)))[0])

    return distance


def _wrap(net: nn.Module, device: str | torch.device) -> Distance:
    dev = torch.device(device)
    net.to(dev)

    @torch.inference_mode()
    def distance(a: np.ndarray, b: np.ndarray) -> float:
        return float(net(_unit_range(a, dev), _unit_range(b, dev))[0])

    return distance


def load_distance(
    name: str, device: str | torch.device = "cpu", weights: Path | None = None
) -> Distance:
    """A d(a, b) for (H, W, 3) uint8 images: ``stlpips_alex``, ``stlpips_vgg`` or ``lpips``.

    Raises MetricUnavailable when the weights are not installed, WeightsMismatch when they
    fail their sha256 check.
    """
    if name == "lpips":
        return _wrap(AlexNetLPIPS(), device)
    if name not in ("stlpips_alex", "stlpips_vgg"):
        raise ValueError(f"unknown perceptual metric {name!r}")
    from gqtok.nets import stlpips as perceptual

    net = name.split("_", 1)[1]
    try:
        path = weights if weights is not None else perceptual.weights_file(net)
        return _wrap_cached(perceptual.STLPIPS(net, weights=path), device)
    except FileNotFoundError as e:
        raise MetricUnavailable(str(e)) from None
    except ValueError as e:
        raise WeightsMismatch(str(e)) from None
