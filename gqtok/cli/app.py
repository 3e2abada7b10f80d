"""The ``gqtok`` Typer app: the global options, the commands of each module, and ``main``.

Exit codes (also in the README): 0 ok; 1 some files of a batch failed; 2 usage error;
3 unreadable or refused input; 4 corrupt or unsupported .gq file; 5 model unavailable or
mismatched; 6 output cannot be written (exists without --overwrite, ...); 130 interrupted.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from gqtok.cli import codec, export, models, train
from gqtok.cli import eval as evaluation
from gqtok.errors import GqtokError
from gqtok.version import __version__

app = typer.Typer(
    name="gqtok",
    help="Image tokenizer and compressor built on Gaussian Quant (GQ).",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"gqtok {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """Turn images into entropy-coded GQ tokens (.gq) and back."""


for _module in (codec, models, train, evaluation, export):
    _module.register(app)


def main() -> None:
    """Console-script entry point: map errors to exit codes, never show a traceback for them."""
    from gqtok.cli.ui import report, say

    try:
        app()
    except KeyboardInterrupt:
        say("interrupted")
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(1)
    except GqtokError as e:
        report(e)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
