"""Options shared by several commands (defined once, validated at parse time), device set-up
and the model loading every network command starts with.

A value outside what gqtok can store or compute is a usage error (exit 2) before any work:
the bounds are those of the .gq header (docs/format.md) and of the codebook builder.
"""

from __future__ import annotations

import math
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from gqtok.errors import ModelError, first_line
from gqtok.format.container import MAX_SIDE

if TYPE_CHECKING:
    from gqtok.model import Model
    from gqtok.quant.config import ModelOptions

SEED_MAX = 2**64 - 1  # u64 in the .gq header
SIZE_MAX = 2**24  # the codebook sizes gqtok.quant.codebook builds (u32 in the header)
GROUP_MAX = 21201  # SobolEngine's dimension limit (gqtok.quant.codebook.MAX_DIM; u16 in the header)
FLOAT32_MAX = 3.4028234663852886e38  # beta is a float32 in the header
PIXELS_MAX = MAX_SIDE * MAX_SIDE  # the largest image a .gq header describes
MAX_PIXELS = 200_000_000  # default --max-pixels, as gqtok.io.images.DEFAULT_MAX_PIXELS
THREADS_MAX = 1024
BATCH_MAX = 4096


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class PadMode(StrEnum):
    replicate = "replicate"
    reflect = "reflect"


class Entropy(StrEnum):
    context = "context"
    static = "static"


def _beta(value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and 0.0 <= value <= FLOAT32_MAX):
        raise typer.BadParameter(f"must be finite, from 0 to {FLOAT32_MAX:.4g}; got {value}")
    return value


def _decoder(value: str) -> str:
    from gqtok.format.card import check_decoder_name

    try:
        return check_decoder_name(value)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


