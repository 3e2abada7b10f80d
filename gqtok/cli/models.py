"""``gqtok models`` (what can be used, from gqtok.eval.catalog) and ``gqtok convert``
(a reference checkpoint into a gqtok model file)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from gqtok.cli.common import BetaOpt, GroupOpt, JsonOpt, OverwriteOpt, SeedOpt, SizeOpt, TrustOpt
from gqtok.cli.ui import clean, fail, say, show, warn
from gqtok.errors import ModelError, OutputError

__all__ = ["convert", "models", "models_table", "register"]


def models_table() -> list[dict]:
    """The rows of ``gqtok models`` (gqtok.eval.catalog.models_table); a model file with a bad
    card is left out with one warning line naming it."""
    from gqtok.eval.catalog import models_table as rows

    return rows(on_error=lambda _path, e: warn(f"skipped {e}"))


_ENTROPY = {
    "context": "context model (.gq format 2; --entropy static for format 1)",
    "static": "static frequency table (.gq format 1; no context model fitted)",
}


def models(as_json: JsonOpt = False) -> None:
    """List local model files and the released GQ models (and whether each is usable offline)."""
    import os

    from gqtok.cli.outputs import write_output
    from gqtok.zoo.paths import weights_dirs

    rows = models_table()
    search = [str(d) for d in weights_dirs()]
    if as_json:
        text = json.dumps({"models": rows, "search_path": search}, indent=2) + "\n"
        write_output("-", text, overwrite=True)
        return
    from rich.table import Table

    table = Table(title="gqtok models")
    table.add_column("name", no_wrap=True)
    # 80 columns: the architecture is in the names of the released models, and in --json
    for col in ("kind", "G", "K", "bpp", "here", "~s/256²"):
        table.add_column(col)
    notes = []  # decoders besides the model's own, under the table (it fills 80 columns)
    measured = [r for r in rows if r["bpp_heldout"] is not None]
    if measured:
        names = ", ".join(f"{clean(r['name'])} ({r['heldout_photos']} photos)" for r in measured)
        notes.append(f"bpp at the model's own K, measured on held-out photos: {names};"
                     " the others: log2 K bits a token, before entropy coding")
    for r in rows:
        cost = r["est_cpu_s_256"]
        bpp = r["bpp_nominal"] if r["bpp_heldout"] is None else r["bpp_heldout"]
        cells = (r["name"], r["kind"], r["dim"], r["codebook_size"])
        table.add_row(
            *(clean(c) for c in cells),
            "" if bpp is None else f"{bpp:.3f}",
            "yes" if r["available"] else "no",
            "" if cost is None else f"{cost:.2f}",
        )
        if r["entropy"] != "uniform":
            notes.append(f"entropy coding of {r['name']}: {_ENTROPY[r['entropy']]}")
        if r.get("coarse"):
            c = r["coarse"]
            notes.append(f"{r['name']} codes K < {c['below']} with {clean(c['model'])} (same"
                         " tokens, a decoder trained on small codebooks)")
        if len(r["decoders"]) > 1:
            notes.append(f"decoders of {r['name']} ({r['path']}): {', '.join(r['decoders'])}")
        for bad in r["decoders_refused"]:
            warn(f"{bad['file']}: not used: {bad['reason']}")
    show(
        table,
        *notes,
        "search path: " + os.pathsep.join(search),
        "released models: `--model NAME` downloads them (hub or mirror), see README",
    )


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
        typer.Option("--heads", min=1, max=1024, help="ViT attention heads (default: width / 64)."),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="Model name stored in .gq files.")
    ] = None,
    trust_pickle: TrustOpt = False,
    overwrite: OverwriteOpt = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the card as JSON.")] = False,
) -> None:
    """Convert a reference checkpoint into a gqtok model file (weights + model card)."""
    from gqtok.cli.outputs import check_output, write_output
    from gqtok.quant.config import ModelOptions
    from gqtok.zoo import registry
    from gqtok.zoo.hub import fetch_checkpoint
    from gqtok.zoo.load import convert_checkpoint

    out = Path(output)
    try:
        check_output(out, overwrite, [checkpoint])
        src, origin = checkpoint, None
        if not Path(src).exists() and src in registry.released_names():
            entry = registry.ENTRIES[src]
            ckpt, origin = fetch_checkpoint(entry)
            src, name = str(ckpt), name or entry.name
            check_output(out, overwrite, [src])
        opts = ModelOptions(group, codebook_size, seed, beta, heads, trust_pickle)
        card = convert_checkpoint(src, out, opts, name=name, origin=origin)
    except OutputError as e:
        raise fail(e) from None
    except Exception as e:  # noqa: BLE001 - a corrupt checkpoint raises anything
        raise fail(e, checkpoint, ModelError, "cannot convert") from None
    if as_json:
        write_output("-", json.dumps(card, indent=2, sort_keys=True) + "\n", overwrite=True)
        return
    q = card["quantizer"]
    say(
        f"wrote {out}: {card['name']} ({card['arch']}, G={q['dim']}, K={q['size']},"
        f" seed {q['seed']}, beta {q['beta']}), weights {card['weights_sha256'][:16]}"
    )


def register(app: typer.Typer) -> None:
    """Add ``models`` and ``convert`` to the gqtok Typer app."""
    app.command()(models)
    app.command()(convert)
