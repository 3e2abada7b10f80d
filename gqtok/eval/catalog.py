"""The models a user can pick: local model files and the released models, with their rate and
an estimated CPU cost (the rows of ``gqtok models``).

Model cards are read from the safetensors header and the cost comes from precounted tables
(gqtok.eval.cost), so listing needs neither torch nor the weights.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from gqtok.eval.cost import estimate
from gqtok.format.card import read_card
from gqtok.nets.config import CONFIGS, UNetConfig, ViTConfig
from gqtok.zoo import registry
from gqtok.zoo.hub import is_available
from gqtok.zoo.paths import weights_dirs


def _network(card: dict[str, Any]) -> Any:
    return CONFIGS[str(card.get("arch", "unet"))].from_dict(card["network"])


def nominal_bpp(card: dict[str, Any]) -> float | None:
    """Bits per pixel before entropy coding: NG tokens of log2(K) bits per f x f block."""
    try:
        cfg = _network(card)
        q = card.get("quantizer", {})
        ng = cfg.z_channels // int(q.get("dim", 16))
        return round(ng * math.log2(int(q.get("size", 65536))) / cfg.downsample**2, 4)
    except Exception:  # noqa: BLE001 - odd card: no figure
        return None


def downsample(card: dict[str, Any]) -> int | None:
    """The network's pixels per latent position along one side (f), None for an odd card."""
    try:
        return int(_network(card).downsample)
    except Exception:  # noqa: BLE001 - odd card: no figure
        return None


def _cost(card: dict[str, Any]) -> dict[str, Any]:
    try:
        return estimate(card)
    except Exception:  # noqa: BLE001 - odd card: list the model without a cost
        return {"gflops": None, "cpu_seconds": None, "threads": None}


def local_model_files() -> list[tuple[Path, dict[str, Any]]]:
    """(path, card) of each readable model file in the weights folders, first folder first.

    The same walk as gqtok.zoo.load.list_local_models, which imports torch with the loader.
    """
    seen: set[Path] = set()
    found: list[tuple[Path, dict[str, Any]]] = []
    for folder in weights_dirs():
        files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
        for path in files:
            if path.resolve() in seen:
                continue
            seen.add(path.resolve())
            try:
                found.append((path, read_card(path)))
            except Exception:  # noqa: BLE001 - an unreadable file is simply not listed
                continue
    return found


def _local_row(path: Path, card: dict[str, Any]) -> dict[str, Any]:
    q = card.get("quantizer", {})
    cost = _cost(card)
    return {
        "name": card.get("name", path.stem),
        "file": path.stem,
        "kind": "local",
        "arch": card.get("arch", "unet"),
        "downsample": downsample(card),
        "dim": q.get("dim"),
        "codebook_size": q.get("size"),
        "bpp_nominal": nominal_bpp(card),
        "available": True,
        "path": str(path),
        "source": str(path),
        "gflops_256": cost["gflops"],
        "est_cpu_s_256": cost["cpu_seconds"],
    }


def _released_row(name: str) -> dict[str, Any]:
    e = registry.ENTRIES[name]
    network = (ViTConfig(heads=e.heads or 12) if e.arch == "vit" else UNetConfig()).to_dict()
    card = {"arch": e.arch, "network": network, "quantizer": e.quantizer().to_dict()}
    cost = _cost(card)
    converted = registry.converted_path(e)
    return {
        "name": name,
        "file": None,
        "kind": "released",
        "arch": e.arch,
        "downsample": downsample(card),
        "dim": e.dim,
        "codebook_size": e.size,
        "bpp_nominal": e.bpp,
        "available": is_available(name),
        "path": str(converted) if converted.exists() else None,
        "source": f"hf://{e.repo}/{e.filename}@{e.revision}",
        "gflops_256": cost["gflops"],
        "est_cpu_s_256": cost["cpu_seconds"],
        "note": "" if e.filename_verified else "file name assumed from the config name",
    }


def models_table() -> list[dict[str, Any]]:
    """Local model files, then the released models (``available``: usable offline now).

    ``est_cpu_s_256`` is an estimate (FLOP count / assumed 20 GFLOP/s per thread, see
    gqtok.eval.cost) of one 256x256 encode + decode on this many threads, not a measurement.
    """
    rows = [_local_row(path, card) for path, card in local_model_files()]
    return rows + [_released_row(name) for name in registry.released_names()]
