"""A gqtok model: network + quantizer settings + entropy model, loaded from one safetensors file.

The file holds the network tensors (``encoder.*``, ``decoder.*``, reference names), the token
frequency table (``entropy.counts``) and the model card as JSON in the safetensors metadata
(key ``gqtok.card``); a ``.json`` sidecar with the same card is written for people to read.
Two network families share one interface: the convolutional UNet (``arch: unet``) and the
reference ViT (``arch: vit``, see gqtok.vit). Reference checkpoints (.ckpt/.pt) and the
released models by name (gqtok.registry) load through the same ``load_model``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from . import entropy as ent
from .allocator import retain_freed_memory
from .errors import ModelError
from .network import Decoder, Encoder, UNetConfig
from .quantizer import dequantize, quantize
from .vit import ViTConfig, ViTDecoder, ViTEncoder

CARD_KEY = "gqtok.card"
CARD_VERSION = 1
DEFAULT_MODEL = "default"


@dataclass(frozen=True)
class QuantizerConfig:
    """GQ settings; together they fix the codebook and the score."""

    dim: int = 16
    size: int = 65536
    seed: int = 42
    beta: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"dim": self.dim, "size": self.size, "seed": self.seed, "beta": self.beta}


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
DEFAULT_LAYOUT = {"unet": "bchw", "vit": "blc"}


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
        card = with_quantizer(self.card, quant.dim, quant.size, quant.seed, quant.beta)
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

    def encode_image(self, image: Any) -> Any:
        """PIL image -> Tokens (see gqtok.codec); convenience wrapper."""
        from .codec import encode_pil

        return encode_pil(self, image)

    def decode_image(self, tokens: Any) -> Any:
        """Tokens -> PIL image (see gqtok.codec); convenience wrapper."""
        from .codec import decode_tokens

        return decode_tokens(self, tokens)

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


def weights_dirs() -> list[Path]:
    """Where named models are looked up, in order."""
    dirs: list[Path] = []
    env = os.environ.get("GQTOK_WEIGHTS")
    if env:
        dirs.append(Path(env))
    dirs.append(Path(__file__).resolve().parent.parent / "weights")
    dirs.append(Path(sys.prefix) / "share" / "gqtok" / "weights")
    return dirs


MODEL_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def resolve_model_path(name_or_path: str | os.PathLike[str], trust_pickle: bool = False) -> Path:
    """A model file for a path, a local model name, or a released model name.

    Local ``<name>.safetensors`` in the weights folders win; otherwise a name known to
    gqtok.registry is fetched (cached conversion, download on first use).
    """
    p = Path(name_or_path)
    if p.suffix in MODEL_FILE_SUFFIXES or p.exists():
        if not p.exists():
            raise ModelError("model file not found", str(p))
        return p
    name = str(name_or_path)
    for d in weights_dirs():
        cand = d / f"{name}.safetensors"
        if cand.exists():
            return cand
    from . import registry

    if name in registry.ENTRIES and registry.ENTRIES[name].repo:
        return registry.ensure(name, trust_pickle=trust_pickle)
    where = ", ".join(str(d) for d in weights_dirs())
    known = ", ".join(registry.released_names())
    raise ModelError(f"unknown model {name!r} (looked in {where}; released models: {known})")


def read_card(path: Path) -> dict[str, Any]:
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if CARD_KEY in meta:
        return json.loads(meta[CARD_KEY])
    sidecar = path.with_suffix(".json")
    if sidecar.exists():
        return json.loads(sidecar.read_text())
    raise ModelError("no gqtok model card in the file's metadata nor beside it", str(path))


def has_card(path: Path) -> bool:
    """True for a gqtok model file; False for other files (e.g. a reference state dict)."""
    if path.suffix != ".safetensors":
        return False
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception:  # noqa: BLE001 - unreadable: let the loader report it
        return True
    if CARD_KEY in meta:
        return True
    sidecar = path.with_suffix(".json")
    try:
        card = json.loads(sidecar.read_text()) if sidecar.is_file() else None
    except (OSError, ValueError):
        return False
    return isinstance(card, dict) and "network" in card  # not just any JSON beside the file


def with_quantizer(
    card: dict[str, Any],
    dim: int | None = None,
    size: int | None = None,
    seed: int | None = None,
    beta: float | None = None,
) -> dict[str, Any]:
    """The card with quantizer settings overridden; a frequency table fitted to other
    settings no longer describes the tokens, so the entropy model falls back to uniform."""
    old = dict(card.get("quantizer", {}))
    new = dict(old)
    for key, value in (("dim", dim), ("size", size), ("seed", seed), ("beta", beta)):
        if value is not None:
            new[key] = float(value) if key == "beta" else int(value)
    if new == old:
        return card
    out = dict(card)
    out["quantizer"] = new
    if out.get("entropy", {}).get("kind") == "frequency":
        out["entropy"] = {"kind": "uniform"}
    return out


def build_from_state(
    state: dict[str, torch.Tensor],
    card: dict[str, Any],
    source: str = "",
    counts: np.ndarray | None = None,
) -> Model:
    """Make a Model from network tensors and a card; missing or unexpected keys are errors."""
    arch = card.get("arch", "unet")
    if arch not in ARCHS:
        raise ModelError(f"unsupported architecture {arch!r}", source or None)
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
        emodel = ent.from_counts(counts, float(ecard.get("smoothing", 0.5)))
    else:
        emodel = ent.uniform(quant.size)
    if emodel.size != quant.size:
        raise ModelError("entropy table size differs from the codebook size", source)
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


def load_model(
    name_or_path: str | os.PathLike[str] = DEFAULT_MODEL,
    *,
    dim: int | None = None,
    size: int | None = None,
    seed: int | None = None,
    beta: float | None = None,
    heads: int | None = None,
    trust_pickle: bool = False,
) -> Model:
    """Load a model by name ("default", a released model such as "sd3unet_gq_0.25") or path.

    Paths may be gqtok .safetensors files or reference checkpoints (.ckpt/.pt/.pth, plain
    state-dict .safetensors), whose network config is inferred from the weights (see
    gqtok.checkpoint; ``heads`` is needed there for ViTs whose width is not 64 per head).
    ``dim``/``size``/``seed``/``beta`` override the quantizer settings (codebook dim G, size
    K, seed, prior weight). ``trust_pickle`` allows checkpoints that need full unpickling.
    """
    retain_freed_memory()  # fewer page faults per image: see gqtok.allocator
    path = resolve_model_path(name_or_path, trust_pickle=trust_pickle)
    if not has_card(path):
        from .checkpoint import model_from_checkpoint

        return model_from_checkpoint(
            path, dim=dim, size=size, seed=seed, beta=beta, heads=heads, trust_pickle=trust_pickle
        )
    try:
        card = with_quantizer(read_card(path), dim, size, seed, beta)
        state: dict[str, torch.Tensor] = {}
        counts = None
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                if key == "entropy.counts":
                    counts = f.get_tensor(key).numpy().astype(np.int64)
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
) -> dict[str, Any]:
    """Write a model file (+ JSON sidecar); returns the card as stored (with weights hash)."""
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
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    save_file(state, str(tmp), metadata={CARD_KEY: json.dumps(card, sort_keys=True)})
    os.chmod(tmp, 0o644)
    os.replace(tmp, out)
    out.with_suffix(".json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    return card


def list_local_models() -> list[tuple[Path, dict[str, Any]]]:
    """(path, card) of every readable model file in the weights folders."""
    seen: set[Path] = set()
    found: list[tuple[Path, dict[str, Any]]] = []
    for d in weights_dirs():
        if not d.is_dir():
            continue
        for p in sorted(d.glob("*.safetensors")):
            rp = p.resolve()
            if rp in seen:
                continue
            seen.add(rp)
            try:
                found.append((p, read_card(p)))
            except Exception:  # noqa: BLE001 - an unreadable file is simply not listed
                continue
    return found


def path_for_model_id(model_id: str, trust_pickle: bool = False) -> Path:
    """The local file whose card name (or file stem) is model_id, else the released model of
    that name (converted copy in the cache, downloaded on first use); ModelError if none."""
    for p, card in list_local_models():
        if card.get("name") == model_id or p.stem == model_id:
            return p
    from . import registry

    if model_id in registry.ENTRIES and registry.ENTRIES[model_id].repo:
        return registry.ensure(model_id, trust_pickle=trust_pickle)
    raise ModelError(
        f"model {model_id!r} named in the file is not available locally;"
        " pass --model PATH to the model file it was written with"
    )
