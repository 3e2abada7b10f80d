"""Reference checkpoints (the paper's released ``.ckpt`` files) as gqtok models.

A Lightning checkpoint carries the network (``encoder.*``, ``decoder.*``) next to training
state (``loss.*``, optimizer moments...). Only the network tensors are kept. Nothing in the
file says which network config produced it, so the config is read off the tensor names and
shapes; the quantizer settings (G, K, seed, beta) cannot be, and are passed in by the caller
(gqtok.zoo.load takes them from the registry entry of the file's name or from options).
Pickles are loaded with ``weights_only=True``: a file that needs more than that could run code
on load, so it is refused unless trusted explicitly.
"""

from __future__ import annotations

import math
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from gqtok.errors import ModelError, first_line
from gqtok.format.card import CARD_VERSION, DEFAULT_LAYOUT
from gqtok.model import Model, build_from_state, save_model
from gqtok.nets.config import UNetConfig, ViTConfig
from gqtok.quant.config import QuantizerConfig

NETWORK_PREFIXES = ("encoder.", "decoder.")
WRAPPER_PREFIXES = ("", "module.", "model.")  # DDP / wrapper modules around the autoencoder


def _unsafe_globals(path: Path) -> list[str]:
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # noqa: BLE001 - legacy (non-zip) files cannot be scanned
        return []


def load_torch_file(path: Path, trust_pickle: bool) -> Any:
    """torch.load restricted to tensors and plain containers unless the user trusts the file."""
    mmap = zipfile.is_zipfile(path)  # maps big checkpoints instead of reading them into memory
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        # Refused objects are named "GLOBAL module.Class" in the message (also in legacy files).
        names = _unsafe_globals(path) or re.findall(r"GLOBAL ([\w.]+)", str(exc))
        if not names:
            detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(exc))
            why = detail.group(1).strip() if detail else first_line(exc)
            raise ModelError(
                f"cannot read checkpoint (corrupt or not a torch file: {why})", str(path)
            ) from None
        if not trust_pickle:
            what = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            raise ModelError(
                f"checkpoint holds pickled objects beyond tensors ({what}); loading it can run"
                " code: pass --trust-pickle (trust_pickle=True) only if you trust the file",
                str(path),
            ) from None
    except Exception as exc:  # noqa: BLE001 - truncated zip, not a pickle, ...
        raise ModelError(f"cannot read checkpoint ({first_line(exc)})", str(path)) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    except Exception as exc:  # noqa: BLE001 - the trusted pickle may need missing modules
        raise ModelError(f"cannot read checkpoint ({first_line(exc)})", str(path)) from None


def network_tensors(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """The ``encoder.*`` / ``decoder.*`` tensors (float32) of a checkpoint or state dict."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ModelError(f"checkpoint holds a {type(obj).__name__}, not a state dict", source)
    for wrapper in WRAPPER_PREFIXES:
        picked = {
            k[len(wrapper) :]: v
            for k, v in obj.items()
            if isinstance(k, str)
            and k.startswith(wrapper)
            and k[len(wrapper) :].startswith(NETWORK_PREFIXES)
        }
        if picked:
            break
    else:
        raise ModelError("no encoder.* / decoder.* weights (not a GQ autoencoder?)", source)
    out: dict[str, torch.Tensor] = {}
    for key, value in picked.items():
        if not isinstance(value, torch.Tensor):
            raise ModelError(f"{key} is a {type(value).__name__}, not a tensor", source)
        out[key] = value.float() if value.is_floating_point() else value
    return out


def read_state(path: str | os.PathLike[str], trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Network tensors from a .ckpt/.pt/.pth pickle or a plain state-dict .safetensors."""
    p = Path(path)
    if not p.is_file():
        raise ModelError("checkpoint not found", str(p))
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(p))
        except Exception as exc:  # noqa: BLE001
            raise ModelError(f"cannot read safetensors ({first_line(exc)})", str(p)) from None
    else:
        obj = load_torch_file(p, trust_pickle)
    return network_tensors(obj, str(p))


def _shape(state: dict[str, torch.Tensor], key: str) -> tuple[int, ...]:
    if key not in state:
        raise ModelError(f"cannot infer the network: missing {key}")
    return tuple(state[key].shape)


def _count(state: dict[str, torch.Tensor], pattern: str) -> int:
    n = 0
    while pattern.format(n) in state:
        n += 1
    return n


def _square_root(n: int, what: str) -> int:
    r = math.isqrt(n)
    if r * r != n:
        raise ModelError(f"cannot infer the network: {what} ({n}) is not a square")
    return r


