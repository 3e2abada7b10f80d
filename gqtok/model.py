"""A gqtok model: network + quantizer settings + entropy model, loaded from one safetensors file.

The file holds the network tensors (``encoder.*``, ``decoder.*``, reference names), the token
frequency table (``entropy.counts``) and the model card as JSON in the safetensors metadata
(key ``gqtok.card``); a ``.json`` sidecar with the same card is written for people to read.
Two network families share one interface: the convolutional UNet (``arch: unet``) and the
reference ViT (``arch: vit``, see gqtok.nets.vit). This module loads and saves one file;
names, released models and reference checkpoints are resolved above it, in gqtok.zoo.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from gqtok.errors import ModelError
from gqtok.format import entropy as ent
from gqtok.format.card import (
    CARD_KEY,
    CARD_VERSION,
    DEFAULT_LAYOUT,
    check_card,
    read_card,
    with_quantizer,
)
from gqtok.io.allocator import retain_freed_memory
from gqtok.io.files import atomic_write, atomic_write_bytes
from gqtok.nets.config import UNetConfig, ViTConfig
from gqtok.nets.unet import Decoder, Encoder
from gqtok.nets.vit import ViTDecoder, ViTEncoder
from gqtok.quant.config import ModelOptions, QuantizerConfig
from gqtok.quant.search import dequantize, quantize


def weights_hash(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the network tensors in key order (name, dtype, shape, bytes)."""
    h = hashlib.sha256()
    for key in sorted(state):
        if not key.startswith(("encoder.", "decoder.")):
            continue
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


ARCHS: dict[str, tuple[Any, type[torch.nn.Module], type[torch.nn.Module]]] = {
    "unet": (UNetConfig, Encoder, Decoder),
    "vit": (ViTConfig, ViTEncoder, ViTDecoder),
}


