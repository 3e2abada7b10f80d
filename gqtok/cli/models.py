"""Model management for the CLI: ``gqtok convert``, the rows of ``gqtok models``, and loading a
model with the quantizer options of encode/decode (``--group``, ``--codebook-size``...).

Kept apart from gqtok.cli so the big command module does not grow; ``register(app)`` adds the
commands to the Typer app.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from gqtok.cli.common import BetaOpt, GroupOpt, SeedOpt, SizeOpt, fail
from gqtok.errors import GqtokError, OutputError


def _nominal_bpp(card: dict[str, Any]) -> float | None:
    """Bits per pixel before entropy coding: NG tokens of log2(K) bits per f x f block."""
    import math

    from gqtok.nets.config import CONFIGS

    try:
        cfg = CONFIGS[str(card.get("arch", "unet"))].from_dict(card["network"])
        q = card.get("quantizer", {})
        ng = cfg.z_channels // int(q.get("dim", 16))
        return round(ng * math.log2(int(q.get("size", 65536))) / cfg.downsample**2, 4)
    except Exception:  # noqa: BLE001 - odd card: no figure
        return None


def _downsample(card: dict[str, Any]) -> int | None:
    from gqtok.nets.config import CONFIGS

    try:
        return int(CONFIGS[str(card.get("arch", "unet"))].from_dict(card["network"]).downsample)
    except Exception:  # noqa: BLE001 - odd card: no figure
        return None


def _local_rows() -> list[dict[str, Any]]:
    from gqtok.eval.cost import estimate
    from gqtok.zoo.load import list_local_models

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
    from gqtok.eval.cost import estimate
    from gqtok.nets.config import UNetConfig, ViTConfig
    from gqtok.zoo import registry
    from gqtok.zoo.hub import is_available
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
                "available": is_available(name),
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
        from gqtok.quant.config import ModelOptions
        from gqtok.zoo import registry
        from gqtok.zoo.hub import fetch_checkpoint
        from gqtok.zoo.load import convert_checkpoint

        out = Path(output)
        try:
            if out.exists() and not overwrite:
                raise OutputError("exists (use --overwrite)", str(out))
            src = checkpoint
            origin = None
            if not Path(src).exists() and src in registry.released_names():
                entry = registry.ENTRIES[src]
                ckpt, origin = fetch_checkpoint(entry)
                src, name = str(ckpt), name or entry.name
            if Path(src).resolve() == out.resolve():
                raise OutputError("would overwrite the input", str(out))
            opts = ModelOptions(group, codebook_size, seed, beta, heads, trust_pickle)
            card = convert_checkpoint(src, out, opts, name=name, origin=origin)
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
