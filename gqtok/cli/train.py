"""``gqtok train`` and ``gqtok export-model``: pass-throughs to the training CLI, which parses
its own options (``gqtok train --help``)."""

from __future__ import annotations

import typer

_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def train(ctx: typer.Context) -> None:
    """Train a GQ-VAE with the target divergence constraint (options: gqtok train --help)."""
    from gqtok.train import main as train_main

    train_main(["train", *ctx.args])


def export_model(ctx: typer.Context) -> None:
    """Export a training run as a gqtok model file (options: gqtok export-model --help)."""
    from gqtok.train import main as train_main

    train_main(["export", *ctx.args])


def register(app: typer.Typer) -> None:
    """Add ``train`` and ``export-model`` to the gqtok Typer app."""
    app.command(context_settings=_PASS_THROUGH, add_help_option=False)(train)
    app.command("export-model", context_settings=_PASS_THROUGH, add_help_option=False)(
        export_model
    )
