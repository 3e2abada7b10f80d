"""Model management for the CLI: ``gqtok convert``, the rows of ``gqtok models``, and loading a
model with the quantizer options of encode/decode (``--group``, ``--codebook-size``...).

Kept apart from gqtok.cli so the big command module does not grow; ``register(app)`` adds the
commands to the Typer app.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .cli_common import BetaOpt, GroupOpt, SeedOpt, SizeOpt, fail
from .errors import GqtokError, OutputError

if TYPE_CHECKING:
    from .container import Header
    from .model import Model


def load_model_with_options(
    name_or_path: str | None = None,
    group: int | None = None,
    size: int | None = None,
    seed: int | None = None,
    beta: float | None = None,
    trust_pickle: bool = False,
    heads: int | None = None,
) -> Model:
    """load_model with the CLI's quantizer options (None = the model's own setting)."""
    from .model import DEFAULT_MODEL, load_model

    return load_model(
        name_or_path or DEFAULT_MODEL,
        dim=group,
        size=size,
        seed=seed,
        beta=beta,
        heads=heads,
        trust_pickle=trust_pickle,
    )


def model_for_header(
    header: Header, name_or_path: str | None = None, trust_pickle: bool = False
) -> Model:
    """The model a .gq file was written with, under the quantizer settings in its header.

    The model comes from ``name_or_path`` or else the header's model id (local models, then
    released ones). Files encoded with ``--group`` etc. thus decode without repeating them;
    the weights hash and codebook fingerprint are still checked by the codec.
    """
    import numpy as np

    from .model import QuantizerConfig, load_model, path_for_model_id

    path = name_or_path or str(path_for_model_id(header.model_id, trust_pickle))
    model = load_model(path, trust_pickle=trust_pickle)
    q = model.quant
    beta = q.beta if np.float32(q.beta) == np.float32(header.beta) else float(header.beta)
    return model.requantized(QuantizerConfig(header.dim, header.size, header.seed, beta))


def _nominal_bpp(card: dict[str, Any]) -> float | None:
    """Bits per pixel before entropy coding: NG tokens of log2(K) bits per f x f block."""
    import math

    from .model import ARCHS

    try:
        cfg = ARCHS[str(card.get("arch", "unet"))][0].from_dict(card["network"])
        q = card.get("quantizer", {})
        ng = cfg.z_channels // int(q.get("dim", 16))
        return round(ng * math.log2(int(q.get("size", 65536))) / cfg.downsample**2, 4)
    except Exception:  # noqa: BLE001 - odd card: no figure
        return None


def _downsample(card: dict[str, Any]) -> int | None:
    from .model import ARCHS

    try:
        return int(ARCHS[str(card.get("arch", "unet"))][0].from_dict(card["network"]).downsample)
    except Exception:  # noqa: BLE001 - odd card: no figure
        return None


def _local_rows() -> list[dict[str, Any]]:
    from .cost import estimate
    from .model import list_local_models

    rows = []
    for path, card in list_local_models():
        q = card.get("quantizer", {})
        try:
            cost = estimate(card)
        except Exception:  # noqa: BLE001 - odd card: list the model without a cost
            cost = {"gflops": None, "cpu_seconds": None, "threads": None}
        rows.append(
            {
                "name": card.get("name", path.stem),
                "file": path.stem,
                "kind": "local",
                "arch": card.get("arch", "unet"),
                "downsample": _downsample(card),
                "dim": q.get("dim"),
                "codebook_size": q.get("size"),
                "bpp_nominal": _nominal_bpp(card),
                "available": True,
                "path": str(path),
                "source": str(path),
                "gflops_256": cost["gflops"],
                "est_cpu_s_256": cost["cpu_seconds"],
            }
        )
    return rows


def _released_rows() -> list[dict[str, Any]]:
    from . import registry
    from .cost import estimate
    from .network import UNetConfig
    from .vit import ViTConfig

    rows = []
    for name in registry.released_names():
        e = registry.ENTRIES[name]
        network = (ViTConfig(heads=e.heads or 12) if e.arch == "vit" else UNetConfig()).to_dict()
        card = {"arch": e.arch, "network": network, "quantizer": e.quantizer().to_dict()}
        cost = estimate(card)
        converted = registry.converted_path(e)
        note = "" if e.filename_verified else "file name assumed from the config name"
        rows.append(
            {
                "name": name,
                "file": None,
                "kind": "released",
                "arch": e.arch,
                "downsample": _downsample(card),
                "dim": e.dim,
                "codebook_size": e.size,
                "bpp_nominal": e.bpp,
                "available": registry.is_available(name),
                "path": str(converted) if converted.exists() else None,
                "source": f"hf://{e.repo}/{e.filename}@{e.revision}",
                "gflops_256": cost["gflops"],
                "est_cpu_s_256": cost["cpu_seconds"],
                "note": note,
            }
        )
    return rows


def models_table() -> list[dict[str, Any]]:
    """Local model files, then the released models (``available``: usable offline now).

    ``est_cpu_s_256`` is an estimate (FLOP count / assumed 20 GFLOP/s per thread, see
    gqtok.cost) of one 256x256 encode + decode on this many torch threads, not a measurement.
    """
    return _local_rows() + _released_rows()


def register(app: typer.Typer) -> None:
    """Add ``convert`` to the gqtok Typer app."""

    @app.command()
    def convert(
        checkpoint: Annotated[
            str,
            typer.Argument(
                help="Reference checkpoint (.ckpt/.pt/.pth), state-dict .safetensors, a gqtok"
                " model file, or a released model name."
            ),
        ],
        output: Annotated[
            str, typer.Option("--output", "-o", help="gqtok model file to write (.safetensors).")
        ],
        group: GroupOpt = None,
        codebook_size: SizeOpt = None,
        seed: SeedOpt = None,
        beta: BetaOpt = None,
        heads: Annotated[
            int | None,
            typer.Option("--heads", min=1, help="ViT attention heads (default: width / 64)."),
        ] = None,
        name: Annotated[
            str | None, typer.Option("--name", help="Model name stored in .gq files.")
        ] = None,
        trust_pickle: Annotated[
            bool,
            typer.Option(
                "--trust-pickle", help="Allow checkpoints that need full unpickling (runs code)."
            ),
        ] = False,
        overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUTPUT.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print the card as JSON.")] = False,
    ) -> None:
        """Convert a reference checkpoint into a gqtok model file (weights + model card)."""
        from . import registry
        from .checkpoint import convert_checkpoint

        out = Path(output)
        try:
            if out.exists() and not overwrite:
                raise OutputError("exists (use --overwrite)", str(out))
            src = checkpoint
            origin = None
            if not Path(src).exists() and src in registry.released_names():
                entry = registry.ENTRIES[src]
                ckpt, origin = registry.fetch_checkpoint(entry)
                src, name = str(ckpt), name or entry.name
            if Path(src).resolve() == out.resolve():
                raise OutputError("would overwrite the input", str(out))
            card = convert_checkpoint(
                src,
                out,
                dim=group,
                size=codebook_size,
                seed=seed,
                beta=beta,
                heads=heads,
                name=name,
                trust_pickle=trust_pickle,
                origin=origin,
            )
        except GqtokError as e:
            raise fail(e) from None
        if as_json:
            typer.echo(json.dumps(card, indent=2, sort_keys=True))
            return
        q = card["quantizer"]
        sys.stderr.write(
            f"wrote {out}: {card['name']} ({card['arch']}, G={q['dim']}, K={q['size']},"
            f" seed {q['seed']}, beta {q['beta']}), weights {card['weights_sha256'][:16]}\n"
        )