def _realism(value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise typer.BadParameter(f"must be a number from 0 to 1, got {value}")
    return value


def _grain(value: float | None) -> float | None:
    from gqtok.io.grain import check_grain

    try:
        return None if value is None else check_grain(value)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


def parse_decoders(values: list[str] | None) -> list[tuple[str, float | None, float | None]]:
    """Repeated and/or comma-separated ``NAME``, ``NAME@R`` (R: realism in [0, 1]) and either
    with ``+grainS`` (S: film grain, 8-bit levels) -- the row labels -- as (name, realism,
    grain) triples, in order, without repeats; default the fidelity decoder alone."""
    from gqtok.format.card import FIDELITY

    out: list[tuple[str, float | None, float | None]] = []
    for item in [v.strip() for value in values or [] for v in value.split(",") if v.strip()]:
        spec, _, grain_text = item.partition("+grain")
        name, _, mix = spec.partition("@")
        try:
            realism = _realism(float(mix)) if mix else None
            grain = _grain(float(grain_text)) if grain_text else None
        except ValueError:
            raise typer.BadParameter(
                f"{item!r}: realism after '@' and grain after '+grain' must be numbers",
                param_hint="--decoder",
            ) from None
        triple = (_decoder(name), realism, grain)
        if triple not in out:
            out.append(triple)
    return out or [(FIDELITY, None, None)]


def _budget(value: str | None) -> str | None:
    """--memory-budget checked while parsing; the command parses it again into bytes."""
    if value is not None:
        parse_budget(value)
    return value


def parse_budget(text: str | None) -> int | None:
    """--memory-budget as bytes (None: the library default); a bad value is a usage error."""
    from gqtok.codec.budget import parse_memory

    if text is None:
        return None
    try:
        value = parse_memory(text)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--memory-budget") from None
    if value <= 0:
        raise typer.BadParameter(f"{text!r} is not a positive size", param_hint="--memory-budget")
    return value


# Options with the same meaning in every command that has them.
ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Model name (see `gqtok models`) or .safetensors path."),
]
DecoderOpt = Annotated[
    str,
    typer.Option(
        "--decoder",
        callback=_decoder,
        help="Decoder for the tokens: fidelity (the model's own) or another of the model's"
        " (`gqtok models`, e.g. perceptual); the tokens and .gq files are the same.",
    ),
]
DecodersOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--decoder",
        help="Decoders to measure, each its own row: --decoder fidelity,perceptual (repeatable;"
        " NAME@R blends with realism R). Default: fidelity.",
    ),
]
RealismOpt = Annotated[
    float | None,
    typer.Option(
        "--realism",
        callback=_realism,
        help="0..1: decoder weights (1-R)·fidelity + R·perceptual (or + the --decoder);"
        " 0 is the fidelity decoder, 1 the other, exactly.",
    ),
]
GrainOpt = Annotated[
    float | None,
    typer.Option(
        "--grain",
        callback=_grain,
        help="Add synthetic film grain of S 8-bit levels (e.g. 2) to the decoded pixels:"
        " sharper-looking, lower patch FID, ~0.6 dB less PSNR; the same pixels every time.",
        metavar="S",
    ),
]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")]
RecursiveOpt = Annotated[bool, typer.Option("--recursive", "-r", help="Descend into subfolders.")]
DeviceOpt = Annotated[Device, typer.Option("--device", help="Where the networks run.")]
ThreadsOpt = Annotated[
    int | None,
    typer.Option(
        "--threads", min=1, max=THREADS_MAX, help="CPU threads for torch (default: all cores)."
    ),
]
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress bar, table or summary.")
]
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
        max=GROUP_MAX,
        help="GQ group size G, a divisor of the latent channels (16/8/4: 0.25/0.5/1 bpp at f=16).",
    ),
]
SizeOpt = Annotated[
    int | None,
    typer.Option(
        "--codebook-size", min=2, max=SIZE_MAX, help="Codebook size K (default: model's)."
    ),
]
SeedOpt = Annotated[
    int | None,
    typer.Option("--seed", min=0, max=SEED_MAX, help="Codebook seed (default: model's)."),
]
BetaOpt = Annotated[
    float | None, typer.Option("--beta", callback=_beta, help="GQ prior weight beta (>= 0).")
]
MemoryOpt = Annotated[
    str | None,
    typer.Option(
        "--memory-budget",
        callback=_budget,
        help="Peak memory for the network, e.g. 2GB (default $GQTOK_MEMORY_BUDGET, else 4GB);"
        " larger images run in overlapping windows.",
    ),
]
PadOpt = Annotated[PadMode, typer.Option("--pad", help="How to fill up to the token grid.")]
EntropyOpt = Annotated[
    Entropy,
    typer.Option(
        "--entropy",
        help="context: the model's context model (.gq version 2, ~19 % smaller; the static"
        " table where the model has none); static: its frequency table (version 1, for"
        " older readers).",
    ),
]
MaxPixelsOpt = Annotated[
    int,
    typer.Option(
        "--max-pixels", min=1, max=PIXELS_MAX, help="Refuse larger images (decompression bombs)."
    ),
]
BatchOpt = Annotated[
    int, typer.Option("--batch-size", min=1, max=BATCH_MAX, help="Images per network batch.")
]
QualityOpt = Annotated[
    int | None, typer.Option("--quality", min=1, max=100, help="JPEG/WebP quality.")
]
RateQualityOpt = Annotated[
    float | None,
    typer.Option(
        "--quality",
        min=0,
        max=100,
        help="Quality 0..100 (75: the model's own setting; higher: the image coded larger,"
        " more bits; lower: smaller, then smaller codebooks). See README, rate control.",
    ),
]
TargetBppOpt = Annotated[
    float | None,
    typer.Option(
        "--bpp",
        min=0.001,
        max=64,
        help="Target bits per pixel: the scale (and codebook size) whose file comes"
        " closest, per image.",
    ),
]
MeasureColorOpt = Annotated[
    bool | None,
    typer.Option(
        "--color/--no-color",
        show_default=False,
        help="Measure files with the colour correction fitted to every image (gqtok"
        " encode --color), or to none (--no-color). Default: as gqtok encode.",
    ),
]
ResizeOpt = Annotated[
    int | None,
    typer.Option(
        "--resize", min=1, max=MAX_SIDE, help="Shorter side to N px first (paper protocol: 256)."
    ),
]
CropOpt = Annotated[
    int | None,
    typer.Option(
        "--center-crop",
        min=1,
        max=MAX_SIDE,
        help="Then a centred N x N crop (paper protocol: 256).",
    ),
]