class Model:
    """Encoder/decoder pair plus everything needed to turn images into coded tokens and back.

    Whatever the architecture, the encoder maps images (B, 3, H, W) to a moments grid
    (B, 2C, H/f, W/f) and the decoder maps latent grids back, so quantization is always done
    on the grid. ``layout`` is the reference's token layout of the network family ("blc" for
    the ViT), recorded in .gq headers; GQ's per-token search does not depend on it.
    """

    def __init__(
        self,
        encoder: torch.nn.Module,
        decoder: torch.nn.Module,
        quant: QuantizerConfig,
        entropy_model: ent.EntropyModel,
        card: dict[str, Any],
        weights_sha256: str,
        source: str = "",
        clamp: tuple[float, float] | None = None,
        layout: str = "bchw",
    ) -> None:
        self.encoder = encoder.eval()
        self.decoder = decoder.eval()
        self.quant = quant
        self.entropy = entropy_model
        self.card = card
        self.weights_sha256 = weights_sha256
        self.source = source
        self.clamp = clamp
        self.layout = layout
        self.device = torch.device("cpu")

    @property
    def name(self) -> str:
        return str(self.card.get("name", "unnamed"))

    @property
    def arch(self) -> str:
        return str(self.card.get("arch", "unet"))

    @property
    def weights_fingerprint(self) -> bytes:
        return bytes.fromhex(self.weights_sha256)[:8]

    @property
    def downsample(self) -> int:
        return self.encoder.cfg.downsample

    @property
    def groups(self) -> int:
        return self.encoder.cfg.z_channels // self.quant.dim

    def requantized(self, quant: QuantizerConfig) -> Model:
        """The same network under other GQ settings (e.g. a .gq header's); a frequency table
        fitted to the old settings does not describe the new tokens, so it becomes uniform."""
        if quant == self.quant:
            return self
        opts = ModelOptions(quant.dim, quant.size, quant.seed, quant.beta)
        card = with_quantizer(self.card, opts)
        emodel = self.entropy if card is self.card else ent.uniform(quant.size)
        if emodel.size != quant.size:
            emodel = ent.uniform(quant.size)
        return Model(
            self.encoder,
            self.decoder,
            quant,
            emodel,
            card,
            self.weights_sha256,
            self.source,
            self.clamp,
            self.layout,
        )

    def to(self, device: str | torch.device) -> Model:
        self.device = torch.device(device)
        self.encoder.to(self.device)
        self.decoder.to(self.device)
        return self

    @torch.inference_mode()
    def moments(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder output (B, 2C, h, w) for images (B, 3, H, W) in [-1, 1], sides multiples of f."""
        return self.encoder(x.to(self.device, torch.float32)).float()

    def quantize(self, moments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices (B, NG, h, w), zhat (B, C, h, w)) for a moments grid from ``moments``."""
        q = self.quant
        return quantize(moments, q.dim, q.size, q.seed, q.beta, "bchw")

    @torch.inference_mode()
    def decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        out = self.decoder(z.to(self.device, torch.float32)).float()
        if self.clamp is not None:
            out = out.clamp(*self.clamp)
        return out

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in roughly [-1, 1] for token indices (B, NG, h, w)."""
        q = self.quant
        z = dequantize(indices, q.dim, q.size, q.seed, "bchw")
        return self.decode_latent(z)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "arch": self.arch,
            "layout": self.layout,
            "source": self.source,
            "weights_sha256": self.weights_sha256,
            "downsample": self.downsample,
            "groups": self.groups,
            "quantizer": self.quant.to_dict(),
            "entropy_model": self.entropy.kind,
            "bits_per_token_max": float(np.log2(self.quant.size)),
        }


def build_from_state(
    state: dict[str, torch.Tensor],
    card: dict[str, Any],
    source: str = "",
    counts: np.ndarray | None = None,
) -> Model:
    """Make a Model from network tensors and a card; missing or unexpected keys are errors,
    and so is a card outside the schema of gqtok.format.card (ModelError naming the field)."""
    card = check_card(card, source or None)
    arch = card.get("arch", "unet")
    config_cls, encoder_cls, decoder_cls = ARCHS[arch]
    try:
        cfg = config_cls.from_dict(card["network"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"bad network config in the model card ({exc})", source or None) from None
    qd = card.get("quantizer", {})
    quant = QuantizerConfig(
        int(qd.get("dim", 16)),
        int(qd.get("size", 65536)),
        int(qd.get("seed", 42)),
        float(qd.get("beta", 1.0)),
    )
    if cfg.z_channels % quant.dim:
        raise ModelError(f"z_channels {cfg.z_channels} not divisible by dim {quant.dim}", source)
    # Built without memory (meta) and filled with the given tensors: no random init, no copy.
    with torch.device("meta"):
        encoder, decoder = encoder_cls(cfg), decoder_cls(cfg)
    subs = []
    missing: list[str] = []
    unexpected: list[str] = []
    for prefix, module in (("encoder.", encoder), ("decoder.", decoder)):
        sub = {k[len(prefix) :]: v.float() for k, v in state.items() if k.startswith(prefix)}
        expected = set(module.state_dict())
        missing += [prefix + k for k in sorted(expected - set(sub))]
        unexpected += [prefix + k for k in sorted(set(sub) - expected)]
        subs.append((module, sub))
    if missing or unexpected:
        parts = []
        if missing:
            more = f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""
            parts.append("missing " + ", ".join(missing[:5]) + more)
        if unexpected:
            more = f" (+{len(unexpected) - 5} more)" if len(unexpected) > 5 else ""
            parts.append("unexpected " + ", ".join(unexpected[:5]) + more)
        raise ModelError("weights do not match the network: " + "; ".join(parts), source)
    for module, sub in subs:
        try:
            module.load_state_dict(sub, assign=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()
            raise ModelError(
                f"weights do not fit the network ({first[-1].strip()})", source
            ) from None
    ecard = card.get("entropy", {"kind": "uniform"})
    if ecard.get("kind") == "frequency" and counts is not None:
        counts = _checked_counts(counts, quant.size, source)
        emodel = ent.from_counts(counts, float(ecard.get("smoothing", 0.5)))
    else:
        emodel = ent.uniform(quant.size)
    clamp = card.get("clamp", [-1.0, 1.0] if arch == "vit" else None)
    return Model(
        encoder,
        decoder,
        quant,
        emodel,
        card,
        weights_hash(state),
        source,
        tuple(clamp) if clamp else None,
        card.get("layout", DEFAULT_LAYOUT[arch]),
    )


MAX_COUNT = 1 << 53  # token counts stay exact in the float64 probabilities


def _checked_counts(counts: np.ndarray, size: int, source: str) -> np.ndarray:
    """The frequency table as int64 if it can be one: K non-negative integers below 2^53."""
    c = np.asarray(counts)
    if c.dtype.kind not in "iu":
        raise ModelError(f"entropy.counts must be an integer tensor, got {c.dtype}", source)
    if c.shape != (size,):
        raise ModelError(
            f"entropy table size differs from the codebook size ({c.shape} for K={size})", source
        )
    if c.size and (int(c.min()) < 0 or int(c.max()) >= MAX_COUNT):
        raise ModelError("entropy.counts must lie in 0..2^53-1", source)
    return c.astype(np.int64)


def load_model_file(path: Path, opts: ModelOptions | None = None) -> Model:
    """A gqtok model file (safetensors + card), under ``opts``' quantizer overrides."""
    retain_freed_memory()  # fewer page faults per image: see gqtok.io.allocator
    opts = opts or ModelOptions()
    try:
        card = with_quantizer(read_card(path), opts)
        state: dict[str, torch.Tensor] = {}
        counts = None
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                if key == "entropy.counts":
                    counts = f.get_tensor(key).numpy()
                else:
                    state[key] = f.get_tensor(key)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"cannot read model file ({exc})", str(path)) from None
    return build_from_state(state, card, str(path), counts)


