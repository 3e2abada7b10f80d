"""The ``gqtok`` Typer app: the global options, the commands of each module, and ``main``.

Exit codes (also in the README): 0 ok; 1 some files of a batch failed; 2 usage error;
3 unreadable or refused input; 4 corrupt or unsupported .gq file; 5 model unavailable or
mismatched; 6 output cannot be written (exists without --overwrite, a full disk or closed
stdout, ...); 130 interrupted; 141 stdout closed by its reader (broken pipe, no message).
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Annotated

import typer

from gqtok.cli import codec, export, models, stdio, train
from gqtok.cli import eval as evaluation
from gqtok.errors import GqtokError, OutputError
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


def _quiet_libraries() -> None:
    """One line per failure: no Python warnings (Pillow's DecompressionBombWarning, ...) unless
    asked for with -W / PYTHONWARNINGS, and no Hugging Face Hub retry or warning logs."""
    if not sys.warnoptions:
        import warnings

        warnings.simplefilter("ignore")
    os.environ.setdefault("HF_HUB_VERBOSITY", "error")


def main() -> None:
    """Console-script entry point: map errors to exit codes, never show a traceback for them."""
    from gqtok.cli.ui import report, say

    stdio.guard()
    _quiet_libraries()
    try:
        try:
            app()
        finally:
            sys.stdout.flush()  # a full disk or a closed pipe shows here at the latest
    except stdio.StdoutError as e:
        stdio.silence()
        if e.errno == errno.EPIPE:
            sys.exit(stdio.EXIT_PIPE)
        say(f"error: <stdout>: {e}")
        sys.exit(OutputError.exit_code)
    except KeyboardInterrupt:
        say("interrupted")
        sys.exit(130)
    except GqtokError as e:
        report(e)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
