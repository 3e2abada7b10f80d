"""Network hyper-parameters of both families, as plain dataclasses without torch.

Kept apart from the network modules so that model cards can be checked, costed and listed
(``gqtok models``, ``gqtok info``) without importing torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class UNetConfig:
    """Network hyper-parameters (the reference's ddconfig plus ``stem``)."""

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (32,)
    resolution: int = 256
    in_channels: int = 3
    out_ch: int = 3
    z_channels: int = 16
    double_z: bool = True
    stem: int = 1
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def downsample(self) -> int:
        """Image pixels per latent position along each axis."""
        return self.stem * 2 ** (len(self.ch_mult) - 1)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("extra")
        d["ch_mult"] = list(self.ch_mult)
        d["attn_resolutions"] = list(self.attn_resolutions)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UNetConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__ and k != "extra"}
        for key in ("ch_mult", "attn_resolutions"):
            if key in known:
                known[key] = tuple(int(v) for v in known[key])
        return cls(**known)



@dataclass(frozen=True)
class ViTConfig:
    """Hyper-parameters of the reference TransformerEncoder/Decoder (defaults: released)."""

    image_size: int = 256
    patch_size: int = 8
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    z_channels: int = 16
    double_z: bool = True
    dim_ffn_output: int = 3072
    tile_batch: int = 4  # tiles per network call; bounds memory, not part of the weights

    @property
    def downsample(self) -> int:
        """Image pixels per latent position along each axis."""
        return self.patch_size

    @property
    def grid(self) -> int:
        """Patches per tile side."""
        return self.image_size // self.patch_size

    @property
    def mlp_width(self) -> int:
        return int(self.width * self.mlp_ratio)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("tile_batch")
        if float(d["mlp_ratio"]).is_integer():
            d["mlp_ratio"] = int(d["mlp_ratio"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ViTConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        cfg = cls(**known)
        if cfg.image_size % cfg.patch_size or cfg.width % cfg.heads:
            raise ValueError(
                "image_size must be a multiple of patch_size and width a multiple of heads"
            )
        return cfg


CONFIGS: dict[str, type[UNetConfig] | type[ViTConfig]] = {"unet": UNetConfig, "vit": ViTConfig}


def network_config(card: dict[str, Any]) -> UNetConfig | ViTConfig:
    """The network hyper-parameters a model card describes (KeyError/TypeError/ValueError for a
    card that describes none)."""
    return CONFIGS[str(card.get("arch", "unet"))].from_dict(card["network"])
