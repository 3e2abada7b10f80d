"""Options shared by several commands (defined once), device set-up and the model loading
every network command starts with."""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

import typer

from gqtok.errors import ModelError

if TYPE_CHECKING:
    from gqtok.model import Model
    from gqtok.quant.config import ModelOptions

MAX_PIXELS = 200_000_000  # default --max-pixels, as gqtok.io.images.DEFAULT_MAX_PIXELS


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class PadMode(StrEnum):
    replicate = "replicate"
    reflect = "reflect"


def parse_budget(text: str | None) -> int | None:
    """--memory-budget as bytes (None: the library default); a bad value is a usage error."""
    from gqtok.codec.budget import parse_memory

    if text is None:
        return None
    try:
        return parse_memory(text)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--memory-budget") from None


# Options with the same meaning in every command that has them.
ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Model name (see `gqtok models`) or .safetensors path."),
]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")]
RecursiveOpt = Annotated[bool, typer.Option("--recursive", "-r", help="Descend into subfolders.")]
DeviceOpt = Annotated[Device, typer.Option("--device", help="Where the networks run.")]
ThreadsOpt = Annotated[
    int | None,
    typer.Option("--threads", min=1, help="CPU threads for torch (default: all cores)."),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar, table or summary.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout (for scripts).")]
TrustOpt = Annotated[
    bool,
    typer.Option("--trust-pickle", help="Allow checkpoints that need unpickling (runs code)."),
]
GroupOpt = Annotated[
    int | None,
    typer.Option(
        "--group",
        min=1,
        help="GQ group size G (16/8/4: 0.25/0.5/1 bpp at f=16).",
    ),
]
SizeOpt = Annotated[
    int | None,
    typer.Option("--codebook-size", min=2, help="Codebook size K (default: model's)."),
]
SeedOpt = Annotated[
    int | None,
    typer.Option("--seed", min=0, help="Codebook seed (default: model's)."),
]
BetaOpt = Annotated[float | None, typer.Option("--beta", help="GQ prior weight beta.")]
MemoryOpt = Annotated[
    str | None,
    typer.Option(
        "--memory-budget",
        help="Peak memory for the network, e.g. 2GB (default $GQTOK_MEMORY_BUDGET, else 4GB);"
        " larger images run in overlapping windows.",
    ),
]
PadOpt = Annotated[PadMode, typer.Option("--pad", help="How to fill up to the token grid.")]
MaxPixelsOpt = Annotated[
    int,
    typer.Option("--max-pixels", min=1, help="Refuse larger images (decompression bombs)."),
]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Images per network batch.")]
QualityOpt = Annotated[
    int | None, typer.Option("--quality", min=1, max=100, help="JPEG/WebP quality.")
]
ResizeOpt = Annotated[
    int | None,
    typer.Option("--resize", min=1, help="Shorter side to N px first (paper protocol: 256)."),
]
CropOpt = Annotated[
    int | None,
    typer.Option(
        "--center-crop",
        min=1,
        help="Then a centred N x N crop (paper protocol: 256).",
    ),
]


def setup_device(device: Device, threads: int | None, *, pipelined: bool = False) -> str:
    """Thread count and device for torch; passive OpenMP first (it only works before import).

    ``pipelined`` commands (export/import) overlap I/O threads with the network, so they also
    pin torch to one inter-op thread and all available cores (pipeline.configure_threads).
    """
    from gqtok.io.pipeline import configure_threads, passive_openmp

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


def load_or_exit(name: str | None, opts: ModelOptions | None = None, device: str = "cpu") -> Model:
    """The model for --model (default model if None) on ``device``; any failure ends the command
    with one line and exit code 5."""
    from gqtok.cli.ui import fail
    from gqtok.zoo.load import load_with_options
    from gqtok.zoo.paths import DEFAULT_MODEL

    try:
        return load_with_options(name, opts).to(device)
    except Exception as e:  # noqa: BLE001 - a corrupt model file raises anything
        raise fail(e, name or DEFAULT_MODEL, ModelError, "cannot load the model") from None
