"""Shift-tolerant LPIPS (ST-LPIPS, Ghildyal & Liu, ECCV 2022) as a frozen training loss.

Plain LPIPS needs torchvision's ImageNet backbones, which cannot be fetched offline; the PyPI
wheel ``stlpips-pytorch==0.0.2`` ships complete backbone + linear weights instead. Its Python code
imports IPython/torchvision, so the networks are rebuilt here and only the ``.pth`` files are read
(located with ``find_spec``, which does not import the package, and checked by sha256).

The backbones are AlexNet / VGG16 whose strided layers became "stride 1 + blur-pool": a fixed
[1, 2, 1]x[1, 2, 1] depthwise filter applied with reflection padding 2 and stride 2. Module
indices follow the original ``features`` numbering so the file's state-dict keys load as they are.
"""

from __future__ import annotations

import hashlib
import importlib.util
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

PACKAGE = "stlpips_pytorch"
PACKAGE_PIN = "stlpips-pytorch==0.0.2"
WEIGHTS: dict[str, tuple[str, str]] = {
    "alex": (
        "alex_shift_tolerant.pth",
        "b356b382f96010f77d085ee8343ecd9fd322d0a56e8de2b2d0549fafcad8b9ee",
    ),
    "vgg": (
        "vgg_shift_tolerant.pth",
        "44597da68f49c1837c100ff52299050f274d102eb102e5837178c79be6f0e250",
    ),
}
# LPIPS input normalisation (inputs in [-1, 1]); stored in the weight files as well.
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


class BlurDown(nn.Module):
    """Anti-aliased stride-2 subsampling: reflect-pad 2, depthwise binomial 3x3 blur, stride 2."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        a = torch.tensor([1.0, 2.0, 1.0])
        k = torch.outer(a, a)
        self.register_buffer("filt", (k / k.sum()).expand(channels, 1, 3, 3).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), self.filt, stride=2,
                        groups=x.shape[1])


def _slices(layers: list[nn.Module], ends: tuple[int, ...]) -> list[nn.Sequential]:
    """Cut a flat layer list into Sequentials that keep the global layer index as module name."""
    out, start = [], 0
    for end in ends:
        s = nn.Sequential()
        for i in range(start, end):
            s.add_module(str(i), layers[i])
        out.append(s)
        start = end
    return out


def _relu() -> nn.ReLU:
    return nn.ReLU(inplace=False)


class _Backbone(nn.Module):
    """Five feature slices; forward returns the output of each (the LPIPS taps)."""

    channels: tuple[int, ...]

    def _set(self, slices: list[nn.Sequential]) -> None:
        for i, s in enumerate(slices, 1):
            self.add_module(f"slice{i}", s)
        self.n = len(slices)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i in range(1, self.n + 1):
            x = getattr(self, f"slice{i}")(x)
            feats.append(x)
        return feats


class AlexST(_Backbone):
    """Shift-tolerant AlexNet (conv1 at stride 1, blur-pool after it and after each max-pool)."""

    channels = (64, 192, 384, 256, 256)

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(3, 64, 11, 1, 2), BlurDown(64), _relu(),  # 0-2
            nn.MaxPool2d(3, 1), BlurDown(64), nn.Conv2d(64, 192, 5, 1, 2), _relu(),  # 3-6
            nn.MaxPool2d(3, 1), BlurDown(192), nn.Conv2d(192, 384, 3, 1, 1), _relu(),  # 7-10
            nn.Conv2d(384, 256, 3, 1, 1), _relu(),  # 11-12
            nn.Conv2d(256, 256, 3, 1, 1), _relu(),  # 13-14
        ]
        self._set(_slices(layers, (3, 7, 11, 13, 15)))


class VGGST(_Backbone):
    """Shift-tolerant VGG16 features (each 2x2 max-pool at stride 1, then blur-pool)."""

    channels = (64, 128, 256, 512, 512)

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        plan = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
        for stage, (cout, n_conv) in enumerate(plan):
            if stage:
                layers += [nn.MaxPool2d(2, 1), BlurDown(cin)]
            for _ in range(n_conv):
                layers += [nn.Conv2d(cin, cout, 3, 1, 1), _relu()]
                cin = cout
        self._set(_slices(layers, (4, 10, 18, 26, 34)))


def weights_file(net: str) -> Path:
    """Path of the installed package's weight file, without importing the package."""
    if net not in WEIGHTS:
        raise ValueError(f"unknown ST-LPIPS network {net!r} (choose from {sorted(WEIGHTS)})")
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"ST-LPIPS weights need the {PACKAGE_PIN} wheel: pip install --no-deps {PACKAGE_PIN}"
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    return root / "weights" / "vST0.0" / WEIGHTS[net][0]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@lru_cache(maxsize=4)
def _verified_state(path: Path, expected: str) -> dict[str, torch.Tensor]:
    digest = _sha256(path)
    if digest != expected:
        raise ValueError(f"{path} has sha256 {digest}, expected {expected}")
    return torch.load(path, map_location="cpu", weights_only=True)


class STLPIPS(nn.Module):
    """Frozen ST-LPIPS distance d(x, y) per image, inputs (B, 3, H, W) in [-1, 1]."""

    def __init__(self, net: str = "alex", weights: Path | None = None) -> None:
        super().__init__()
        self.net_name = net
        self.net = AlexST() if net == "alex" else VGGST() if net == "vgg" else None
        if self.net is None:
            raise ValueError(f"unknown ST-LPIPS network {net!r} (choose from {sorted(WEIGHTS)})")
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1))
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in self.net.channels)
        path = weights if weights is not None else weights_file(net)
        self.load_reference(_verified_state(Path(path), WEIGHTS[net][1]))
        self.requires_grad_(False)
        self.eval()

    def load_reference(self, ref: dict[str, torch.Tensor]) -> None:
        """Load the package's state dict: backbone keys match, the rest are renamed."""
        state: dict[str, torch.Tensor] = {}
        for key, value in ref.items():
            if key.startswith("lin"):  # lin{k}.model.1.weight (index 0 was the dropout)
                state[f"lins.{key[3:key.index('.')]}.weight"] = value
            elif key.startswith("scaling_layer."):
                state[key.split(".", 1)[1]] = value.reshape(1, 3, 1, 1)
            else:
                state[key] = value
        self.load_state_dict(state, strict=True)

    def train(self, mode: bool = True) -> STLPIPS:
        """Stay in eval mode: the metric is fixed (and the reference's dropout is skipped)."""
        return super().train(False)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Unit-normalised taps of one side; lets a caller reuse a fixed reference image's."""
        return [_unit(f) for f in self.net((x - self.shift) / self.scale)]

    def compare(self, fx: list[torch.Tensor], fy: list[torch.Tensor]) -> torch.Tensor:
        total = fx[0].new_zeros(fx[0].shape[0])
        for lin, a, b in zip(self.lins, fx, fy, strict=True):
            total = total + lin((a - b) ** 2).mean(dim=(1, 2, 3))
        return total

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Distance per image, shape (B,)."""
        return self.compare(self.features(x), self.features(y))


def _unit(f: torch.Tensor) -> torch.Tensor:
    """Unit-normalise along channels; rsqrt(s + 1e-20) keeps the gradient finite at zero."""
    return f * torch.rsqrt(f.pow(2).sum(dim=1, keepdim=True) + 1e-20)


def available(net: str = "alex") -> bool:
    """Whether the weight file for net is installed (no hash check)."""
    try:
        return weights_file(net).is_file()
    except (FileNotFoundError, ValueError):
        return False
