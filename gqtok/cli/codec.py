"""``gqtok encode``, ``gqtok decode`` and ``gqtok info``: images to .gq files and back.

Inputs are files, folders or ``-``; each maps to one output (``plan``). Every per-file step
(read, parse, model lookup, network, write) turns any failure into that file's one error line
and the batch goes on; the exit code is then 1 (one input: that error's own code).
"""

from __future__ import annotations

import io
import json
import os
import stat
import sys
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any

import typer

from gqtok.cli.common import (
    MAX_PIXELS,
    BatchOpt,
    BetaOpt,
    DecoderOpt,
    Device,
    DeviceOpt,
    Entropy,
    EntropyOpt,
    GrainOpt,
    GroupOpt,
    MaxPixelsOpt,
    MemoryOpt,
    ModelOpt,
    OverwriteOpt,
    PadMode,
    PadOpt,
    Precision,
    PrecisionOpt,
    QualityOpt,
    QuietOpt,
    RateQualityOpt,
    RealismOpt,
    RecursiveOpt,
    SeedOpt,
    SizeOpt,
    TargetBppOpt,
    ThreadsOpt,
    TrustOpt,
    WorkersOpt,
    check_group,
    chosen_decoder,
    load_or_exit,
    parse_budget,
    setup_device,
)
from gqtok.cli.outputs import check_output, emit, write_output
from gqtok.cli.ui import Bar, Failures, clean, fail, say, show, warn
from gqtok.errors import FormatError, GqtokError, InputError, ModelError, OutputError
from gqtok.format import container

if TYPE_CHECKING:
    from gqtok.model import Model

FORMATS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp", "bmp": ".bmp", "tiff": ".tif"}


class OutFormat(StrEnum):
    png = "png"
    jpeg = "jpeg"
    webp = "webp"
    bmp = "bmp"
    tiff = "tiff"


@dataclass
class Job:
    """One input and where its output goes ("-" for stdin/stdout)."""

    src: str
    dst: str
    display: str


def _walk(root: Path, exts: set[str] | frozenset[str], recursive: bool) -> list[Path]:
    it = root.rglob("*") if recursive else root.glob("*")
    return sorted(
        p for p in it if p.is_file() and p.suffix.lower() in exts and not p.name.startswith(".")
    )


def plan(
    inputs: list[str],
    output: str | None,
    exts: set[str] | frozenset[str],
    recursive: bool,
    suffix: str,
) -> list[Job]:
    """Map inputs (files, folders, "-") to outputs, mirroring folder structure under -o."""
    if not inputs:
        raise typer.BadParameter("give at least one input file, folder or '-'")
    expanded: list[tuple[str, Path | None]] = []  # (source, root folder it came from)
    for item in inputs:
        if item == "-":
            expanded.append(("-", None))
            continue
        p = Path(item)
        if p.is_dir():
            found = _walk(p, exts, recursive)
            if not found:
                warn(f"{p}: no matching files" + ("" if recursive else " (try --recursive)"))
            expanded.extend((str(f), p) for f in found)
        else:
            expanded.append((item, None))
    single = len(inputs) == 1 and not Path(inputs[0]).is_dir()
    if single:
        src = expanded[0][0]
        if output is None:
            dst = "-" if src == "-" else str(Path(src).with_suffix(suffix))
        elif output != "-" and Path(output).is_dir():
            dst = str(Path(output) / (Path(src).stem + suffix if src != "-" else "stdin" + suffix))
        else:
            dst = output
        return [Job(src, dst, "<stdin>" if src == "-" else src)]
    if output == "-":
        raise typer.BadParameter("-o - (stdout) needs exactly one input", param_hint="-o")
    if any(src == "-" for src, _ in expanded):
        raise typer.BadParameter("'-' (stdin) cannot be mixed with other inputs")
    jobs: list[Job] = []
    for src, root in expanded:
        sp = Path(src)
        if output is None:
            dst = sp.with_suffix(suffix)
        elif root is not None:
            dst = Path(output) / sp.relative_to(root).with_suffix(suffix)
        else:
            dst = Path(output) / (sp.stem + suffix)
        jobs.append(Job(src, str(dst), src))
    return jobs


