"""``gqtok train`` and ``gqtok export-model`` (pass-throughs to the training CLI, which parses
its own options: ``gqtok train --help``) and ``gqtok fit-context``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gqtok.cli.common import ModelOpt, OverwriteOpt

_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def train(ctx: typer.Context) -> None:
    """Train a GQ-VAE with the target divergence constraint (options: gqtok train --help)."""
    from gqtok.train import main as train_main

    train_main(["train", *ctx.args])


def export_model(ctx: typer.Context) -> None:
    """Export a training run as a gqtok model file (options: gqtok export-model --help)."""
    from gqtok.train import main as train_main

    train_main(["export", *ctx.args])


def fit_context(
    train_dir: Annotated[Path, typer.Argument(help="Folder of training photos.")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Model file to write (may be the input).")
    ],
    model: ModelOpt = None,
    val: Annotated[
        Path | None, typer.Option("--val", help="Folder of held-out photos to report on.")
    ] = None,
    epochs: Annotated[float, typer.Option(min=0.01, max=1000, help="Passes over the data.")] = 6.0,
    hidden: Annotated[int, typer.Option(min=8, max=1024, help="Hidden width of the MLP.")] = 128,
    bins: Annotated[int, typer.Option(min=2, max=64, help="Bins per cell axis.")] = 32,
    max_side: Annotated[
        int, typer.Option(min=0, help="Shrink photos to this longer side first (0: keep).")
    ] = 0,
    seed: Annotated[int, typer.Option(min=0, help="Training seed.")] = 0,
    prior_photos: Annotated[
        int,
        typer.Option(
            min=0,
            help="Training photos (at 512 px) for the prior over codebook sizes that rate"
            " control codes other K with; 0: none.",
        ),
    ] = 40,
    prior_only: Annotated[
        bool,
        typer.Option("--prior-only", help="Keep the context model; fit only the prior."),
    ] = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Fit a context entropy model to a model's tokens and write the model file with it
    (same weights; .gq files then use format version 2, about 19 % smaller)."""
    from gqtok.cli.common import load_or_exit
    from gqtok.cli.ui import fail, say
    from gqtok.errors import GqtokError, InputError
    from gqtok.train.context_fit import FitConfig, fit_and_save, fit_prior_and_save

    m = load_or_exit(model)
    cfg = FitConfig(bins=bins, hidden=hidden, epochs=epochs, seed=seed)
    try:
        if prior_only:
            fit_prior_and_save(m, train_dir, val, output, max(1, prior_photos), overwrite, say)
            say(f"wrote {output}: prior over codebook sizes refitted")
            return
        result = fit_and_save(
            m, train_dir, val, output, cfg, max_side, overwrite, log=say, prior_photos=prior_photos
        )
    except (FileNotFoundError, ValueError) as e:
        raise fail(e, str(train_dir), InputError, "cannot fit") from None
    except GqtokError as e:
        raise fail(e, str(output)) from None
    f = result.card["fitted"]
    saving = 100 * (1 - f["val_context_bits"] / f["val_static_bits"])
    say(
        f"wrote {output}: {f['val_static_bits']:.3f} -> {f['val_context_bits']:.3f} bits/token"
        f" on {f['val_photos']} held-out photos ({saving:.1f} % fewer)"
    )


def register(app: typer.Typer) -> None:
    """Add ``train`` and ``export-model`` to the gqtok Typer app."""
    app.command(context_settings=_PASS_THROUGH, add_help_option=False)(train)
    app.command("export-model", context_settings=_PASS_THROUGH, add_help_option=False)(
        export_model
    )
    app.command("fit-context")(fit_context)