def save_model(
    path: str | os.PathLike[str],
    encoder: torch.nn.Module,
    decoder: torch.nn.Module,
    card: dict[str, Any],
    counts: np.ndarray | None = None,
    half: bool = False,
    overwrite: bool = True,
) -> dict[str, Any]:
    """Write a model file (+ JSON sidecar); returns the card as stored (with weights hash).
    ModelError for a card outside the schema (a name .gq files cannot store, say); without
    ``overwrite`` an existing model file is an OutputError, never replaced."""
    out = Path(path)
    check_card(card, str(out))
    state: dict[str, torch.Tensor] = {}
    for prefix, module in (("encoder.", encoder), ("decoder.", decoder)):
        for k, v in module.state_dict().items():
            t = v.detach().cpu().contiguous()
            state[prefix + k] = t.half() if half and t.is_floating_point() else t.float()
    card = dict(card)
    card.setdefault("gqtok_model", CARD_VERSION)
    card.setdefault("arch", "unet")
    card["weights_sha256"] = weights_hash(state)
    card["storage_dtype"] = "float16" if half else "float32"
    if counts is not None:
        counts = np.asarray(counts, dtype=np.int64)
        state["entropy.counts"] = torch.from_numpy(counts.copy())
        e = ent.from_counts(counts, float(card.get("entropy", {}).get("smoothing", 0.5)))
        card["entropy"] = {
            "kind": "frequency",
            "smoothing": e.smoothing,
            "fingerprint": e.fingerprint.hex(),
        }
    else:
        card["entropy"] = {
            "kind": "uniform",
            "fingerprint": ent.uniform(
                int(card.get("quantizer", {}).get("size", 65536))
            ).fingerprint.hex(),
        }
    check_card(card, str(out))
    meta = {CARD_KEY: json.dumps(card, sort_keys=True)}
    atomic_write(out, lambda tmp: save_file(state, str(tmp), metadata=meta), overwrite=overwrite)
    sidecar = (json.dumps(card, indent=2, sort_keys=True) + "\n").encode()
    atomic_write_bytes(out.with_suffix(".json"), sidecar, overwrite=True)
    return card