def infer_unet_config(state: dict[str, torch.Tensor]) -> UNetConfig:
    """UNet hyper-parameters from tensor names and shapes.

    Attention placement is stored as resolutions: with ``resolution`` R a level i has attention
    iff R / 2**i is listed, so R = 256 (the released value) and the listed resolutions are
    R / 2**i of the levels that hold ``attn`` blocks.
    """
    ch, cin = _shape(state, "encoder.conv_in.weight")[:2]
    stem = _square_root(cin // 3, "conv_in input channels / 3") if cin % 3 == 0 else 0
    if stem < 1:
        raise ModelError(f"cannot infer the network: conv_in takes {cin} channels, not 3*stem^2")
    levels = _count(state, "encoder.down.{}.block.0.conv1.weight")
    blocks = _count(state, "encoder.down.0.block.{}.conv1.weight")
    if levels < 1 or blocks < 1:
        raise ModelError("cannot infer the network: no encoder.down.0.block.0 weights")
    mult = []
    for i in range(levels):
        out = _shape(state, f"encoder.down.{i}.block.0.conv2.weight")[0]
        if out % ch:
            raise ModelError(f"cannot infer the network: level {i} width {out} is not k*{ch}")
        mult.append(out // ch)
    resolution = max(256, 2 ** (levels - 1))
    attn = tuple(
        resolution >> i for i in range(levels) if f"encoder.down.{i}.attn.0.norm.weight" in state
    )
    z = _shape(state, "decoder.conv_in.weight")[1]
    z_out = _shape(state, "encoder.conv_out.weight")[0]
    out_ch = _shape(state, "decoder.conv_out.weight")[0] // stem**2
    return UNetConfig(
        ch=ch,
        ch_mult=tuple(mult),
        num_res_blocks=blocks,
        attn_resolutions=attn,
        resolution=resolution,
        in_channels=3,
        out_ch=out_ch,
        z_channels=z,
        double_z=z_out == 2 * z,
        stem=stem,
    )


def default_heads(width: int) -> int:
    """Attention heads are invisible in fused in_proj weights; ViT-B convention: 64 per head."""
    if width % 64:
        raise ModelError(f"cannot infer attention heads for width {width}: pass heads")
    return width // 64


def infer_vit_config(state: dict[str, torch.Tensor], heads: int | None = None) -> ViTConfig:
    """ViT hyper-parameters from tensor names and shapes (heads: given, else width / 64)."""
    positions, width = _shape(state, "encoder.positional_embedding")
    grid = _square_root(positions, "number of position embeddings")
    patch_in = _shape(state, "encoder.conv1.weight")[1]
    patch = _square_root(patch_in // 3, "patch input size / 3")
    mlp = _shape(state, "encoder.transformer.resblocks.0.mlp.c_fc.weight")[0]
    ratio = mlp / width
    heads = default_heads(width) if heads is None else int(heads)
    if heads < 1 or width % heads:
        raise ModelError(f"{heads} attention heads do not divide the width {width}")
    z = _shape(state, "decoder.post_quant_embed.weight")[1]
    return ViTConfig(
        image_size=grid * patch,
        patch_size=patch,
        width=width,
        layers=_count(state, "encoder.transformer.resblocks.{}.ln_1.weight"),
        heads=heads,
        mlp_ratio=int(ratio) if ratio.is_integer() else ratio,
        z_channels=z,
        double_z=_shape(state, "encoder.quant_embed.weight")[0] == 2 * z,
        dim_ffn_output=_shape(state, "decoder.ffn.0.weight")[0],
    )


def infer_network(
    state: dict[str, torch.Tensor], heads: int | None = None
) -> tuple[str, UNetConfig | ViTConfig]:
    """(arch, config) of the network the tensors belong to."""
    if "encoder.positional_embedding" in state:
        return "vit", infer_vit_config(state, heads)
    if "encoder.conv_in.weight" in state:
        return "unet", infer_unet_config(state)
    raise ModelError(
        "cannot infer the network: neither encoder.conv_in.weight (UNet) nor"
        " encoder.positional_embedding (ViT) is present"
    )


def card_for(
    state: dict[str, torch.Tensor],
    name: str,
    quant: QuantizerConfig,
    heads: int | None = None,
    origin: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A gqtok model card for reference weights (uniform entropy model: no token statistics)."""
    arch, cfg = infer_network(state, heads)
    if not cfg.double_z:
        raise ModelError("the encoder emits no log-variances (double_z false); GQ needs them")
    if cfg.z_channels % quant.dim:
        raise ModelError(f"z_channels {cfg.z_channels} not divisible by the group size {quant.dim}")
    card: dict[str, Any] = {
        "gqtok_model": CARD_VERSION,
        "name": name,
        "arch": arch,
        "layout": DEFAULT_LAYOUT[arch],
        "network": cfg.to_dict(),
        "quantizer": quant.to_dict(),
        "clamp": [-1.0, 1.0] if arch == "vit" else None,
        "entropy": {"kind": "uniform"},
    }
    if origin:
        card["origin"] = origin
    return card


def model_from_checkpoint(
    path: str | os.PathLike[str],
    quant: QuantizerConfig,
    *,
    heads: int | None = None,
    name: str | None = None,
    trust_pickle: bool = False,
    origin: dict[str, Any] | None = None,
) -> Model:
    """A Model straight from a reference checkpoint or state dict (network config inferred)."""
    p = Path(path)
    state = read_state(p, trust_pickle)
    try:
        card = card_for(state, name or p.stem, quant, heads, origin or {"file": p.name})
    except ModelError as exc:
        raise ModelError(str(exc), str(p)) from None
    return build_from_state(state, card, str(p))


def save_converted(
    model: Model, dst: str | os.PathLike[str], name: str | None = None
) -> dict[str, Any]:
    """Write a loaded model as a gqtok model file; returns its card.

    The stored float32 tensors hash exactly like the checkpoint loaded directly, so .gq files
    written with either decode with the other; a float16 gqtok file stays float16 (same bytes,
    same weights hash) and keeps its frequency table, context model and prior.
    """
    card = dict(model.card)
    if name:
        card["name"] = name
    counts = model.entropy.counts if model.entropy.kind == "frequency" else None
    half = card.get("storage_dtype") == "float16"
    return save_model(
        dst, model.encoder, model.decoder, card, counts, half=half, context=model.context,
        prior=model.prior,
    )  # fmt: skip
