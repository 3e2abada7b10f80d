"""The ``gqtok`` command line: a thin Typer layer over gqtok's Python API.

Exit codes (also in the README): 0 ok; 1 some files of a batch failed; 2 usage error;
3 unreadable or refused input; 4 corrupt or unsupported .gq file; 5 model unavailable or
mismatched; 6 output cannot be written (exists without --overwrite, ...); 130 interrupted.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from gqtok.cli.common import (
    BetaOpt,
    Device,
    DeviceOpt,
    GroupOpt,
    MaxPixelsOpt,
    MemoryOpt,
    ModelOpt,
    OverwriteOpt,
    PadMode,
    PadOpt,
    QuietOpt,
    RecursiveOpt,
    SeedOpt,
    SizeOpt,
    ThreadsOpt,
    TrustOpt,
    parse_budget,
    setup_device,
)
from gqtok.errors import EXIT_PARTIAL, GqtokError, OutputError
from gqtok.io.files import IMAGE_EXTS
from gqtok.version import __version__

app = typer.Typer(
    name="gqtok",
    help="Image tokenizer and compressor built on Gaussian Quant (GQ).",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True, highlight=False)

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


def _walk(root: Path, exts: set[str], recursive: bool) -> list[Path]:
    it = root.rglob("*") if recursive else root.glob("*")
    return sorted(
        p for p in it if p.is_file() and p.suffix.lower() in exts and not p.name.startswith(".")
    )


def _plan(
    inputs: list[str], output: str | None, exts: set[str], recursive: bool, suffix: str
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
                err.print(
                    f"[yellow]warning:[/] {p}: no matching files"
                    + ("" if recursive else " (try --recursive)")
                )
            expanded.extend((str(f), p) for f in found)
        else:
            expanded.append((item, None))
    single = len(inputs) == 1 and not Path(inputs[0]).is_dir()
    jobs: list[Job] = []
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


def _progress(total: int, enabled: bool) -> Progress | None:
    if not enabled or total < 1 or not err.is_terminal:
        return None
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[name]}"),
        console=err,
        transient=True,
    )


def _record_sink(jobs: list[Job], as_json: bool) -> Any:
    """JSON records go to stdout, unless stdout carries image data."""
    if not as_json:
        return None
    return sys.stderr if any(j.dst == "-" for j in jobs) else sys.stdout


def _emit(sink: Any, record: dict[str, Any]) -> None:
    if sink is not None:
        sink.write(json.dumps(record) + "\n")
        sink.flush()


def _write(dst: str, data: bytes, overwrite: bool, src: str) -> None:
    from gqtok.io.files import atomic_write_bytes, same_file_guard

    if dst == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    if src != "-":
        same_file_guard(Path(src), Path(dst))
    atomic_write_bytes(Path(dst), data, overwrite=overwrite)


def _precheck(job: Job, overwrite: bool) -> None:
    if job.dst != "-" and Path(job.dst).exists():
        if job.src != "-" and Path(job.src).resolve() == Path(job.dst).resolve():
            raise OutputError("would overwrite the input", job.dst)
        if not overwrite:
            raise OutputError("exists (use --overwrite)", job.dst)


def _finish(failures: list[tuple[str, GqtokError]], total: int, quiet: bool) -> None:
    if not failures:
        return
    if total == 1:
        raise typer.Exit(failures[0][1].exit_code)
    if not quiet:
        err.print(f"[red]{len(failures)} of {total} files failed:[/]")
        for _, e in failures:
            sys.stderr.write(f"  {e}\n")
    raise typer.Exit(EXIT_PARTIAL)


def _report(e: GqtokError, quiet: bool) -> None:
    """One line per error, never wrapped, so scripts can grep it."""
    if not quiet:
        sys.stderr.write(f"error: {e}\n")
        sys.stderr.flush()


OutputOpt = Annotated[
    str | None,
    typer.Option("--output", "-o", help="Output file for one input ('-' = stdout), else a folder."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON record per file.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Images per network batch.")]


@app.command()
def encode(
    inputs: Annotated[list[str], typer.Argument(help="Images, folders, or '-' for stdin.")],
    output: OutputOpt = None,
    model: ModelOpt = None,
    recursive: RecursiveOpt = False,
    overwrite: OverwriteOpt = False,
    batch_size: BatchOpt = 4,
    pad: PadOpt = PadMode.replicate,
    max_pixels: MaxPixelsOpt = 200_000_000,
    group: GroupOpt = None,
    codebook_size: SizeOpt = None,
    seed: SeedOpt = None,
    beta: BetaOpt = None,
    trust_pickle: TrustOpt = False,
    memory_budget: MemoryOpt = None,
    as_json: JsonOpt = False,
    device: DeviceOpt = Device.auto,
    threads: ThreadsOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Encode images into .gq token files."""
    from gqtok.codec import encode_pictures
    from gqtok.io.files import read_input_bytes
    from gqtok.io.images import read_image
    from gqtok.io.pipeline import batched, default_io_workers, prefetch
    from gqtok.quant.config import ModelOptions
    from gqtok.zoo.load import load_with_options

    jobs = _plan(inputs, output, IMAGE_EXTS, recursive, ".gq")
    budget = parse_budget(memory_budget)
    dev = setup_device(device, threads)

    def load(job: Job) -> tuple[Any, int]:
        _precheck(job, overwrite)
        raw = read_input_bytes(job.src)
        return read_image(raw, max_pixels=max_pixels, name=job.display), len(raw)

    try:
        net = load_with_options(
            model, ModelOptions(group, codebook_size, seed, beta, trust_pickle=trust_pickle)
        ).to(dev)
    except GqtokError as e:
        _report(e, False)
        raise typer.Exit(e.exit_code) from None
    sink = _record_sink(jobs, as_json)
    failures: list[tuple[str, GqtokError]] = []
    totals = {"files": 0, "in_bytes": 0, "out_bytes": 0, "pixels": 0, "seconds": 0.0}
    prog = _progress(len(jobs), not quiet and not as_json)
    task = prog.add_task("encoding", total=len(jobs), name="") if prog else None
    if prog:
        prog.start()
    try:
        # Reading and decoding the next images overlaps the network (one I/O thread).
        loaded = prefetch(load, jobs, workers=0 if len(jobs) == 1 else default_io_workers())
        for chunk in batched(loaded, batch_size):
            pics, ok_jobs, sizes = [], [], []
            t0 = time.perf_counter()
            for job, res in chunk:
                if isinstance(res, BaseException):
                    if not isinstance(res, GqtokError):
                        raise res
                    failures.append((job.display, res))
                    _report(res, quiet)
                    if prog and task is not None:
                        prog.advance(task)
                    continue
                pics.append(res[0])
                ok_jobs.append(job)
                sizes.append(res[1])
            if not pics:
                continue
            try:
                results = encode_pictures(net, pics, pad.value, batch_size, budget)
            except GqtokError as e:
                for job in ok_jobs:
                    failures.append((job.display, e))
                _report(e, quiet)
                if prog and task is not None:
                    prog.advance(task, len(ok_jobs))
                continue
            elapsed = (time.perf_counter() - t0) / len(pics)
            for job, enc, n_in in zip(ok_jobs, results, sizes, strict=True):
                try:
                    _write(job.dst, enc.data, overwrite, job.src)
                except GqtokError as e:
                    failures.append((job.display, e))
                    _report(e, quiet)
                    continue
                finally:
                    if prog and task is not None:
                        prog.update(task, advance=1, name=Path(job.display).name)
                px = enc.header.width * enc.header.height
                totals["files"] += 1
                totals["in_bytes"] += n_in
                totals["out_bytes"] += len(enc.data)
                totals["pixels"] += px
                totals["seconds"] += elapsed
                _emit(
                    sink,
                    {
                        "input": job.display,
                        "output": job.dst,
                        "width": enc.header.width,
                        "height": enc.header.height,
                        "bytes": len(enc.data),
                        "bpp": round(enc.bpp, 5),
                        "tokens": enc.header.num_tokens,
                        "bits_per_token": round(enc.bits_per_token, 4),
                        "seconds": round(elapsed, 4),
                        "model": net.name,
                    },
                )
    finally:
        if prog:
            prog.stop()
    if not quiet and not as_json and totals["files"] and all(j.dst != "-" for j in jobs):
        bpp = totals["out_bytes"] * 8 / max(1, totals["pixels"])
        err.print(
            f"encoded {totals['files']} file(s): {totals['out_bytes']} bytes, {bpp:.4f} bpp,"
            f" {totals['seconds']:.2f} s"
        )
    _finish(failures, len(jobs), quiet)


