"""A gqtok model: network + quantizer settings + entropy model, loaded from one safetensors file.

The file holds the network tensors (``encoder.*``, ``decoder.*``, reference names), the token
frequency table (``entropy.counts``) and the model card as JSON in the safetensors metadata
(key ``gqtok.card``); a ``.json`` sidecar with the same card is written for people to read.
Two network families share one interface: the convolutional UNet (``arch: unet``) and the
reference ViT (``arch: vit``, see gqtok.nets.vit). This module loads and saves one file;
names, released models and reference checkpoints are resolved above it, in gqtok.zoo.

Other decoders for the same tokens (a perceptual one, say) live in decoder files beside the
model file, bound to it by its weights fingerprint (docs/format.md#decoder-files): the model's
tokens, .gq headers and checks stay the same, and the decoder is chosen when decoding
(``Model.with_decoder``); a decoder file is read only when it is first used.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import numbers
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from gqtok.errors import ModelError, first_line
from gqtok.format import context as ctx
from gqtok.format import entropy as ent
from gqtok.format.card import (
    CARD_KEY,
    CARD_VERSION,
    DECODER_INFIX,
    DECODER_KEY,
    DECODER_VERSION,
    DEFAULT_LAYOUT,
    FIDELITY,
    PERCEPTUAL,
    DecoderScan,
    check_card,
    check_decoder_card,
    decoder_path,
    find_decoders,
    read_card,
    read_decoder_card,
    with_quantizer,
)
from gqtok.format.prior import PRIOR_NAMES, PriorParams
from gqtok.io.allocator import retain_freed_memory
from gqtok.io.files import atomic_write, atomic_write_bytes
from gqtok.io.grain import check_grain
from gqtok.nets.config import UNetConfig, ViTConfig
from gqtok.nets.unet import Decoder, Encoder
from gqtok.nets.vit import ViTDecoder, ViTEncoder
from gqtok.quant.config import ModelOptions, QuantizerConfig
from gqtok.quant.search import dequantize, quantize

PRECISIONS = ("fp32", "bf16")  # how the networks run; the GQ search is float32/float64 always


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


@contextlib.contextmanager
def network_precision(device: torch.device, precision: str = "fp32") -> Iterator[None]:
    """The arithmetic of a network pass on ``device``.

    "bf16": autocast to bfloat16: fast on GPUs and on CPUs with bf16 instructions (the default
    model on this project's AVX512-BF16 EPYC: encoder 0.078 s against 0.147 s in fp32 on the
    768x512 sample), slower than fp32 on CPUs without them (emulated).
    "fp32": IEEE float32 everywhere, also on CUDA, where torch would otherwise run convolutions
    in TF32 (10-bit mantissa) by default: moments, hence tokens, then stay as close to the
    CPU's as GPU kernels allow. The TF32 settings are restored on the way out.
    """
    check_precision(precision)
    if precision == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
        return
    if device.type != "cuda":
        yield
        return
    saved: list[tuple[Any, str]] = []
    try:
        for switch in (getattr(torch.backends.cudnn, "conv", None), torch.backends.cuda.matmul):
            try:  # torch >= 2.9; a torch without the switch runs its own default
                mode = str(switch.fp32_precision)  # type: ignore[union-attr]
                switch.fp32_precision = "ieee"  # type: ignore[union-attr]
            except Exception:  # noqa: BLE001 - not switchable here: leave it
                continue
            saved.append((switch, mode))
        yield
    finally:
        for switch, mode in saved:
            switch.fp32_precision = mode


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


class DecoderSet:
    """The decoders that turn one model's tokens into pixels: the model's own ("fidelity") and
    the decoder files bound to it (``scan``), each read on first use and then kept, so that
    all the variants of a model (``Model.with_decoder``, ``Model.requantized``) share them."""

    def __init__(
        self,
        fidelity: torch.nn.Module,
        build: Callable[[], torch.nn.Module] | None = None,
        model_name: str = "unnamed",
        scan: DecoderScan | None = None,
    ) -> None:
        self._modules: dict[str, torch.nn.Module] = {FIDELITY: fidelity}
        self._build = build  # an empty decoder network of the model's config
        self.model_name = model_name
        self.scan = scan or DecoderScan()
        self._lock = threading.Lock()

    @property
    def names(self) -> list[str]:
        return self.scan.names

    def check(self, name: str) -> None:
        """ModelError unless ``name`` is a usable decoder: a decoder file that is there but
        refused is named with its reason, an unknown name gets the list of available ones."""
        if name == FIDELITY or name in self.scan.bound:
            return
        if name in self.scan.refused:
            path, why = self.scan.refused[name]
            raise ModelError(why, str(path))
        raise ModelError(
            f"unknown decoder {name!r} for model {self.model_name!r}"
            f" (available: {', '.join(self.names)})"
        )

    def get(self, name: str) -> torch.nn.Module:
        """The decoder network ``name``, read from its file the first time."""
        self.check(name)
        with self._lock:
            if name not in self._modules:
                path, card = self.scan.bound[name]
                self._modules[name] = load_decoder_file(path, self._network, card)
            return self._modules[name]

    def mixed(self, name: str, realism: float) -> torch.nn.Module:
        """A new decoder network with weights (1 - realism) * fidelity + realism * ``name``
        (network interpolation, as ESRGAN's): one knob between the two decoders."""
        ours, theirs = self.get(FIDELITY).state_dict(), self.get(name).state_dict()
        mixed = {}
        for key, value in ours.items():
            a, b = value.detach().cpu(), theirs[key].detach().cpu()
            mixed[key] = torch.lerp(a.float(), b.float(), realism) if a.is_floating_point() else a
        module = self._network()
        module.load_state_dict(mixed, assign=True)
        return module.eval()

    def _network(self) -> torch.nn.Module:
        if self._build is None:  # a Model made by hand: a copy of its own decoder is the shape
            return copy.deepcopy(self._modules[FIDELITY])
        with torch.device("meta"):  # no memory, no random init: filled by load_state_dict
            return self._build()


class Model:
    """Encoder/decoder pair plus everything needed to turn images into coded tokens and back.

    Whatever the architecture, the encoder maps images (B, 3, H, W) to a moments grid
    (B, 2C, H/f, W/f) and the decoder maps latent grids back, so quantization is always done
    on the grid. ``layout`` is the reference's token layout of the network family ("blc" for
    the ViT), recorded in .gq headers; GQ's per-token search does not depend on it.

    ``decoder`` is the one chosen with ``with_decoder`` (the model's own, "fidelity", unless
    another was chosen); everything that identifies the tokens (card, weights_sha256, the
    quantizer and entropy model) is the model's whatever the decoder.
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
        decoders: DecoderSet | None = None,
        context: ctx.ContextParams | None = None,
        prior: PriorParams | None = None,
    ) -> None:
        self.encoder = encoder.eval()
        self._decoder: torch.nn.Module | None = decoder.eval()
        self.quant = quant
        self.entropy = entropy_model
        self.context = context
        self.prior = prior
        self.card = card
        self.weights_sha256 = weights_sha256
        self.source = source
        self.clamp = clamp
        self.layout = layout
        self.device = torch.device("cpu")
        self.precision = "fp32"
        self._decoders = decoders or DecoderSet(decoder, None, self.name)
        self.decoder_name = FIDELITY
        self.realism: float | None = None
        self.grain = 0.0  # synthetic film grain added to decoded pixels (gqtok.io.grain)
        self._variants: OrderedDict[tuple[str, float | None, float], Model] = OrderedDict()
        self._requantized: OrderedDict[QuantizerConfig, Model] = OrderedDict()
        # the model the card's "coarse" names, once loaded (gqtok.zoo.load.coarse_member)
        self.coarse: Model | None = None

    @property
    def name(self) -> str:
        return str(self.card.get("name", "unnamed"))

    @property
    def label(self) -> str:
        """The model and its decoder, for tables: ``name``, ``name+perceptual`` or
        ``name+perceptual@0.5``, then ``+grain2`` with grain (``name`` stays the card's, as .gq
        headers record it)."""
        grain = f"+grain{self.grain:g}" if self.grain else ""
        if self.decoder_name == FIDELITY:
            return self.name + grain
        mix = "" if self.realism is None else f"@{self.realism:g}"
        return f"{self.name}+{self.decoder_name}{mix}{grain}"

    @property
    def decoders(self) -> list[str]:
        """The decoders that serve this model's tokens, "fidelity" (its own) first."""
        return self._decoders.names

    @property
    def decoder_problems(self) -> dict[str, str]:
        """Decoder files beside the model file that are not used: name -> "file: reason"."""
        return {n: f"{p}: {why}" for n, (p, why) in self._decoders.scan.refused.items()}

    @property
    def decoder(self) -> torch.nn.Module:
        """The chosen decoder network (read from its file on first use)."""
        if self._decoder is None:
            if self.realism is None:
                module = self._decoders.get(self.decoder_name)
            else:
                module = self._decoders.mixed(self.decoder_name, self.realism)
            self._decoder = module.to(self.device).eval()
        return self._decoder

    @property
    def arch(self) -> str:
        return str(self.card.get("arch", "unet"))

    def makes_same_tokens(self, other: Model) -> bool:
        """Whether ``other`` turns images into this model's tokens: the same architecture,
        codebook (G, seed, beta; any K) and encoder tensors. Decoders learnt on one model's
        tokens then serve the other's."""
        q, o = self.quant, other.quant
        if self.arch != other.arch or (q.dim, q.seed, q.beta) != (o.dim, o.seed, o.beta):
            return False
        mine, theirs = self.encoder.state_dict(), other.encoder.state_dict()
        return mine.keys() == theirs.keys() and all(
            torch.equal(mine[k].cpu(), theirs[k].cpu()) for k in mine
        )

    def codes_like(self, other: Model) -> bool:
        """Whether ``other`` makes this model's tokens and bytes: the same tokens, codebook
        size and entropy models (card ``entropy``), whatever its decoder."""
        return (
            self.quant == other.quant
            and self.card.get("entropy") == other.card.get("entropy")
            and self.makes_same_tokens(other)
        )

    @property
    def weights_fingerprint(self) -> bytes:
        return bytes.fromhex(self.weights_sha256)[:8]

    @property
    def downsample(self) -> int:
        return self.encoder.cfg.downsample

    @property
    def groups(self) -> int:
        return self.encoder.cfg.z_channels // self.quant.dim

    def _variant(self, **changes: Any) -> Model:
        """A Model sharing this one's networks and files, with some attributes changed."""
        out = copy.copy(self)
        out.__dict__.update(changes)
        out._variants = OrderedDict()
        out._requantized = OrderedDict()
        return out

    def with_decoder(
        self, name: str = FIDELITY, realism: float | None = None, grain: float | None = None
    ) -> Model:
        """This model with the decoder ``name`` ("fidelity": its own; see ``decoders``).

        ``realism`` r in [0, 1] blends the weights: (1 - r) * fidelity + r * the named decoder,
        or the "perceptual" one when the name is "fidelity"; r = 0 is the fidelity decoder and
        r = 1 the other, bit for bit. The result shares encoder, quantizer, entropy model,
        card and weights hash with this model (so .gq files and their checks are unchanged);
        its decoder is read on first use. ModelError for a decoder the model does not have.
        ``grain`` (8-bit levels, default: this model's) adds synthetic film grain to the
        decoded pixels (gqtok.io.grain).
        """
        if realism is not None:
            if isinstance(realism, bool) or not isinstance(realism, numbers.Real):
                raise TypeError(f"realism must be a number in [0, 1], got {realism!r}")
            if not (math.isfinite(realism) and 0.0 <= realism <= 1.0):
                raise ValueError(f"realism must be in [0, 1], got {realism}")
            other = PERCEPTUAL if name == FIDELITY else name
            if other in self._decoders.scan.refused:
                self._decoders.check(other)  # names the file and why it is not used
            if other not in self._decoders.scan.bound:
                raise ModelError(
                    f"realism needs a {other!r} decoder; model {self.name!r} has"
                    f" {', '.join(self.decoders)}"
                )
            name, realism = (
                (FIDELITY, None) if realism == 0 else (other, None if realism == 1 else realism)
            )
        self._decoders.check(name)
        grain = self.grain if grain is None else check_grain(grain)
        key = (name, None if realism is None else float(realism), grain)
        if key == (self.decoder_name, self.realism, self.grain):
            return self
        if key not in self._variants:
            while len(self._variants) >= 4:  # realism is a continuous knob: keep a few
                self._variants.popitem(last=False)
            same_net = key[:2] == (self.decoder_name, self.realism)
            self._variants[key] = self._variant(
                _decoder=self._decoder if same_net else None, decoder_name=key[0],
                realism=key[1], grain=grain)
        self._variants.move_to_end(key)
        return self._variants[key]

    def requantized(self, quant: QuantizerConfig) -> Model:
        """The same network under other GQ settings (e.g. a .gq header's); a frequency table
        fitted to the old settings does not describe the new tokens, so it becomes the prior's
        table for another codebook size (see below) or else uniform. The last few are kept:
        their entropy tables and context coder cost a pass over up to 2^20 codewords, and rate
        control and compare ask for the same sizes image after image."""
        if quant == self.quant:
            return self
        if quant not in self._requantized:
            while len(self._requantized) >= 4:
                self._requantized.popitem(last=False)
            self._requantized[quant] = self._requantize(quant)
        self._requantized.move_to_end(quant)
        return self._requantized[quant]

    def _requantize(self, quant: QuantizerConfig) -> Model:
        opts = ModelOptions(quant.dim, quant.size, quant.seed, quant.beta)
        card = with_quantizer(self.card, opts)
        emodel = self.entropy if card is self.card else ent.uniform(quant.size)
        if emodel.size != quant.size:
            emodel = ent.uniform(quant.size)
        context = None
        q = self.quant
        same_codebook = (quant.dim, quant.seed, quant.beta) == (q.dim, q.seed, q.beta)
        if self.prior is not None and same_codebook:
            # another codebook size of the same codebook: the prior's table for it, and the
            # context model where its cells fit (gqtok.codec.rate codes every K this way)
            from gqtok.quant.codebook import codebook_view

            emodel = self.prior.table(codebook_view(quant.dim, quant.size, quant.seed).numpy())
            if self.context is not None and ctx.codes_size(quant.size, self.context.bins):
                context = self.context
        out = self._variant(quant=quant, entropy=emodel, card=card, context=context)
        out.__dict__.pop("_context_coder", None)
        return out

    @property
    def context_coder(self) -> ctx.ContextCoder | None:
        """The context entropy coder (.gq version 2) of this model's tokens, or None where
        none was fitted (or the quantizer settings were overridden since). Built on first use:
        it needs the codebook."""
        if self.context is None or self.entropy.kind == "uniform":
            return None
        coder = self.__dict__.get("_context_coder")
        if coder is None:
            from gqtok.quant.codebook import codebook_view

            q = self.quant
            coder = ctx.ContextCoder(
                self.context, codebook_view(q.dim, q.size, q.seed).numpy(), self.entropy
            )
            self.__dict__["_context_coder"] = coder
        return coder

    @property
    def entropy_label(self) -> str:
        """How this model codes tokens by default, for people, in the words of ``gqtok
        models`` (gqtok.format.card.entropy_label): context / static (its frequency table) /
        uniform."""
        if self.entropy.kind != "frequency":
            return self.entropy.kind
        return "context" if self.context is not None else "static"

    def to(self, device: str | torch.device, precision: str | None = None) -> Model:
        """Run the networks and the GQ search on ``device``; ``precision`` ("fp32", "bf16")
        is the networks' arithmetic (network_precision), unchanged when None."""
        if precision is not None:
            self.precision = check_precision(precision)
        self.device = torch.device(device)
        self.encoder.to(self.device)
        if self._decoder is not None:
            self._decoder.to(self.device)
        return self

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        """The context every network pass of this model runs in (its device and precision)."""
        return network_precision(self.device, self.precision)

    @torch.inference_mode()
    def moments(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder output (B, 2C, h, w) in float32 for images (B, 3, H, W) in [-1, 1], sides
        multiples of f. A batch in pinned memory is copied to a GPU asynchronously."""
        with self.autocast():
            return self.encoder(x.to(self.device, torch.float32, non_blocking=True)).float()

    def quantize(self, moments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices (B, NG, h, w), zhat (B, C, h, w)) for a moments grid from ``moments``, on
        the moments' device; the search runs on the model's device, with the same result."""
        q = self.quant
        return quantize(moments, q.dim, q.size, q.seed, q.beta, "bchw", device=self.device)

    @torch.inference_mode()
    def decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            out = self.decoder(z.to(self.device, torch.float32, non_blocking=True)).float()
        if self.clamp is not None:
            out = out.clamp(*self.clamp)
        return out

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in roughly [-1, 1] for token indices (B, NG, h, w); the
        codewords are looked up on the model's device (indices are 8x smaller than latents)."""
        q = self.quant
        z = dequantize(indices.to(self.device), q.dim, q.size, q.seed, "bchw")
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
            "entropy_model": self.entropy_label,
            "bits_per_token_max": float(np.log2(self.quant.size)),
            "decoder": self.decoder_name,
            "realism": self.realism,
            "grain": self.grain,
            "decoders": self.decoders,
        }


def select_decoder(
    model: Model, decoder: str | None = None, realism: float | None = None,
    grain: float | None = None,
) -> Model:
    """``model`` with the decoder (and grain) asked for, or as it is when none is given (so a
    model from ``with_decoder`` keeps its choice): the one rule of every decode function."""
    if decoder is None and realism is None:
        return model if grain is None else model.with_decoder(
            model.decoder_name, model.realism, grain)
    return model.with_decoder(decoder or FIDELITY, realism, grain)


def build_from_state(
    state: dict[str, torch.Tensor],
    card: dict[str, Any],
    source: str = "",
    counts: np.ndarray | None = None,
    context: dict[str, np.ndarray] | None = None,
    prior: dict[str, np.ndarray] | None = None,
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
    try:
        with torch.device("meta"):
            encoder, decoder = encoder_cls(cfg), decoder_cls(cfg)
    except (ValueError, RuntimeError) as exc:  # e.g. channels that GroupNorm cannot split
        why = first_line(exc)
        raise ModelError(f"bad network config in the model card ({why})", source) from None
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
    cparams = _checked_context(context, ecard, emodel, quant, cfg, source)
    pparams = _checked_prior(prior, ecard, quant.dim, source)
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
        DecoderSet(decoder, lambda: decoder_cls(cfg), str(card.get("name", "unnamed"))),
        cparams,
        pparams,
    )


CONTEXT_PREFIX = "entropy.context."
PRIOR_PREFIX = "entropy.prior."


def _checked_prior(
    arrays: dict[str, np.ndarray] | None, ecard: dict[str, Any], dim: int, source: str
) -> PriorParams | None:
    """The prior over codebook sizes of a file (gqtok.format.prior), or None: without one, or
    when the quantizer settings were overridden (the card's entropy is then uniform)."""
    if not arrays or ecard.get("kind") != "frequency":
        return None
    params = PriorParams({k: v for k, v in arrays.items() if k in PRIOR_NAMES})
    try:
        params.check(dim)
    except ValueError as exc:
        raise ModelError(f"bad entropy prior ({exc})", source) from None
    return params


def _checked_context(
    arrays: dict[str, np.ndarray] | None,
    ecard: dict[str, Any],
    emodel: ent.EntropyModel,
    quant: QuantizerConfig,
    cfg: Any,
    source: str,
) -> ctx.ContextParams | None:
    """The context model of a file if its card has one and the tensors fit it (ModelError
    naming the problem otherwise); None where the file has none or the quantizer settings
    were overridden (the card's entropy then is uniform, see with_quantizer)."""
    ccard = ecard.get("context")
    if ccard is None or emodel.kind != "frequency":
        return None
    if not arrays:
        raise ModelError("card names a context model but the file has no context tensors", source)
    params = ctx.ContextParams(int(ccard["bins"]), arrays)
    try:
        params.check(quant.size, quant.dim, cfg.z_channels // quant.dim)
    except ValueError as exc:
        raise ModelError(f"bad context model ({exc})", source) from None
    fp = ctx.coder_fingerprint(params, emodel)
    if fp.hex() != ccard.get("fingerprint"):
        raise ModelError(
            f"context model fingerprint {fp.hex()} differs from its card's", source
        )
    return params


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
        own = read_card(path)
        card = with_quantizer(own, opts)
        state: dict[str, torch.Tensor] = {}
        counts = None
        context: dict[str, np.ndarray] = {}
        prior: dict[str, np.ndarray] = {}
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                if key == "entropy.counts":
                    counts = f.get_tensor(key).numpy()
                elif key.startswith(CONTEXT_PREFIX):
                    context[key[len(CONTEXT_PREFIX) :]] = f.get_tensor(key).numpy()
                elif key.startswith(PRIOR_PREFIX):
                    prior[key[len(PRIOR_PREFIX) :]] = f.get_tensor(key).numpy()
                else:
                    state[key] = f.get_tensor(key)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"cannot read model file ({exc})", str(path)) from None
    old, new = own.get("quantizer", {}), card.get("quantizer", {})
    changed = {k for k in new if new[k] != old.get(k)}
    if card is not own and changed == {"size"} and prior:
        # only another codebook size: the file's prior (and context model) code it, as for
        # --quality (Model.requantized); the overridden card is checked all the same
        check_card(card, str(path))
        model = build_from_state(state, own, str(path), counts, context, prior)
        model = model.requantized(QuantizerConfig(**card["quantizer"]))
    else:
        model = build_from_state(state, card, str(path), counts, context, prior)
    model._decoders.scan = find_decoders(Path(path), model.card, model.weights_sha256)
    return model


_DTYPES = {"float16": "F16", "float32": "F32"}  # storage_dtype -> safetensors' dtype names


def load_decoder_file(
    path: Path, network: Callable[[], torch.nn.Module], card: dict[str, Any] | None = None
) -> torch.nn.Module:
    """The decoder network of a decoder file, in ``network()`` (an empty decoder of the
    model's config). The tensor table is checked against the network (names, shapes, the
    card's dtype) before any tensor is read, and the tensors against the card's weights_sha256
    after; ``card``, when given, is the card found when the model was loaded, which the file
    must still hold. Any failure is a one-line ModelError naming the file."""
    where = str(path)
    found = read_decoder_card(path)
    if card is not None and found != card:
        raise ModelError("decoder file changed since the model was loaded", where)
    module = network()
    want = {f"decoder.{k}": tuple(v.shape) for k, v in module.state_dict().items()}
    dtype = _DTYPES[found["storage_dtype"]]
    state: dict[str, torch.Tensor] = {}
    try:
        with safe_open(where, framework="pt") as f:
            keys = set(f.keys())
            missing, unexpected = sorted(set(want) - keys), sorted(keys - set(want))
            if missing or unexpected:
                what = [f"missing {', '.join(missing[:3])}"] if missing else []
                what += [f"unexpected {', '.join(unexpected[:3])}"] if unexpected else []
                raise ModelError(
                    "tensors do not match the model's decoder: " + "; ".join(what), where
                )
            for key in sorted(keys):
                part = f.get_slice(key)
                shape, kind = tuple(part.get_shape()), part.get_dtype()
                if shape != want[key]:
                    raise ModelError(
                        f"tensor {key} has shape {shape}, the model's decoder needs {want[key]}",
                        where,
                    )
                if kind != dtype:
                    raise ModelError(
                        f"tensor {key} is {kind}, the card says {found['storage_dtype']}", where
                    )
            for key in sorted(keys):
                state[key] = f.get_tensor(key)
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - safetensors' errors for a damaged file
        raise ModelError(f"cannot read decoder file ({first_line(exc)})", where) from None
    if weights_hash(state) != found["weights_sha256"]:
        raise ModelError(
            "decoder weights do not hash to the card's weights_sha256 (damaged or altered)",
            where,
        )
    module.load_state_dict({k[len("decoder.") :]: v.float() for k, v in state.items()}, assign=True)
    return module.eval()


def save_model(
    path: str | os.PathLike[str],
    encoder: torch.nn.Module,
    decoder: torch.nn.Module,
    card: dict[str, Any],
    counts: np.ndarray | None = None,
    half: bool = False,
    overwrite: bool = True,
    context: ctx.ContextParams | None = None,
    prior: PriorParams | None = None,
) -> dict[str, Any]:
    """Write a model file (+ JSON sidecar); returns the card as stored (with weights hash).
    ModelError for a card outside the schema (a name .gq files cannot store, say); without
    ``overwrite`` an existing model file is an OutputError, never replaced. ``context`` and
    ``prior`` (with ``counts``) keep a context entropy model and a prior over codebook sizes,
    described by the card's entropy.context and entropy.prior."""
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
        ccard = card.get("entropy", {}).get("context")
        pcard = card.get("entropy", {}).get("prior")
        card["entropy"] = {
            "kind": "frequency",
            "smoothing": e.smoothing,
            "fingerprint": e.fingerprint.hex(),
        }
        if context is not None:
            for k, arr in context.arrays.items():
                state[CONTEXT_PREFIX + k] = torch.from_numpy(np.ascontiguousarray(arr))
            card["entropy"]["context"] = _context_card(context, e, ccard)
        if prior is not None:
            for k, arr in prior.arrays.items():
                state[PRIOR_PREFIX + k] = torch.from_numpy(np.asarray(arr, dtype=np.int64))
            card["entropy"]["prior"] = pcard or {}
    else:
        card["entropy"] = {
            "kind": "uniform",
            "fingerprint": ent.uniform(
                int(card.get("quantizer", {}).get("size", 65536))
            ).fingerprint.hex(),
        }
    _write_model_file(out, card, lambda tmp, meta: save_file(state, str(tmp), metadata=meta),
                      overwrite)  # fmt: skip
    return card


def _context_card(
    params: ctx.ContextParams, static: ent.EntropyModel, about: dict[str, Any] | None
) -> dict[str, Any]:
    """The card's entropy.context: what ``about`` says of the fit, and the two fields a loader
    checks the tensors against (bins, and the coder's fingerprint)."""
    return {
        **(about or {}),
        "bins": params.bins,
        "fingerprint": ctx.coder_fingerprint(params, static).hex(),
    }


def _write_model_file(
    out: Path, card: dict[str, Any], save: Callable[[Path, dict[str, str]], None], overwrite: bool
) -> None:
    """Check the card, write the tensors (``save(tmp, metadata)``) with it atomically, and the
    JSON sidecar beside them."""
    check_card(card, str(out))
    meta = {CARD_KEY: json.dumps(card, sort_keys=True)}
    atomic_write(out, lambda tmp: save(tmp, meta), overwrite=overwrite)
    sidecar = (json.dumps(card, indent=2, sort_keys=True) + "\n").encode()
    atomic_write_bytes(out.with_suffix(".json"), sidecar, overwrite=True)


def save_with_context(
    model: Model,
    params: ctx.ContextParams,
    context_card: dict[str, Any],
    path: str | os.PathLike[str],
    overwrite: bool = False,
    static: ent.EntropyModel | None = None,
    prior: PriorParams | None = None,
    prior_card: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``model``'s file again with a context entropy model added (or replaced): every
    other tensor byte for byte, so the weights hash, the tokens and every .gq file that names
    the model stay valid. Returns the card as stored. A model without a frequency table (a
    converted one with other quantizer settings, say) gets ``static`` as its table too."""
    from safetensors.numpy import save_file as save_numpy

    if static is None:
        static = model.entropy
    if static.kind != "frequency":
        raise ModelError("a context model needs a frequency table", model.source)
    if model.entropy.kind == "frequency" and static is not model.entropy:
        raise ModelError("the model has a frequency table already: keep it", model.source)
    state = _file_tensors(model, "np")
    state = {k: v for k, v in state.items() if not k.startswith((CONTEXT_PREFIX, PRIOR_PREFIX))}
    for name, arr in params.arrays.items():
        state[CONTEXT_PREFIX + name] = np.ascontiguousarray(arr)
    for name, arr in (prior.arrays if prior is not None else {}).items():
        state[PRIOR_PREFIX + name] = np.ascontiguousarray(arr, dtype=np.int64)
    card = copy.deepcopy(model.card)
    if model.entropy.kind != "frequency":  # the table fitted along with the context model
        assert static.counts is not None
        state["entropy.counts"] = np.asarray(static.counts, dtype=np.int64)
        card["entropy"] = {
            "kind": "frequency",
            "smoothing": static.smoothing,
            "fingerprint": static.fingerprint.hex(),
        }
    card["entropy"] = dict(card.get("entropy", {}))
    card["entropy"].pop("prior", None)
    if prior is not None:
        card["entropy"]["prior"] = prior_card or {}
    card["entropy"]["context"] = _context_card(params, static, context_card)
    save = lambda tmp, meta: save_numpy(state, str(tmp), metadata=meta)  # noqa: E731
    _write_model_file(Path(path), card, save, overwrite)
    return card


def save_with_coarse(
    model: Model, member: Model, below: int, path: str | os.PathLike[str], overwrite: bool = False
) -> dict[str, Any]:
    """Write ``model``'s file again with a card naming ``member`` as its coarse-codebook model:
    rate control codes K < ``below`` with it (gqtok.zoo.load.coarse_member, which checks
    again at load time that it makes the same tokens and bytes). Every tensor byte for byte,
    so the weights hash and every .gq file that names the model stay valid. Returns the card
    as stored."""
    from safetensors.numpy import save_file as save_numpy

    if not model.codes_like(member):
        raise ModelError(
            f"{member.name!r} does not code {model.name!r}'s tokens (encoder, quantizer or"
            " entropy models differ)",
            member.source,
        )
    state = _file_tensors(model, "np")
    card = copy.deepcopy(model.card)
    card["coarse"] = {
        "below": int(below),
        "model": member.name,
        "weights_sha256": member.weights_sha256,
    }
    save = lambda tmp, meta: save_numpy(state, str(tmp), metadata=meta)  # noqa: E731
    _write_model_file(Path(path), card, save, overwrite)
    return card


def _file_tensors(model: Model, framework: str) -> dict[str, Any]:
    """Every tensor of ``model``'s file as stored (numpy or torch arrays)."""
    try:
        with safe_open(model.source, framework=framework) as f:
            return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as exc:
        raise ModelError(f"cannot read model file ({exc})", model.source) from None


def save_with_decoder(
    model: Model,
    decoder: torch.nn.Module,
    card: dict[str, Any],
    path: str | os.PathLike[str],
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write ``model``'s file with ``decoder`` as its own, under ``card`` (a new name): the
    encoder, frequency table, context model and prior byte for byte, so the new model's tokens
    and file sizes are the old one's. Its weights hash is new, so each model's .gq files name
    the decoder they were written for. The decoder is stored in the model's dtype. Returns
    the card as stored."""
    state = _file_tensors(model, "pt")
    old = {k for k in state if k.startswith("decoder.")}
    dtype = torch.float16 if model.card.get("storage_dtype") == "float16" else torch.float32
    new = {
        "decoder." + k: v.detach().cpu().to(dtype).contiguous()
        for k, v in decoder.state_dict().items()
    }
    if set(new) != old or any(new[k].shape != state[k].shape for k in old):
        raise ModelError("the decoder does not fit the model's network", model.source)
    state.update(new)
    card = copy.deepcopy(card)
    for key in ("arch", "layout", "network", "quantizer", "entropy", "token_stats"):
        if key in model.card:  # what identifies the tokens is the model's, whatever is passed
            card[key] = copy.deepcopy(model.card[key])
    card["gqtok_model"] = model.card.get("gqtok_model", CARD_VERSION)
    card["weights_sha256"] = weights_hash(state)
    card["storage_dtype"] = "float16" if dtype == torch.float16 else "float32"
    save = lambda tmp, meta: save_file(state, str(tmp), metadata=meta)  # noqa: E731
    _write_model_file(Path(path), card, save, overwrite)
    return card


def decoder_card(
    model: Model,
    name: str,
    description: str = "",
    training: dict[str, Any] | None = None,
    quality: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The card of a new decoder for ``model``'s tokens, bound to its weights (for
    ``save_decoder``, which adds the decoder's own hash, dtype and version)."""
    card: dict[str, Any] = {
        "name": name,
        "base_model": model.name,
        "base_weights_sha256": model.weights_sha256,
        "arch": model.arch,
        "network": model.card["network"],
    }
    if description:
        card["description"] = description
    if training is not None:
        card["training"] = training
    if quality is not None:
        card["quality"] = quality
    return card


def save_decoder(
    path: str | os.PathLike[str],
    decoder: torch.nn.Module,
    card: dict[str, Any],
    half: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write a decoder file (+ JSON copy of its card); returns the card as stored.

    ``path`` must be ``<model stem>.decoder-<card name>.safetensors`` beside the model file
    (gqtok.format.card.decoder_path), or the model will not find it; the card names the
    model's weights (``base_weights_sha256``) and network (``decoder_card`` makes one). Fills
    weights_sha256, storage_dtype and gqtok_decoder; ModelError for a card outside the schema,
    a wrong file name or weights that do not fit the card's network; without ``overwrite``
    an existing file is an OutputError, never replaced."""
    out = Path(path)
    state = {}
    for k, v in decoder.state_dict().items():
        t = v.detach().cpu().contiguous()
        state["decoder." + k] = t.half() if half and t.is_floating_point() else t.float()
    card = dict(card)
    card["gqtok_decoder"] = DECODER_VERSION
    card.setdefault("arch", "unet")
    card["weights_sha256"] = weights_hash(state)
    card["storage_dtype"] = "float16" if half else "float32"
    check_decoder_card(card, str(out))
    suffix = f"{DECODER_INFIX}{card['name']}.safetensors"
    if not out.name.endswith(suffix) or out.name == suffix:
        raise ModelError(f"a decoder file must be named <model stem>{suffix}", str(out))
    config_cls, _, decoder_cls = ARCHS[card["arch"]]
    try:
        cfg = config_cls.from_dict(card["network"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"bad network config in the decoder card ({exc})", str(out)) from None
    with torch.device("meta"):
        want = {"decoder." + k: tuple(v.shape) for k, v in decoder_cls(cfg).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != want:
        bad = sorted(set(got) ^ set(want)) or sorted(k for k in got if got[k] != want[k])
        raise ModelError(
            f"decoder weights do not fit the card's network ({', '.join(bad[:3])})", str(out)
        )
    meta = {DECODER_KEY: json.dumps(card, sort_keys=True)}
    atomic_write(out, lambda tmp: save_file(state, str(tmp), metadata=meta), overwrite=overwrite)
    sidecar = (json.dumps(card, indent=2, sort_keys=True) + "\n").encode()
    atomic_write_bytes(out.with_suffix(".json"), sidecar, overwrite=True)
    return card


def copy_decoder(
    source: Model, name: str, target: Model, overwrite: bool = False
) -> dict[str, Any]:
    """Serve ``source``'s decoder ``name`` beside ``target`` too: its tensors are written next
    to ``target``'s file (``<stem>.decoder-<name>.safetensors``) with a card bound to
    ``target``'s weights, keeping the description, training record and quality of the
    original. Only for a target with the same tokens (equal encoder tensors and quantizer, as
    a model exported with ``--own-decoder`` from ``source`` has): a decoder learnt on one
    model's tokens means nothing on another's. Returns the new card."""
    if name not in source._decoders.scan.bound:
        source._decoders.check(name)  # says which files there are and why one is not used
    _, found = source._decoders.scan.bound[name]
    if not source.makes_same_tokens(target):
        raise ModelError(
            f"{target.name!r} does not make {source.name!r}'s tokens (encoder or quantizer"
            " differ): its decoders do not apply",
            target.source,
        )
    module = source.with_decoder(name).decoder
    card = decoder_card(
        target, name, str(found.get("description", "")), found.get("training"), found.get("quality")
    )
    half = found.get("storage_dtype") == "float16"
    return save_decoder(decoder_path(Path(target.source), name), module, card, half, overwrite)