class Precision(StrEnum):
    fp32 = "fp32"
    bf16 = "bf16"


PrecisionOpt = Annotated[
    Precision,
    typer.Option(
        "--precision",
        help="Network arithmetic. fp32: IEEE float32 on every device (TF32 off on GPUs), the"
        " reproducible tokens. bf16: autocast, fast on GPUs and CPUs with bf16 instructions"
        " (slower on others); the moments change slightly, so some tokens differ (3-7 % on"
        " photos). The GQ search itself is exact either way.",
    ),
]
WorkersOpt = Annotated[
    int | None,
    typer.Option(
        "--workers",
        min=0,
        max=256,
        help="Threads working ahead of the network: reading images (encode; default 1 on 2"
        " cores, up to 4), reading and entropy-decoding .gq files (decode; default 1). 0: inline.",
    ),
]


def setup_device(device: Device, threads: int | None, *, pipelined: bool = False) -> str:
    """Thread count and device for torch; passive OpenMP first (it only works before import).

    ``pipelined`` commands (export/import) overlap I/O threads with the network, so they also
    pin torch to one inter-op thread and all available cores (pipeline.configure_threads).
    """
    from gqtok.io.pipeline import configure_threads, passive_openmp, pick_device

    passive_openmp()  # spinning OpenMP threads beside other jobs were 3x slower on 2 cores
    import torch

    if pipelined:
        configure_threads(threads)
    elif threads:
        torch.set_num_threads(threads)
    try:
        return pick_device(device.value)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--device") from None


def _latent_channels(name: str) -> int | None:
    """Latent channels C of a model file or local model name, from its card (no weights)."""
    from gqtok.format.card import read_card
    from gqtok.nets.config import network_config
    from gqtok.zoo.paths import weights_dirs

    for path in [Path(name), *(d / f"{name}.safetensors" for d in weights_dirs())]:
        if path.suffix == ".safetensors" and path.is_file():
            try:
                return int(network_config(read_card(path)).z_channels)
            except Exception:  # noqa: BLE001 - the loader reports an unreadable model
                return None
    return None


def check_group(model: str | None, group: int | None) -> None:
    """--group must divide the model's latent channels: a usage error, told before loading."""
    from gqtok.zoo.paths import DEFAULT_MODEL

    channels = _latent_channels(model or DEFAULT_MODEL) if group else None
    if group and channels and channels % group:
        fits = ", ".join(str(d) for d in range(1, channels + 1) if channels % d == 0)
        raise typer.BadParameter(
            f"{group} does not divide the model's {channels} latent channels (use {fits})",
            param_hint="--group",
        )


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


def chosen_decoder(
    model: Model, decoder: str | None, realism: float | None, grain: float | None = None
) -> Model:
    """``model`` with --decoder/--realism/--grain applied and the decoder file read now, so
    that a decoder the model lacks, or a damaged one, fails before any work (ModelError)."""
    from gqtok.model import select_decoder

    try:
        chosen = select_decoder(model, decoder, realism, grain)
        _ = chosen.decoder  # reads the decoder file
    except ModelError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged decoder file raises anything
        raise ModelError(f"cannot load the decoder ({type(e).__name__}: {first_line(e)})") from None
    return chosen


def decoder_or_exit(
    model: Model, decoder: str | None, realism: float | None, name: str | None = None,
    grain: float | None = None,
) -> Model:
    """``chosen_decoder``, ending the command with one line and exit code 5 on failure."""
    from gqtok.cli.ui import fail

    try:
        return chosen_decoder(model, decoder, realism, grain)
    except Exception as e:  # noqa: BLE001 - reported as one line
        raise fail(e, name, ModelError, "cannot load the decoder") from None