@app.command()
def decode(
    inputs: Annotated[list[str], typer.Argument(help=".gq files, folders, or '-' for stdin.")],
    output: OutputOpt = None,
    fmt: Annotated[
        OutFormat | None,
        typer.Option("--format", "-f", help="Output image format (default: from -o, else png)."),
    ] = None,
    quality: Annotated[
        int | None, typer.Option("--quality", min=1, max=100, help="JPEG/WebP quality.")
    ] = None,
    model: ModelOpt = None,
    recursive: RecursiveOpt = False,
    overwrite: OverwriteOpt = False,
    trust_pickle: TrustOpt = False,
    memory_budget: MemoryOpt = None,
    as_json: JsonOpt = False,
    device: DeviceOpt = Device.auto,
    threads: ThreadsOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Decode .gq token files back into images."""
    from gqtok.codec import decode_bytes
    from gqtok.io.files import read_input_bytes
    from gqtok.io.images import encode_image_bytes, format_from_path
    from gqtok.io.pipeline import prefetch
    from gqtok.model import Model
    from gqtok.zoo.load import model_for_header

    if fmt is None and output not in (None, "-") and not Path(output).is_dir():
        guessed = format_from_path(output)
        fmt = OutFormat(guessed) if guessed in FORMATS else None
    out_fmt = (fmt or OutFormat.png).value
    jobs = _plan(inputs, output, {".gq"}, recursive, FORMATS[out_fmt])
    budget = parse_budget(memory_budget)
    dev = setup_device(device, threads)
    cache: dict[tuple[Any, ...], Model] = {}

    def resolve(header: Any) -> Model:
        key = (model or header.model_id, header.dim, header.size, header.seed, header.beta)
        if key not in cache:
            cache[key] = model_for_header(header, model, trust_pickle).to(dev)
        return cache[key]

    sink = _record_sink(jobs, as_json)
    failures: list[tuple[str, GqtokError]] = []
    prog = _progress(len(jobs), not quiet and not as_json)
    task = prog.add_task("decoding", total=len(jobs), name="") if prog else None

    def read(job: Job) -> bytes:
        _precheck(job, overwrite)
        return read_input_bytes(job.src)

    def save(job: Job, image: Any) -> None:
        _write(job.dst, encode_image_bytes(image, out_fmt, quality), overwrite, job.src)

    def settle(job: Job, t0: float, header: Any, size: int, done: Future[None] | None) -> None:
        """Wait for one file's write (in input order) and report it."""
        try:
            if done is not None:
                done.result()
        except GqtokError as e:
            failures.append((job.display, e))
            _report(e, quiet)
            return
        finally:
            if prog and task is not None:
                prog.update(task, advance=1, name=Path(job.display).name)
        _emit(sink, {"input": job.display, "output": job.dst, "width": header.width,
                     "height": header.height, "bytes": size, "format": out_fmt,
                     "seconds": round(time.perf_counter() - t0, 4), "model": header.model_id})

    # The next file is read and the previous image compressed and written on I/O threads
    # while the network decodes (PNG compression alone is ~20 % of a batch's time).
    overlap = len(jobs) > 1
    writer = ThreadPoolExecutor(1, thread_name_prefix="gqtok-write") if overlap else None
    pending: deque[tuple[Job, float, Any, int, Future[None] | None]] = deque()
    if prog:
        prog.start()
    try:
        for job, res in prefetch(read, jobs, workers=1 if overlap else 0, ahead=2):
            t0 = time.perf_counter()
            try:
                if isinstance(res, BaseException):
                    raise res
                image, header = decode_bytes(res, resolve, job.display, budget)
                if writer is None:
                    save(job, image)
            except GqtokError as e:
                while pending:
                    settle(*pending.popleft())
                failures.append((job.display, e))
                _report(e, quiet)
                if prog and task is not None:
                    prog.update(task, advance=1, name=Path(job.display).name)
                continue
            done = writer.submit(save, job, image) if writer is not None else None
            pending.append((job, t0, header, len(res), done))
            while len(pending) > 1 or (pending and pending[0][4] is None):
                settle(*pending.popleft())
        while pending:
            settle(*pending.popleft())
    finally:
        if writer is not None:
            writer.shutdown(wait=True, cancel_futures=True)
        if prog:
            prog.stop()
    _finish(failures, len(jobs), quiet)


@app.command()
def info(
    file: Annotated[str, typer.Argument(help="A .gq file, or '-' for stdin.")],
    as_json: JsonOpt = False,
) -> None:
    """Show the header of a .gq file (no model needed)."""
    from gqtok.format import container
    from gqtok.io.files import read_input_bytes

    name = "<stdin>" if file == "-" else file
    try:
        data = read_input_bytes(file)
        header, tokens, alpha = container.unpack(data, name)
    except GqtokError as e:
        _report(e, False)
        raise typer.Exit(e.exit_code) from None
    rec = header.to_dict()
    rec.update(
        {
            "file": name,
            "bytes": len(data),
            "token_bytes": len(tokens),
            "alpha_bytes": len(alpha),
            "header_bytes": len(data) - len(tokens) - len(alpha),
            "tokens": header.num_tokens,
            "bits_per_token": round(len(tokens) * 8 / header.num_tokens, 4),
            "bpp": round(len(data) * 8 / (header.width * header.height), 5),
        }
    )
    if as_json:
        typer.echo(json.dumps(rec, indent=2))
        return
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for k, v in rec.items():
        table.add_row(k, str(v))
    Console(highlight=False).print(table)


@app.command()
def models(as_json: JsonOpt = False) -> None:
    """List local model files and the released GQ models (and whether each is usable offline)."""
    from gqtok.cli.models import models_table
    from gqtok.zoo.paths import weights_dirs

    rows = models_table()
    if as_json:
        typer.echo(
            json.dumps({"models": rows, "search_path": [str(d) for d in weights_dirs()]}, indent=2)
        )
        return
    table = Table(title="gqtok models")
    table.add_column("name", no_wrap=True)
    for col in ("kind", "arch", "G", "K", "bpp", "here", "~s/256²"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["name"],
            r["kind"],
            r["arch"],
            str(r["dim"]),
            str(r["codebook_size"]),
            str(r["bpp_nominal"]),
            "yes" if r["available"] else "no",
            "" if r["est_cpu_s_256"] is None else f"{r['est_cpu_s_256']:.2f}",
        )
    out = Console(highlight=False)
    out.print(table)
    out.print("search path: " + os.pathsep.join(str(d) for d in weights_dirs()))
    out.print("released models: `--model NAME` downloads them (hub or mirror), see README")


_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


@app.command(context_settings=_PASS_THROUGH, add_help_option=False)
def train(ctx: typer.Context) -> None:
    """Train a GQ-VAE with the target divergence constraint (options: gqtok train --help)."""
    from gqtok.train import main as train_main

    train_main(["train", *ctx.args])


@app.command("export-model", context_settings=_PASS_THROUGH, add_help_option=False)
def export_model(ctx: typer.Context) -> None:
    """Export a training run as a gqtok model file (options: gqtok export-model --help)."""
    from gqtok.train import main as train_main

    train_main(["export", *ctx.args])


def _register_extensions() -> None:
    from gqtok.cli.eval import register as register_eval
    from gqtok.cli.export import register as register_export
    from gqtok.cli.models import register as register_models

    register_models(app)
    register_eval(app)
    register_export(app)


_register_extensions()


def main() -> None:
    """Console-script entry point: map errors to exit codes, never show a traceback for them."""
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(1)
    except GqtokError as e:
        _report(e, False)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
