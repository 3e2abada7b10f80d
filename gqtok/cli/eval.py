"""``gqtok eval`` and ``gqtok compare``: quality numbers on the command line.

Human output is a rich table on stdout; ``--json -`` makes stdout pure JSON for scripts.
Images that fail are reported one line each on stderr and the run carries on; the exit code is
then 1 (EXIT_PARTIAL). Report files follow the output rules of gqtok.cli.outputs.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from gqtok import dist
from gqtok.cli.common import (
    MAX_PIXELS,
    CropOpt,
    DecoderOpt,
    DecodersOpt,
    Device,
    DeviceOpt,
    GrainOpt,
    MaxPixelsOpt,
    MeasureColorOpt,
    ModelOpt,
    OverwriteOpt,
    Precision,
    PrecisionOpt,
    QuietOpt,
    RateQualityOpt,
    RealismOpt,
    RecursiveOpt,
    ResizeOpt,
    TargetBppOpt,
    ThreadsOpt,
    decoder_or_exit,
    load_or_exit,
    parse_decoders,
    setup_device,
)
from gqtok.cli.outputs import check_folder, check_output, write_output
from gqtok.cli.ui import Bar, Failures, clean, fail, say, show
from gqtok.dist import World
from gqtok.errors import EXIT_PARTIAL, EXIT_USAGE, GqtokError, OutputError, UsageError

if TYPE_CHECKING:
    from rich.table import Table

    from gqtok.eval.compare import CompareReport
    from gqtok.eval.evaluate import EvalReport
    from gqtok.model import Model

LABELS = {
    "bpp": "bpp (.gq file)",
    "psnr": "PSNR (dB)",
    "ssim": "SSIM",
    "msssim": "MS-SSIM",
    "stlpips_alex": "ST-LPIPS (AlexNet)",
    "stlpips_vgg": "ST-LPIPS (VGG)",
    "lpips": "LPIPS (AlexNet)",
    "fid": "rFID",
    "kid": "KID",
    "patch_fid": "patch FID (256 px)",
    "patch_kid": "patch KID",
}


def _split(values: list[str] | None) -> list[str]:
    """Options given repeatedly and/or comma-separated, flattened."""
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


def _fmt(v: float | None, digits: int = 4) -> str:
    if v is None:
        return "—"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return f"{v:.{digits}f}"


def _eval_table(rep: EvalReport) -> Table:
    from rich.table import Table

    proto = rep.protocol
    how = (
        f"resize {proto['resize']}, centre crop {proto['center_crop']}"
        if proto["resize"] or proto["center_crop"]
        else "native resolution"
    )
    if "quality" in proto:
        how += f", quality {proto['quality']:g}"
    if "target_bpp" in proto:
        how += f", target {proto['target_bpp']:g} bpp"
    table = Table(title=f"gqtok eval: {clean(rep.model)}, {len(rep.rows)} image(s), {how}")
    for col in ("metric", "mean", "std", "images"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    digits = {"bpp": 4, "psnr": 2}
    for key, st in rep.summary.items():
        d = digits.get(key, 4)
        table.add_row(LABELS.get(key, key), _fmt(st.mean, d), _fmt(st.std, d), str(st.n))
    if "fid" in rep.metrics and "fid" not in rep.unavailable:
        table.add_row(LABELS["fid"], _fmt(rep.fid, 2), "", str(rep.feature_images))
    if rep.kid is not None:
        table.add_row(
            "KID x 1000",
            _fmt(rep.kid["mean"] * 1000, 3),
            _fmt(rep.kid["std"] * 1000, 3),
            f"{rep.feature_images} ({rep.kid['subsets']} subsets of {rep.kid['subset_size']})",
        )
    if "patch_fid" in rep.metrics and "patch_fid" not in rep.unavailable:
        table.add_row(LABELS["patch_fid"], _fmt(rep.patch_fid, 2), "", f"{rep.patches} patches")
    if rep.patch_kid is not None:
        table.add_row(
            "patch KID x 1000",
            _fmt(rep.patch_kid["mean"] * 1000, 3),
            _fmt(rep.patch_kid["std"] * 1000, 3),
            f"{rep.patches} patches ({rep.patch_kid['subsets']} subsets"
            f" of {rep.patch_kid['subset_size']})",
        )
    if rep.usage is not None:
        u = rep.usage
        table.add_row(
            "codebook usage (%)", f"{u.usage_pct:.2f}", "", f"{u.used} of {u.codebook_size}"
        )
        table.add_row(
            "token entropy (bits)", f"{u.entropy_bits:.3f}", "", f"max {u.max_entropy_bits:.0f}"
        )
    return table


def _per_image_csv(rep: EvalReport) -> str:
    from gqtok.eval.evaluate import ImageRow

    cols = list(ImageRow.__dataclass_fields__)
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=cols)
    w.writeheader()
    for r in rep.rows:
        d = asdict(r)
        w.writerow({k: "" if d[k] is None else d[k] for k in cols})
    return text.getvalue()


def _compare_table(rep: CompareReport) -> Table:
    from rich.table import Table

    from gqtok.eval.compare import summary_numbers

    table = Table(title="gqtok compare: metrics interpolated at matched bpp")
    table.add_column("target", overflow="fold")
    table.add_column("codec", overflow="fold")
    patches = any("patch_fid" in row for row in rep.summary)
    cols = ["images", "bpp", "PSNR", "MS-SSIM", "ST-LPIPS"]
    for col in cols + (["patch FID", "patch KID x 1000", "patches"] if patches else []):
        table.add_column(col, justify="right", no_wrap=True)
    for row in rep.summary:
        cells = [
            clean(row["target"]),
            clean(row["codec"]),
            f"{row['images']}/{row['images'] + row['excluded']}",
            *(_fmt(v, digits) for v, digits in summary_numbers(row, patches)),
        ]
        table.add_row(*cells)
    return table


def _bd_table(rep: CompareReport) -> Table:
    from rich.table import Table

    table = Table(title="Bjøntegaard deltas against the reference (mean-over-images curves)")
    table.add_column("curve", overflow="fold")
    table.add_column("reference", overflow="fold")
    for col in ("points (curve/ref.)", "BD-rate PSNR (%)", "BD-rate MS-SSIM (%)", "BD-PSNR (dB)"):
        table.add_column(col, justify="right")
    for row in rep.bd:
        table.add_row(
            clean(row["curve"]),
            clean(row["reference"]),
            f"{row['points']}/{row['reference_points']}",
            _fmt(row["bd_rate_psnr"], 1),
            _fmt(row["bd_rate_msssim"], 1),
            _fmt(row["bd_psnr"], 2),
        )
    table.caption = "BD-rate < 0 / BD-PSNR > 0: the curve does better than the reference"
    return table


def _rates(bpp: list[str] | None, inputs: list[str]) -> tuple[list[float], list[str]]:
    """Target rates and real inputs: ``--bpp 0.25 0.5 1.0`` leaves 0.5 and 1.0 among the
    positional arguments, so numbers there that are not existing paths are rates too."""
    rates, rest = [], []
    for item in inputs:
        try:
            value = float(item)
        except ValueError:
            value = None
        if bpp is not None and value is not None and not Path(item).exists():
            rates.append(value)
        else:
            rest.append(item)
    try:
        rates = [float(v) for v in _split(bpp)] + rates
    except ValueError:
        raise typer.BadParameter("rates must be numbers, e.g. --bpp 0.25 0.5 1.0") from None
    if any(not (math.isfinite(r) and r > 0) for r in rates):
        raise typer.BadParameter("rates must be positive numbers", param_hint="--bpp")
    return sorted(set(rates or [0.25, 0.5, 1.0])), rest


def _images(inputs: list[str], recursive: bool) -> list[Path]:
    from gqtok.eval.evaluate import collect_images

    paths = collect_images(inputs, recursive)
    if not paths:
        say("no images found" + ("" if recursive else " (try --recursive)"))
        raise typer.Exit(EXIT_USAGE)
    return paths


def _check_reports(dests: list[str | Path], overwrite: bool, paths: list[Path]) -> None:
    """Refuse report files that exist (without --overwrite), are input images or cannot be
    written, before the run."""
    try:
        for dest in dests:
            check_output(dest, overwrite, paths)
            check_folder(dest)
    except OutputError as e:
        raise fail(e) from None


def _measure(
    paths: list[Path],
    quiet: bool,
    run: Callable[[list[Path], Callable[[str, str | None], None]], Any],
    world: World | None = None,
) -> tuple[Any, Failures]:
    """``run(paths, on_image)`` under the progress bar, one error line per failed image. Under
    torchrun only rank 0 shows a bar (of its own share); each rank prints its own failures, so
    every failed image is told once, when it fails."""
    world = world or World()
    failures = Failures(quiet)
    with Bar("measuring", len(world.part(paths)), not quiet and world.is_main) as bar:

        def on_image(name: str, error: str | None) -> None:
            if error:
                failures.add(GqtokError(error), name)
            bar.advance(name)

        try:
            return run(paths, on_image), failures
        except Exception as e:  # noqa: BLE001 - a failure outside one image's step
            raise fail(e, None, GqtokError, "stopped") from None


def _plan(
    world: World, inputs: list[str], recursive: bool, reports: list[str | Path], overwrite: bool
) -> list[Path]:
    """The images, listed and the report files checked by rank 0 alone, its decision sent to
    every rank: all start the same work on the same list, or all stop (a rank that left early
    would leave the others waiting in the final gather)."""
    code, paths = 0, []
    if world.is_main:
        try:
            paths = _images(inputs, recursive)
            _check_reports(reports, overwrite, paths)
        except typer.Exit as e:
            code = e.exit_code
    code, paths = world.broadcast((code, paths))
    if code:
        raise typer.Exit(code)  # rank 0 said why
    return paths


InputsArg = Annotated[list[str], typer.Argument(help="Images and/or folders of images.")]


def eval_cmd(
    inputs: InputsArg,
    model: ModelOpt = None,
    decoder: DecoderOpt = "fidelity",
    realism: RealismOpt = None,
    grain: GrainOpt = None,
    quality: RateQualityOpt = None,
    bpp: TargetBppOpt = None,
    color: MeasureColorOpt = None,
    metrics: Annotated[
        list[str] | None,
        typer.Option(
            "--metrics",
            help="Comma-separated subset of: psnr, ssim, msssim, stlpips_alex, stlpips_vgg,"
            " lpips, fid, kid, patch_fid, patch_kid (default: all).",
        ),
    ] = None,
    json_out: Annotated[
        str | None, typer.Option("--json", help="Write the report as JSON ('-' = stdout).")
    ] = None,
    per_image: Annotated[
        str | None, typer.Option("--per-image", help="Write per-image rows as CSV ('-' = stdout).")
    ] = None,
    resize: ResizeOpt = None,
    center_crop: CropOpt = None,
    recursive: RecursiveOpt = False,
    overwrite: OverwriteOpt = False,
    precision: PrecisionOpt = Precision.fp32,
    device: DeviceOpt = Device.auto,
    threads: ThreadsOpt = None,
    max_pixels: MaxPixelsOpt = MAX_PIXELS,
    quiet: QuietOpt = False,
) -> None:
    """Measure gqtok's real round trip (image -> .gq -> image) over a set of images."""
    from gqtok.eval.evaluate import evaluate
    from gqtok.eval.metrics import ALL_METRICS
    from gqtok.zoo.paths import DEFAULT_MODEL

    wanted = _split(metrics) or list(ALL_METRICS)
    bad = sorted(set(wanted) - set(ALL_METRICS))
    if bad:
        raise typer.BadParameter(f"unknown {bad}; choose from {', '.join(ALL_METRICS)}")
    if quality is not None and bpp is not None:
        raise typer.BadParameter("give one of --quality or --bpp", param_hint="--quality")
    reports: list[str | Path] = [d for d in (json_out, per_image) if d is not None]
    world = World.from_env()
    try:
        dist.start(world)
    except Exception as e:  # noqa: BLE001 - torch's rendezvous errors, as one line
        raise fail(e, None, UsageError, "cannot join torchrun's process group") from None
    try:
        paths = _plan(world, inputs, recursive, reports, overwrite)
        dev = world.device(setup_device(device, threads))
        net = decoder_or_exit(
            load_or_exit(model, None, dev), decoder, realism, model or DEFAULT_MODEL, grain
        ).to(dev, precision.value)
        rep, _ = _measure(
            paths, quiet,
            lambda paths, on_image: evaluate(
                net, paths, wanted, resize, center_crop, dev, max_pixels, on_image, world,
                quality=quality, bpp=bpp, color=color,
            ),
            world,
        )  # fmt: skip
    finally:
        dist.stop(world)
    if rep is None:
        return  # not rank 0: rank 0 writes the reports
    try:
        if per_image:
            write_output(per_image, _per_image_csv(rep), overwrite, paths)
        if json_out:
            write_output(json_out, json.dumps(rep.to_dict(), indent=2) + "\n", overwrite, paths)
    except GqtokError as e:
        raise fail(e) from None
    if not quiet and "-" not in reports:
        notes = [f"{LABELS.get(n, n)}: {why}" for n, why in rep.unavailable.items()]
        show(_eval_table(rep), *notes, *(f"note: {note}" for note in rep.notes))
    if rep.failures:  # each told by the rank that measured it; the count by rank 0
        if len(paths) > 1 and not quiet:
            say(f"{len(rep.failures)} of {len(paths)} image(s) failed")
        raise typer.Exit(EXIT_PARTIAL)