def _records_to_stderr(jobs: list[Job]) -> bool:
    """JSON records go to stdout, unless stdout carries the image data."""
    return any(j.dst == "-" for j in jobs)


OutputOpt = Annotated[
    str | None,
    typer.Option("--output", "-o", help="Output file for one input ('-' = stdout), else a folder."),
]
RecordsOpt = Annotated[bool, typer.Option("--json", help="Print one JSON record per file.")]


def _rate_record(enc: Any) -> dict[str, Any]:
    """The --bpp search's result for a JSON record (nothing without --bpp)."""
    r = enc.rate
    if r is None:
        return {}
    # sizes_tried: settings (K, scale) tried, the name from before rate control had scales
    return {"target_bpp": r.target_bpp, "target_met": r.met, "sizes_tried": len(r.tried),
            "scale": r.scale}


def _scale_record(enc: Any) -> dict[str, Any]:
    """The coded size of an image coded at another scale (format version 4)."""
    h = enc.header
    if not h.scaled:
        return {}
    return {"coded_width": h.coded_width, "coded_height": h.coded_height}


def _encode_each(
    net: Model,
    ready: list[tuple[Job, Any]],
    pad: str,
    batch_size: int,
    budget: int | None,
    entropy: str,
    rate: dict[str, Any],
) -> list[tuple[Job, Any]]:
    """(job, EncodedFile or the exception) per job: one network batch, and if that fails, each
    image alone so that only the images that fail by themselves are lost."""
    from gqtok.codec import encode_pictures

    def run(items: list[tuple[Job, Any]]) -> list[Any]:
        pics = [pic for _, pic in items]
        return encode_pictures(net, pics, pad, batch_size, budget, entropy, **rate)

    try:
        return list(zip([job for job, _ in ready], run(ready), strict=True))
    except Exception as e:  # noqa: BLE001 - retried one by one below
        if len(ready) == 1:
            return [(ready[0][0], e)]
    out: list[tuple[Job, Any]] = []
    for item in ready:
        try:
            out.append((item[0], run([item])[0]))
        except Exception as e:  # noqa: BLE001 - this image's own failure
            out.append((item[0], e))
    return out


