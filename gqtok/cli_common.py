"""Pieces every gqtok command module shares: the device option, error exit, memory budget.

Kept free of the Typer app so cli.py and the modules that register commands on it
(cli_eval, cli_export, cli_models) can all import it without an import cycle.
"""

from __future__ import annotations

import sys
from enum import StrEnum

import typer

from .errors import GqtokError


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


def setup_device(device: Device, threads: int | None, *, pipelined: bool = False) -> str:
    """Thread count and device for torch; passive OpenMP first (it only works before import).

    ``pipelined`` commands (export/import) overlap I/O threads with the network, so they also
    pin torch to one inter-op thread and all available cores (pipeline.configure_threads).
    """
    from .pipeline import configure_threads, passive_openmp

    passive_openmp()  # spinning OpenMP threads beside other jobs were 3x slower on 2 cores
    import torch

    if pipelined:
        configure_threads(threads)
    elif threads:
        torch.set_num_threads(threads)
    if device == Device.auto:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == Device.cuda and not torch.cuda.is_available():
        raise typer.BadParameter("CUDA is not available on this machine", param_hint="--device")
    return device.value


def fail(e: GqtokError) -> typer.Exit:
    """One grep-able line on stderr, and the error's documented exit code."""
    sys.stderr.write(f"error: {e}\n")
    sys.stderr.flush()
    return typer.Exit(e.exit_code)


def parse_budget(text: str | None) -> int | None:
    """--memory-budget as bytes (None: the library default); a bad value is a usage error."""
    from .largeimage import parse_memory

    if text is None:
        return None
    try:
        return parse_memory(text)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--memory-budget") from None