def _qualities(values: list[str] | None) -> list[float]:
    """--quality 10,30 50 -> [10.0, 30.0, 50.0]; a usage error outside 0..100."""
    out: list[float] = []
    for v in values or []:
        for part in v.split(","):
            try:
                q = float(part)
            except ValueError:
                q = float("nan")
            if not 0 <= q <= 100:  # also NaN and words
                raise typer.BadParameter(f"{part!r} is not in 0..100", param_hint="--quality")
            out.append(q)
    return sorted(set(out))


def compare_cmd(
    inputs: InputsArg,
    bpp: Annotated[
        list[str] | None,
        typer.Option(
            "--bpp", help="Target rates: --bpp 0.25 0.5 1.0 (or 0.25,0.5,1.0); default those."
        ),
    ] = None,
    model: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", help="Model name or file (default: the default model)."),
    ] = None,
    decoder: DecodersOpt = None,
    quality: Annotated[
        list[str] | None,
        typer.Option(
            "--quality",
            help="gqtok's curve: code each image at these qualities (0..100, e.g. --quality"
            " 10,30,50,75,90); left out, each model at its own rate only.",
        ),
    ] = None,
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o",
            help="Folder for rd_points.csv, rd.json, rd_plot.png and one plot per metric"
            " (rd_psnr.png, rd_msssim.png, rd_stlpips.png).",
        ),
    ] = Path("gqtok-compare"),
    codecs: Annotated[
        list[str] | None,
        typer.Option(
            "--codecs",
            help="Comma-separated subset of jpeg, webp, avif, jxl (JPEG XL), heif (HEVC)"
            " (default: all that this install can write).",
        ),
    ] = None,
    json_stdout: Annotated[
        bool, typer.Option("--json", help="Print the report as JSON on stdout.")
    ] = False,
    resize: ResizeOpt = None,
    center_crop: CropOpt = None,
    recursive: RecursiveOpt = False,
    overwrite: OverwriteOpt = False,
    device: DeviceOpt = Device.auto,
    threads: ThreadsOpt = None,
    max_pixels: MaxPixelsOpt = MAX_PIXELS,
    quiet: QuietOpt = False,
    patch_fid: Annotated[
        bool,
        typer.Option(
            "--patch-fid",
            help="Also patch FID/KID (256 px patches, HiFiC protocol) per codec and target;"
            " slow on CPU.",
        ),
    ] = False,
    color: MeasureColorOpt = None,
    html: Annotated[
        Path | None,
        typer.Option(
            "--html",
            help="Also write FOLDER/index.html: one self-contained page with a before/after"
            " slider and 1:1 crops per image, the RD plot and the table.",
            metavar="FOLDER",
        ),
    ] = None,
) -> None:
    """Rate-distortion of gqtok against JPEG, WebP, AVIF, JPEG XL and HEIF at matched bpp, with
    Bjøntegaard deltas."""
    from gqtok.eval.compare import CODECS, REPORT_FILES, compare, report_files
    from gqtok.zoo.paths import DEFAULT_MODEL

    rates, rest = _rates(bpp, inputs)
    chosen = _split(codecs) or None
    if chosen and set(chosen) - set(CODECS):
        raise typer.BadParameter(f"choose codecs from {', '.join(CODECS)}", param_hint="--codecs")
    decoders = parse_decoders(decoder)
    paths = _images(rest, recursive)
    page_path = None if html is None else html / "index.html"
    _check_reports([out / name for name in REPORT_FILES] + ([page_path] if page_path else []),
                   overwrite, paths)  # fmt: skip
    page = None
    if page_path is not None:
        from gqtok.eval.html_report import HtmlReport

        page = HtmlReport()
    qualities = _qualities(quality)
    dev = setup_device(device, threads)
    models: list[Model] = []
    for m in model or [DEFAULT_MODEL]:
        net = load_or_exit(m, None, dev)
        labels = set()
        for name, mix, grain in decoders:  # a row each; "perceptual@1" is "perceptual"
            variant = decoder_or_exit(net, name, mix, m, grain)
            if variant.label not in labels:
                labels.add(variant.label)
                models.append(variant)
    rep, failures = _measure(
        paths, quiet,
        lambda paths, on_image: compare(
            paths, rates, models, chosen, resize, center_crop, dev, max_pixels, on_image,
            patch_fid, on_reconstruction=page.add if page else None, qualities=qualities,
            color=color,
        ),
    )  # fmt: skip
    written = []
    try:
        for name, fill in report_files(rep).items():
            write_output(out / name, fill, overwrite, paths)
            written.append(str(out / name))
        if page is not None and page_path is not None:
            write_output(page_path, page.render(rep), overwrite, paths)
            written.append(str(page_path))
    except GqtokError as e:
        raise fail(e) from None
    if json_stdout:
        write_output("-", json.dumps(rep.to_dict(), indent=2) + "\n", overwrite=True)
    elif not quiet:
        from rich.console import Group

        deltas = any(v is not None for row in rep.bd for k, v in row.items() if k[:3] == "bd_")
        tables = [_compare_table(rep)] + ([_bd_table(rep)] if deltas else [])
        show(Group(*tables), *(f"note: {note}" for note in rep.notes))
    if not quiet:
        say("wrote " + ", ".join(written))
    failures.exit(len(paths), "image(s)")


def register(app: typer.Typer) -> None:
    """Add ``eval`` and ``compare`` to the gqtok Typer app."""
    app.command("eval")(eval_cmd)
    app.command("compare")(compare_cmd)
