"""The models a user can pick: local model files and the released models, with their rate and
an estimated CPU cost (the rows of ``gqtok models``).

Model cards are read from the safetensors header and the cost comes from precounted tables
(gqtok.eval.cost), so listing needs neither torch nor the weights; so are the cards of the
decoder files beside a model (which decoders serve it: gqtok.format.card.find_decoders).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gqtok.errors import GqtokError
from gqtok.eval.cost import estimate
from gqtok.format.card import FIDELITY, entropy_label, find_decoders, read_card
from gqtok.nets.config import UNetConfig, ViTConfig, network_config
from gqtok.zoo import registry
from gqtok.zoo.hub import is_available
from gqtok.zoo.paths import DEFAULT_MODEL, is_retired, list_local_models, local_models_named


def _tokens_per_pixel(card: dict[str, Any]) -> float:
    """NG tokens per f x f block of pixels (ValueError and friends for an odd card)."""
    cfg = network_config(card)
    ng = cfg.z_channels // int(card.get("quantizer", {}).get("dim", 16))
    return ng / cfg.downsample**2


def nominal_bpp(card: dict[str, Any]) -> float | None:
    """Bits per pixel before entropy coding: NG tokens of log2(K) bits per f x f block."""
    try:
        size = int(card.get("quantizer", {}).get("size", 65536))
        return round(_tokens_per_pixel(card) * math.log2(size), 4)
    except Exception:  # noqa: BLE001 - odd card: no figure
        return None


def _heldout(card: dict[str, Any]) -> dict[str, Any]:
    """``bpp_heldout`` at the model's own K as its card measured it (the context model's bits
    per token on the held-out photos of ``gqtok fit-context``, native size, the stream only:
    a .gq header adds ~20 bytes) and ``heldout_photos``; None and 0 where no context model
    was fitted."""
    try:
        fitted = card["entropy"]["context"]["fitted"]
        bits, photos = float(fitted["val_context_bits"]), int(fitted["val_photos"])
        return {"bpp_heldout": round(_tokens_per_pixel(card) * bits, 4), "heldout_photos": photos}
    except Exception:  # noqa: BLE001 - no fit, or an odd card: no figure
        return {"bpp_heldout": None, "heldout_photos": 0}


def downsample(card: dict[str, Any]) -> int | None:
    """The network's pixels per latent position along one side (f), None for an odd card."""
    try:
        return int(network_config(card).downsample)
    except Exception:  # noqa: BLE001 - odd card: no figure
        return None


def _cost(card: dict[str, Any]) -> dict[str, Any]:
    try:
        return estimate(card)
    except Exception:  # noqa: BLE001 - odd card: list the model without a cost
        return {"gflops": None, "cpu_seconds": None, "threads": None}


def _decoders(path: Path, card: dict[str, Any]) -> dict[str, Any]:
    """``decoders`` (usable, "fidelity" first) and ``decoders_refused`` (file, reason) of a
    model file's row."""
    scan = find_decoders(path, card)
    refused = [{"name": n, "file": str(p), "reason": why} for n, (p, why) in scan.refused.items()]
    return {"decoders": scan.names, "decoders_refused": refused}


def _kinds(local: list[tuple[Path, dict[str, Any]]]) -> list[str]:
    """default (the file ``--model default`` loads: the first so named on the search path),
    coarse (the model the default's card names for coarse codebooks: gqtok.codec.rate),
    retired (an earlier default, kept so that its files decode) or local (any other)."""
    default = next(
        ((p, c) for p, c in local if p.stem == DEFAULT_MODEL and not is_retired(p)), None
    )
    coarse = default[1].get("coarse", {}) if default else {}

    def kind(p: Path, c: dict[str, Any]) -> str:
        if is_retired(p):
            return "retired"
        if default is not None and p == default[0]:
            return "default"
        if coarse and c.get("weights_sha256") == coarse["weights_sha256"]:
            return "coarse"
        return "local"

    return [kind(p, c) for p, c in local]


def _local_row(path: Path, card: dict[str, Any], kind: str) -> dict[str, Any]:
    q = card.get("quantizer", {})
    cost = _cost(card)
    return {
        "name": card.get("name", path.stem),
        "file": path.stem,
        "kind": kind,
        "arch": card.get("arch", "unet"),
        "downsample": downsample(card),
        "dim": q.get("dim"),
        "codebook_size": q.get("size"),
        "bpp_nominal": nominal_bpp(card),
        **_heldout(card),
        "entropy": entropy_label(card),
        "available": True,
        "path": str(path),
        "source": str(path),
        "gflops_256": cost["gflops"],
        "est_cpu_s_256": cost["cpu_seconds"],
        "coarse": card.get("coarse"),
        **_decoders(path, card),
    }


def _released_row(name: str) -> dict[str, Any]:
    e = registry.ENTRIES[name]
    network = (ViTConfig(heads=e.heads or 12) if e.arch == "vit" else UNetConfig()).to_dict()
    card = {"arch": e.arch, "network": network, "quantizer": e.quantizer().to_dict()}
    cost = _cost(card)
    converted = registry.converted_path(e)
    decoders: dict[str, Any] = {"decoders": [FIDELITY], "decoders_refused": []}
    entropy = "uniform"  # until converted (gqtok convert fits no context model)
    heldout = _heldout({})
    if converted.exists():
        try:
            converted_card = read_card(converted)
            decoders = _decoders(converted, converted_card)
            entropy = entropy_label(converted_card)
            heldout = _heldout(converted_card)
        except GqtokError:  # a damaged conversion: the loader will say so
            pass
    return {
        "name": name,
        "file": None,
        "kind": "released",
        "arch": e.arch,
        "downsample": downsample(card),
        "dim": e.dim,
        "codebook_size": e.size,
        "bpp_nominal": e.bpp,
        **heldout,
        "entropy": entropy,
        "available": is_available(name),
        "path": str(converted) if converted.exists() else None,
        "source": f"hf://{e.repo}/{e.filename}@{e.revision}",
        "gflops_256": cost["gflops"],
        "est_cpu_s_256": cost["cpu_seconds"],
        "note": "" if e.filename_verified else "file name assumed from the config name",
        **decoders,
    }


def models_table(
    on_error: Callable[[Path, GqtokError], None] | None = None,
) -> list[dict[str, Any]]:
    """Local model files, then the released models (``available``: usable offline now); a
    local file with a bad card is left out and handed to ``on_error``.

    ``est_cpu_s_256`` is an estimate (FLOP count / assumed 20 GFLOP/s per thread, see
    gqtok.eval.cost) of one 256x256 encode + decode on this many threads, not a measurement.
    """
    local = list_local_models(on_error)
    kinds = _kinds(local)
    rows = [_local_row(path, card, kind) for (path, card), kind in zip(local, kinds, strict=True)]
    return rows + [_released_row(name) for name in registry.released_names()]


def model_for(model_id: str, weights_hash: bytes) -> tuple[Path, dict[str, Any]] | None:
    """The model file (and its card) of a .gq file's model (by the id and weights fingerprint
    in its header) if that model is here: a local model file, or a converted released model;
    None when it is not (decoding would need the model first)."""
    found = list_local_models()
    entry = registry.ENTRIES.get(model_id)
    if entry is not None and entry.repo:
        converted = registry.converted_path(entry)
        try:
            found.append((converted, read_card(converted)))
        except (GqtokError, OSError):
            pass
    named = local_models_named(model_id, weights_hash.hex(), found=found)
    if named:
        return named[0]
    return None

