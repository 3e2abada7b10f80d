"""``gqtok eval`` and ``gqtok compare``: quality numbers on the command line.

Kept apart from gqtok.cli so the big command module does not grow; ``register(app)`` adds the
commands. Human output is a rich table on stdout; ``--json -`` makes stdout pure JSON for
scripts. Unreadable images are reported one line each on stderr and the run carries on; the
exit code is then 1 (EXIT_PARTIAL).
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from gqtok.cli.common import Device, MaxPixelsOpt, RecursiveOpt, ThreadsOpt, fail, setup_device
from gqtok.errors import EXIT_PARTIAL, EXIT_USAGE, GqtokError

if TYPE_CHECKING:
    from gqtok.eval.compare import CompareReport
    from gqtok.eval.evaluate import EvalReport
    from gqtok.model import Model

err = Console(stderr=True, highlight=False)
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
}


def _split(values: list[str] | None) -> list[str]:
    """Options given repeatedly and/or comma-separated, flattened."""
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


def _load_models(names: list[str], device: str) -> list[Model]:
    from gqtok.zoo.load import load_model
    from gqtok.zoo.paths import DEFAULT_MODEL

    try:
        return [load_model(n).to(device) for n in names or [DEFAULT_MODEL]]
    except GqtokError as e:
        raise fail(e) from None


def _progress(total: int, quiet: bool) -> tuple[AbstractContextManager[Any], Callable[..., None]]:
    """A transient progress bar on stderr (only on a terminal) and its per-image callback."""
    if quiet or total < 2 or not err.is_terminal:

        def report_only(name: str, error: str | None) -> None:
            if error and not quiet:
                sys.stderr.write(f"error: {error}\n")

        return nullcontext(), report_only
    prog = Progress(
        TextColumn("[bold]measuring"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[name]}"),
        console=err,
        transient=True,
    )
    task = prog.add_task("eval", total=total, name="")

    def advance(name: str, error: str | None) -> None:
        if error:
            prog.console.print(f"error: {error}", markup=False, highlight=False)
        prog.update(task, advance=1, name=Path(name).name)

    return prog, advance


def _fmt(v: float | None, digits: int = 4) -> str:
    if v is None:
        return "—"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return f"{v:.{digits}f}"


def _write_text(dest: str, text: str) -> None:
    from gqtok.errors import OutputError

    try:
        Path(dest).write_text(text)
    except OSError as e:
        raise OutputError(f"cannot write ({e.strerror or e})", dest) from None


def _eval_table(rep: EvalReport) -> Table:
    proto = rep.protocol
    how = (
        f"resize {proto['resize']}, centre crop {proto['center_crop']}"
        if proto["resize"] or proto["center_crop"]
        else "native resolution"
    )
    table = Table(title=f"gqtok eval: {rep.model}, {len(rep.rows)} image(s), {how}")
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
    if rep.usage is not None:
        u = rep.usage
        table.add_row(
            "codebook usage (%)", f"{u.usage_pct:.2f}", "", f"{u.used} of {u.codebook_size}"
        )
        table.add_row(
            "token entropy (bits)", f"{u.entropy_bits:.3f}", "", f"max {u.max_entropy_bits:.0f}"
        )
    return table


def _per_image_csv(rep: EvalReport, dest: str) -> None:
    from gqtok.eval.evaluate import ImageRow

    cols = list(ImageRow.__dataclass_fields__)
    rows = []
    for r in rep.rows:
        d = asdict(r)
        rows.append({k: "" if d[k] is None else d[k] for k in cols})
    if dest == "-":
        w = csv.DictWriter(sys.stdout, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
        return
    try:
        with open(dest, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            w.writerows(rows)
    except OSError as e:
        from gqtok.errors import OutputError

        raise OutputError(f"cannot write ({e.strerror or e})", dest) from None


def _compare_table(rep: CompareReport) -> Table:
    table = Table(title="gqtok compare: metrics interpolated at matched bpp")
    table.add_column("target", overflow="fold")
    table.add_column("codec", overflow="fold")
    for col in ("images", "bpp", "PSNR", "MS-SSIM", "ST-LPIPS"):
        table.add_column(col, justify="right", no_wrap=True)
    for row in rep.summary:
        table.add_row(
            row["target"],
            row["codec"],
            f"{row['images']}/{row['images'] + row['excluded']}",
            _fmt(row["bpp"]),
            _fmt(row["psnr"], 2),
            _fmt(row["msssim"]),
            _fmt(row["stlpips_alex"]),
        )
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
    if any(r <= 0 for r in rates):
        raise typer.BadParameter("rates must be positive", param_hint="--bpp")
    return sorted(set(rates or [0.25, 0.5, 1.0])), rest


ModelsOpt = Annotated[
    list[str] | None,
    typer.Option("--model", "-m", help="Model name or file (default: the default model)."),
]
ResizeOpt = Annotated[
    int | None,
    typer.Option("--resize", min=1, help="Shorter side to N px first (paper protocol: 256)."),
]
CropOpt = Annotated[
    int | None,
    typer.Option("--center-crop", min=1, help="Then a centred NxN crop (paper protocol: 256)."),
]
DeviceOpt = Annotated[Device, typer.Option("--device", help="Where the networks run.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or table.")]
InputsArg = Annotated[list[str], typer.Argument(help="Images and/or folders of images.")]


def register(app: typer.Typer) -> None:
    """Add ``eval`` and ``compare`` to the gqtok Typer app."""

    @app.command("eval")
    def eval_cmd(
        inputs: InputsArg,
        model: Annotated[
            str | None, typer.Option("--model", "-m", help="Model name or file.")
        ] = None,
        metrics: Annotated[
            list[str] | None,
            typer.Option(
                "--metrics",
                help="Comma-separated subset of: psnr, ssim, msssim, stlpips_alex, stlpips_vgg,"
                " lpips, fid, kid (default: all).",
            ),
        ] = None,
        json_out: Annotated[
            str | None, typer.Option("--json", help="Write the report as JSON ('-' = stdout).")
        ] = None,
        per_image: Annotated[
            str | None, typer.Option("--per-image", help="Write per-image rows as CSV.")
        ] = None,
        resize: ResizeOpt = None,
        center_crop: CropOpt = None,
        recursive: RecursiveOpt = False,
        device: DeviceOpt = Device.auto,
        threads: ThreadsOpt = None,
        max_pixels: MaxPixelsOpt = 200_000_000,
        quiet: QuietOpt = False,
    ) -> None:
        """Measure gqtok's real round trip (image -> .gq -> image) over a set of images."""
        from gqtok.eval.evaluate import collect_images, evaluate
        from gqtok.eval.metrics import ALL_METRICS

        wanted = _split(metrics) or list(ALL_METRICS)
        bad = sorted(set(wanted) - set(ALL_METRICS))
        if bad:
            raise typer.BadParameter(f"unknown {bad}; choose from {', '.join(ALL_METRICS)}")
        paths = collect_images(inputs, recursive)
        if not paths:
            err.print("no images found" + ("" if recursive else " (try --recursive)"))
            raise typer.Exit(EXIT_USAGE)
        dev = setup_device(device, threads)
        net = _load_models([model] if model else [], dev)[0]
        ctx, on_image = _progress(len(paths), quiet)
        try:
            with ctx:
                rep = evaluate(
                    net, paths, wanted, resize, center_crop, dev, max_pixels, on_image=on_image
                )
            if per_image:
                _per_image_csv(rep, per_image)
            if json_out:
                text = json.dumps(rep.to_dict(), indent=2) + "\n"
                if json_out == "-":
                    sys.stdout.write(text)
                else:
                    _write_text(json_out, text)
        except GqtokError as e:
            raise fail(e) from None
        if not quiet and json_out != "-":
            out = Console(highlight=False)
            out.print(_eval_table(rep))
            for name, why in rep.unavailable.items():
                out.print(f"{LABELS.get(name, name)}: {why}", markup=False, soft_wrap=True)
            for note in rep.notes:
                out.print(f"note: {note}", markup=False, soft_wrap=True)
        if rep.failures:
            if not quiet:
                err.print(f"{len(rep.failures)} of {len(paths)} image(s) failed", markup=False)
            raise typer.Exit(EXIT_PARTIAL)

    @app.command("compare")
    def compare_cmd(
        inputs: InputsArg,
        bpp: Annotated[
            list[str] | None,
            typer.Option(
                "--bpp", help="Target rates: --bpp 0.25 0.5 1.0 (or 0.25,0.5,1.0); default those."
            ),
        ] = None,
        model: ModelsOpt = None,
        out: Annotated[
            Path,
            typer.Option("--out", "-o", help="Folder for rd_points.csv, rd.json, rd_plot.png."),
        ] = Path("gqtok-compare"),
        codecs: Annotated[
            list[str] | None,
            typer.Option("--codecs", help="Comma-separated subset of jpeg, webp, avif."),
        ] = None,
        json_stdout: Annotated[
            bool, typer.Option("--json", help="Print the report as JSON on stdout.")
        ] = False,
        resize: ResizeOpt = None,
        center_crop: CropOpt = None,
        recursive: RecursiveOpt = False,
        device: DeviceOpt = Device.auto,
        threads: ThreadsOpt = None,
        max_pixels: MaxPixelsOpt = 200_000_000,
        quiet: QuietOpt = False,
    ) -> None:
        """Rate-distortion of gqtok against JPEG, WebP and AVIF at matched bpp."""
        from gqtok.eval.compare import CODECS, compare, write_outputs
        from gqtok.eval.evaluate import collect_images

        rates, rest = _rates(bpp, inputs)
        chosen = _split(codecs) or None
        if chosen and set(chosen) - set(CODECS):
            raise typer.BadParameter(
                f"choose codecs from {', '.join(CODECS)}", param_hint="--codecs"
            )
        paths = collect_images(rest, recursive)
        if not paths:
            err.print("no images found" + ("" if recursive else " (try --recursive)"))
            raise typer.Exit(EXIT_USAGE)
        dev = setup_device(device, threads)
        models = _load_models(model or [], dev)
        ctx, on_image = _progress(len(paths), quiet)
        try:
            with ctx:
                rep = compare(
                    paths, rates, models, chosen, resize, center_crop, dev, max_pixels, on_image
                )
            files = write_outputs(rep, out)
        except GqtokError as e:
            raise fail(e) from None
        if json_stdout:
            sys.stdout.write(json.dumps(rep.to_dict(), indent=2) + "\n")
        elif not quiet:
            con = Console(highlight=False)
            con.print(_compare_table(rep))
            for note in rep.notes:
                con.print(f"note: {note}", markup=False, soft_wrap=True)
        if not quiet:
            err.print("wrote " + ", ".join(str(p) for p in files.values()), markup=False)
        if rep.failures:
            if not quiet:
                err.print(f"{len(rep.failures)} of {len(paths)} image(s) failed", markup=False)
            raise typer.Exit(EXIT_PARTIAL)