def encode(
    inputs: Annotated[list[str], typer.Argument(help="Images, folders, or '-' for stdin.")],
    output: OutputOpt = None,
    model: ModelOpt = None,
    recursive: RecursiveOpt = False,
    overwrite: OverwriteOpt = False,
    batch_size: BatchOpt = 4,
    pad: PadOpt = PadMode.replicate,
    entropy: EntropyOpt = Entropy.context,
    quality: RateQualityOpt = None,
    bpp: TargetBppOpt = None,
    scale: Annotated[
        float | None,
        typer.Option(
            "--scale",
            min=0.25,
            max=4,
            help="Code each image resampled by this factor (format version 4; decodes to the"
            " image's size). --quality and --bpp choose it for you.",
        ),
    ] = None,
    color: Annotated[
        bool | None,
        typer.Option(
            "--color/--no-color",
            show_default=False,
            help="Fit the colour correction and restoration filter to every image (format"
            " version 6: +0.2-0.4 dB, an extra decode). Default: only where the image is coded"
            " larger (--quality above 75), where it is cheap relative; --no-color: never.",
        ),
    ] = None,
    max_pixels: MaxPixelsOpt = MAX_PIXELS,
    group: GroupOpt = None,
    codebook_size: SizeOpt = None,
    seed: SeedOpt = None,
    beta: BetaOpt = None,
    trust_pickle: TrustOpt = False,
    memory_budget: MemoryOpt = None,
    as_json: RecordsOpt = False,
    device: DeviceOpt = Device.auto,
    precision: PrecisionOpt = Precision.fp32,
    threads: ThreadsOpt = None,
    workers: WorkersOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Encode images into .gq token files."""
    from gqtok.io.files import IMAGE_EXTS, read_input_bytes
    from gqtok.io.images import read_image
    from gqtok.io.pipeline import batched, default_io_workers, prefetch
    from gqtok.quant.config import ModelOptions

    jobs = plan(inputs, output, IMAGE_EXTS, recursive, ".gq")
    budget = parse_budget(memory_budget)
    check_group(model, group)
    if sum(x is not None for x in (quality, bpp, scale)) > 1:
        raise typer.BadParameter("give one of --quality, --bpp or --scale", param_hint="--quality")
    if (quality is not None or bpp is not None) and codebook_size is not None:
        raise typer.BadParameter(
            "--quality and --bpp choose the codebook size: leave out --codebook-size",
            param_hint="--codebook-size",
        )
    rate = {"quality": quality, "bpp": bpp, "scale": scale, "color": color}
    dev = setup_device(device, threads)

    def load(job: Job) -> Any:
        check_output(job.dst, overwrite, [job.src])
        return read_image(read_input_bytes(job.src), max_pixels=max_pixels, name=job.display)

    opts = ModelOptions(group, codebook_size, seed, beta, trust_pickle=trust_pickle)
    net = load_or_exit(model, opts, dev).to(dev, precision.value)
    to_stderr = _records_to_stderr(jobs)
    failures = Failures(quiet)
    totals = {"files": 0, "out_bytes": 0, "pixels": 0, "seconds": 0.0}
    with Bar("encoding", len(jobs), not quiet and not as_json) as bar:
        # Reading and decoding the next images overlaps the network (--workers threads).
        n_io = 0 if len(jobs) == 1 else (default_io_workers() if workers is None else workers)
        loaded = prefetch(load, jobs, workers=n_io)
        for chunk in batched(loaded, batch_size):
            ready = []
            for job, res in chunk:
                if isinstance(res, BaseException):
                    failures.add(res, job.display, InputError, "cannot read")
                    bar.advance(job.display)
                else:
                    ready.append((job, res))
            if not ready:
                continue
            t0 = time.perf_counter()
            done = _encode_each(net, ready, pad.value, batch_size, budget, entropy.value, rate)
            elapsed = (time.perf_counter() - t0) / len(ready)
            for job, enc in done:
                bar.advance(job.display)
                if isinstance(enc, BaseException):
                    failures.add(enc, job.display, InputError, "cannot encode")
                    continue
                try:
                    write_output(job.dst, enc.data, overwrite, [job.src])
                except Exception as e:  # noqa: BLE001 - this file's output failed
                    failures.add(e, job.dst, OutputError, "cannot write")
                    continue
                totals["files"] += 1
                totals["out_bytes"] += len(enc.data)
                totals["pixels"] += enc.header.width * enc.header.height
                totals["seconds"] += elapsed
                if enc.rate is not None and not enc.rate.met and not quiet:
                    warn(
                        f"{job.display}: {enc.rate.target_bpp:g} bpp is out of reach; nearest"
                        f" {enc.rate.bpp:.4f} bpp (codebook size {enc.rate.size},"
                        f" scale {enc.rate.scale:g})"
                    )
                if as_json:
                    emit(
                        {
                            "input": job.display,
                            "output": job.dst,
                            "width": enc.header.width,
                            "height": enc.header.height,
                            "bytes": len(enc.data),
                            "bpp": round(enc.bpp, 5),
                            "tokens": enc.header.num_tokens,
                            "bits_per_token": round(enc.bits_per_token, 4),
                            "entropy": enc.entropy,
                            "format_version": enc.header.file_version,
                            "codebook_size": enc.header.size,
                            **_scale_record(enc),
                            **_rate_record(enc),
                            "seconds": round(elapsed, 4),
                            "model": net.name,
                        },
                        to_stderr,
                    )
    if not quiet and not as_json and totals["files"] and not to_stderr:
        bpp = totals["out_bytes"] * 8 / max(1, totals["pixels"])
        say(
            f"encoded {totals['files']} file(s): {totals['out_bytes']} bytes, {bpp:.4f} bpp,"
            f" {totals['seconds']:.2f} s"
        )
    failures.exit(len(jobs))


_CHUNK = 1 << 20  # a .gq stream is read in pieces of this size, as far as its header says
_TRAILING_HELD = 1 << 24  # bytes past a stream's end kept for unpack's message, at most


def _read_upto(f: IO[bytes], n: int) -> bytes:
    """Up to n bytes of ``f`` (fewer only at its end), read in chunks: a stream that claims
    more than it holds costs only what it holds."""
    parts: list[bytes] = []
    while n > 0:
        chunk = f.read(min(n, _CHUNK))
        if not chunk:
            break
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


def _read_gq_stream(f: IO[bytes], name: str, max_pixels: int) -> bytes:
    """A .gq file from a stream: the header first (refused by its fields or pixels before
    anything else is read), then as many bytes as it says, plus a bounded look at any more."""
    head = _read_upto(f, container.MAX_HEADER_BYTES)
    header, total = container.peek_header(io.BytesIO(head), name)
    container.check_pixels(header, max_pixels, name)
    data = head + _read_upto(f, total + _TRAILING_HELD - len(head))
    if len(data) == total + _TRAILING_HELD and f.read(1):  # more than unpack should count
        raise FormatError(f"corrupt .gq file (has trailing bytes: header says {total})", name)
    return data  # short or long, decode_bytes says so exactly


def _open_error(e: OSError, name: str) -> InputError:
    if isinstance(e, FileNotFoundError):
        return InputError("no such file", name)
    if isinstance(e, IsADirectoryError):
        return InputError("is a folder, not a file", name)
    if isinstance(e, PermissionError):
        return InputError("permission denied", name)
    return InputError(f"cannot read ({e.strerror or e})", name)


def _read_gq_input(src: str, name: str, max_pixels: int) -> bytes:
    """The bytes of a .gq input (a path, or "-" for stdin), refused from its header alone when
    its size disagrees with the header (FormatError), a field is out of the format's limits,
    or the image is over ``max_pixels`` (DecompressionBombError): a crafted header cannot make
    gqtok read gigabytes before decode_bytes would refuse them."""
    try:
        if src == "-":
            return _read_gq_stream(sys.stdin.buffer, name, max_pixels)
        try:
            f = open(src, "rb")  # noqa: SIM115 - closed below
        except OSError as e:
            raise _open_error(e, name) from None
        with f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):  # a pipe or device given by its path
                return _read_gq_stream(f, name, max_pixels)
            header, total = container.peek_header(f, name, st.st_size)
            container.check_pixels(header, max_pixels, name)
            f.seek(0)
            return f.read(total)
    except OSError as e:
        raise InputError(f"cannot read ({e.strerror or e})", name) from None


def decode(
    inputs: Annotated[list[str], typer.Argument(help=".gq files, folders, or '-' for stdin.")],
    output: OutputOpt = None,
    fmt: Annotated[
        OutFormat | None,
        typer.Option("--format", "-f", help="Output image format (default: from -o, else png)."),
    ] = None,
    quality: QualityOpt = None,
    model: ModelOpt = None,
    decoder: DecoderOpt = "fidelity",
    realism: RealismOpt = None,
    grain: GrainOpt = None,
    recursive: RecursiveOpt = False,
    overwrite: OverwriteOpt = False,
    trust_pickle: TrustOpt = False,
    memory_budget: MemoryOpt = None,
    max_pixels: MaxPixelsOpt = MAX_PIXELS,
    as_json: RecordsOpt = False,
    device: DeviceOpt = Device.auto,
    precision: PrecisionOpt = Precision.fp32,
    threads: ThreadsOpt = None,
    workers: WorkersOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Decode .gq token files back into images (with the model's own decoder, or another of
    its decoders: --decoder, --realism; --grain adds film grain)."""
    import threading
    from collections import deque
    from concurrent.futures import Future, ThreadPoolExecutor

    from gqtok.codec import read_token_file, render_token_file
    from gqtok.io.images import encode_image_bytes, format_from_path
    from gqtok.io.pipeline import prefetch
    from gqtok.zoo.load import model_for_header

    if fmt is None and output not in (None, "-") and not Path(output).is_dir():
        guessed = format_from_path(output)
        fmt = OutFormat(guessed) if guessed in FORMATS else None
    out_fmt = (fmt or OutFormat.png).value
    jobs = plan(inputs, output, {".gq"}, recursive, FORMATS[out_fmt])
    budget = parse_budget(memory_budget)
    dev = setup_device(device, threads)
    cache: dict[tuple[Any, ...], Model] = {}
    loading = threading.Lock()  # worker threads resolve models; each is made once

    def resolve(header: Any) -> Model:
        key = (model or header.model_id, header.dim, header.size, header.seed, header.beta)
        with loading:
            if key not in cache:
                try:
                    cache[key] = model_for_header(header, model, trust_pickle).to(
                        dev, precision.value
                    )
                except GqtokError:
                    raise
                except Exception as e:  # noqa: BLE001 - e.g. codebook settings no model has
                    raise ModelError(f"no model for this file ({type(e).__name__}: {e})") from None
            chosen = chosen_decoder(cache[key], decoder, realism, grain)  # each made once
            _ = chosen.context_coder  # built here, once, not by two workers at a time
            return chosen

    to_stderr = _records_to_stderr(jobs)
    failures = Failures(quiet)

    def read(job: Job) -> tuple[bytes, Any]:
        """The file's bytes and its verified, entropy-decoded tokens (or why not): the CPU
        half of decoding, done ahead on worker threads while the network decodes."""
        check_output(job.dst, overwrite, [job.src])
        data = _read_gq_input(job.src, job.display, max_pixels)
        try:
            return data, read_token_file(data, resolve, job.display, max_pixels=max_pixels)
        except Exception as e:  # noqa: BLE001 - a crafted file raises anything
            return data, e

    def save(job: Job, image: Any) -> None:
        write_output(job.dst, encode_image_bytes(image, out_fmt, quality), overwrite, [job.src])

    def settle(job: Job, t0: float, header: Any, size: int, done: Future[None] | None) -> None:
        """Wait for one file's write (in input order) and report it."""
        bar.advance(job.display)
        try:
            if done is not None:
                done.result()
        except Exception as e:  # noqa: BLE001 - this file's output failed
            failures.add(e, job.dst, OutputError, "cannot write")
            return
        if as_json:
            used = resolve(header)  # cached: the variant that decoded this file
            emit(
                {"input": job.display, "output": job.dst, "width": header.width,
                 "height": header.height, "bytes": size, "format": out_fmt,
                 "seconds": round(time.perf_counter() - t0, 4), "model": header.model_id,
                 "decoder": used.decoder_name, "realism": used.realism, "grain": used.grain},
                to_stderr,
            )  # fmt: skip

    # The next files are read and entropy-decoded (--workers threads) and the previous image
    # compressed and written on I/O threads while the network decodes (PNG compression alone
    # is ~20 % of a batch's time). One worker by default: context decoding is wavefronts of
    # small numpy steps that hold the GIL, so a second thread overlaps nothing more (48 files
    # on 2 threads: 2.2 s against 1.65 s on one); the torch ops of the network release it.
    overlap = len(jobs) > 1
    n_io = (1 if workers is None else workers) if overlap else 0
    writer = ThreadPoolExecutor(1, thread_name_prefix="gqtok-write") if overlap else None
    pending: deque[tuple[Job, float, Any, int, Future[None] | None]] = deque()
    with Bar("decoding", len(jobs), not quiet and not as_json) as bar:
        try:
            for job, res in prefetch(read, jobs, workers=n_io, ahead=max(2, 2 * n_io)):
                t0 = time.perf_counter()
                step: tuple[str, type[GqtokError], str] = (job.display, InputError, "cannot read")
                try:
                    if isinstance(res, BaseException):
                        raise res
                    data, tokens = res
                    step = (job.display, FormatError, "cannot decode")
                    if isinstance(tokens, BaseException):
                        raise tokens
                    image, header = render_token_file(tokens, budget)
                    step = (job.dst, OutputError, "cannot write")
                    done = writer.submit(save, job, image) if writer else save(job, image)
                except Exception as e:  # noqa: BLE001 - a crafted file raises anything
                    while pending:
                        settle(*pending.popleft())
                    failures.add(e, *step)
                    bar.advance(job.display)
                    continue
                pending.append((job, t0, header, len(data), done))
                while len(pending) > 1 or (pending and pending[0][4] is None):
                    settle(*pending.popleft())
            while pending:
                settle(*pending.popleft())
        finally:
            if writer is not None:
                writer.shutdown(wait=True, cancel_futures=True)
    failures.exit(len(jobs))


_ENTROPY_NAMES = {
    "context": "context model",
    "frequency": "static frequency table",
    "uniform": "uniform",
    "prior": "the prior's table for this codebook size",
}
_MODEL_ENTROPY = {
    "context": "context model (files are format 2 unless --entropy static)",
    "static": "static frequency table (no context model fitted)",
    "uniform": "uniform (no table fitted)",
}


def info(
    file: Annotated[str, typer.Argument(help="A .gq file, or '-' for stdin.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the header as JSON.")] = False,
) -> None:
    """Show the header of a .gq file (no model needed), and which decoders can decode it
    when its model is here."""
    from gqtok.eval.catalog import model_for
    from gqtok.format.card import entropy_label, find_decoders
    from gqtok.format.container import read_header

    name = "<stdin>" if file == "-" else file
    try:  # streamed: the CRC of a file of any size is checked in 1 MiB chunks
        found = read_header(sys.stdin.buffer if file == "-" else file, name)
    except OSError as e:  # reading stdin (a path's OS errors are InputErrors already)
        raise fail(e, name, InputError, "cannot read") from None
    except Exception as e:  # noqa: BLE001 - a crafted file raises anything
        raise fail(e, name, FormatError, "cannot read the header") from None
    header = found.header
    rec = header.to_dict()
    here = model_for(header.model_id, header.weights_hash)
    rec.update(
        {
            "file": name,
            "bytes": found.file_bytes,
            "token_bytes": found.token_bytes,
            "alpha_bytes": found.alpha_bytes,
            "header_bytes": found.header_bytes,
            "tokens": header.num_tokens,
            "bits_per_token": round(found.token_bytes * 8 / header.num_tokens, 4),
            "bpp": round(found.file_bytes * 8 / (header.width * header.height), 5),
            "entropy": f"{_ENTROPY_NAMES[header.entropy_kind]} (format {header.version}"
            + (f", in a version {header.file_version} file)" if header.scaled else ")"),
            "decoders": None if here is None else find_decoders(*here).names,
            "model_entropy": None if here is None else entropy_label(here[1]),
        }
    )
    if as_json:
        write_output("-", json.dumps(rec, indent=2) + "\n", overwrite=True)
        return
    from rich.table import Table

    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for k, v in rec.items():
        if k == "decoders":
            v = "model not found here" if v is None else ", ".join(v)
        if k == "model_entropy":
            v = "model not found here" if v is None else _MODEL_ENTROPY[v]
        table.add_row(k, clean(v))
    show(table)


def register(app: typer.Typer) -> None:
    """Add ``encode``, ``decode`` and ``info`` to the gqtok Typer app."""
    app.command()(encode)
    app.command()(decode)
    app.command()(info)
