"""``gqtok export`` (images -> token shards for training) and ``gqtok import`` (tokens -> images).

Kept apart from gqtok.cli so the big command module does not grow; ``register(app)`` adds the
commands. Unreadable images are reported one line each and the run carries on; the exit code
is then 1 (EXIT_PARTIAL). A human summary goes to stderr, ``--json`` records to stdout.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer

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
    SeedOpt,
    SizeOpt,
    ThreadsOpt,
    TrustOpt,
    fail,
    parse_budget,
    setup_device,
)
from gqtok.errors import EXIT_PARTIAL, GqtokError, InputError, OutputError

if TYPE_CHECKING:
    from gqtok.format.shards import Entry
    from gqtok.model import Model


class ImportFormat(StrEnum):
    png = "png"
    jpeg = "jpeg"
    webp = "webp"
    bmp = "bmp"
    tiff = "tiff"
    gq = "gq"


SUFFIX = {
    "png": ".png",
    "jpeg": ".jpg",
    "webp": ".webp",
    "bmp": ".bmp",
    "tiff": ".tif",
    "gq": ".gq",
}

JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")]


def _progress_printer(quiet: bool) -> Any:
    if quiet or not sys.stderr.isatty():
        return None
    t0 = time.perf_counter()

    def show(done: int, total: int) -> None:
        rate = done / max(1e-9, time.perf_counter() - t0)
        sys.stderr.write(f"\r{done}/{total} images, {rate:.2f}/s ")
        sys.stderr.flush()

    return show


def _token_source(
    path: Path, model_opt: str | None, trust_pickle: bool
) -> tuple[Model, Iterator[Entry]]:
    """Model and entries of an export folder, one shard file, or a .npy token grid."""
    from gqtok.format.shards import iter_entries, read_manifest, read_shard
    from gqtok.zoo.load import model_for_record

    if path.is_dir():
        manifest = read_manifest(path)
        return model_for_record(manifest, model_opt, trust_pickle), iter_entries(path)
    if path.suffix == ".safetensors":
        shard = read_shard(path)
        return model_for_record(shard.meta, model_opt, trust_pickle), iter(shard.entries())
    raise InputError("expected an export folder, a shard (.safetensors) or a .npy grid", str(path))


def _npy_entry(path: Path, model: Model, size: str | None) -> Entry:
    from gqtok.format.shards import Entry

    try:
        grid = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise InputError(f"not a readable .npy token grid ({e})", str(path)) from None
    if grid.ndim == 2:
        grid = grid[None]
    if grid.ndim != 3 or grid.dtype.kind not in "iu":
        raise InputError(f"token grid must be integer (NG, h, w) or (h, w), got {grid.shape}")
    if grid.shape[0] != model.groups or grid.size == 0:
        raise InputError(f"grid has {grid.shape[0]} token groups, the model {model.groups}")
    if int(grid.min()) < 0 or int(grid.max()) >= model.quant.size:
        raise InputError(f"token indices must lie in [0, {model.quant.size})", str(path))
    f = model.downsample
    w, h = grid.shape[2] * f, grid.shape[1] * f
    if size:
        parts = size.lower().split("x")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise typer.BadParameter("use WxH, e.g. 317x211", param_hint="--size")
        w, h = int(parts[0]), int(parts[1])
        if -(-w // f) != grid.shape[2] or -(-h // f) != grid.shape[1]:
            raise InputError(f"a {grid.shape[1]}x{grid.shape[2]} grid cannot be {w}x{h} pixels")
    return Entry(0, path.name, grid.astype(np.int64), w, h)


def _render(model: Model, tokens: np.ndarray, w: int, h: int, fmt: str, budget: int | None) -> Any:
    """Decoded image (PIL) or, for the gq format, .gq bytes (entropy coding runs here)."""
    import torch

    from gqtok.codec import Tokens, decode_tokens, pack_tokens

    tok = Tokens(torch.from_numpy(tokens.astype(np.int64)), w, h)
    if fmt == "gq":
        return pack_tokens(model, tok).data
    return decode_tokens(model, tok, budget)


def _serialise_and_write(obj: Any, dst: Path, fmt: str, quality: int | None, ow: bool) -> None:
    from gqtok.io.files import atomic_write_bytes
    from gqtok.io.images import encode_image_bytes

    data = obj if isinstance(obj, bytes) else encode_image_bytes(obj, fmt, quality)
    atomic_write_bytes(dst, data, overwrite=ow)


def register(app: typer.Typer) -> None:
    """Add ``export`` and ``import`` to the gqtok Typer app."""

    @app.command("export")
    def export_cmd(
        source: Annotated[
            str, typer.Argument(help="Folder of images, or a text file with one image path a line.")
        ],
        output: Annotated[
            str, typer.Option("--output", "-o", help="Folder for the shards and manifest.json.")
        ],
        model: ModelOpt = None,
        resize: Annotated[
            int | None, typer.Option("--resize", min=1, help="Shorter side to N px first.")
        ] = None,
        center_crop: Annotated[
            int | None, typer.Option("--center-crop", min=1, help="Then a centred N x N crop.")
        ] = None,
        flip: Annotated[
            bool,
            typer.Option("--flip", help="Also store tokens of the horizontally flipped image."),
        ] = False,
        shard_size: Annotated[
            int, typer.Option("--shard-size", min=1, help="Images per shard.")
        ] = 1024,
        npy: Annotated[
            bool, typer.Option("--npy", help="Also write each shard's arrays as .npy files.")
        ] = False,
        batch_size: Annotated[
            int, typer.Option("--batch-size", min=1, help="Images per network batch.")
        ] = 8,
        workers: Annotated[
            int | None,
            typer.Option("--workers", min=0, help="Image reading threads (default: 1 on 2 cores)."),
        ] = None,
        recursive: Annotated[
            bool, typer.Option("--recursive/--no-recursive", help="Descend into subfolders.")
        ] = True,
        pad: PadOpt = PadMode.replicate,
        max_pixels: MaxPixelsOpt = 200_000_000,
        memory_budget: MemoryOpt = None,
        group: GroupOpt = None,
        codebook_size: SizeOpt = None,
        seed: SeedOpt = None,
        beta: BetaOpt = None,
        overwrite: OverwriteOpt = False,
        trust_pickle: TrustOpt = False,
        device: DeviceOpt = Device.auto,
        threads: ThreadsOpt = None,
        quiet: QuietOpt = False,
        as_json: JsonOpt = False,
    ) -> None:
        """Tokenize a folder into sharded safetensors for training (resumable; docs/tokens.md)."""
        from gqtok.export import export_tokens
        from gqtok.quant.config import ModelOptions
        from gqtok.zoo.load import load_with_options

        dev = setup_device(device, threads, pipelined=True)
        budget = parse_budget(memory_budget)
        t0 = time.perf_counter()
        try:
            net = load_with_options(
                model, ModelOptions(group, codebook_size, seed, beta, trust_pickle=trust_pickle)
            ).to(dev)
            res = export_tokens(
                net,
                source,
                output,
                resize=resize,
                center_crop=center_crop,
                flip=flip,
                pad_mode=pad.value,
                shard_size=shard_size,
                npy=npy,
                batch_size=batch_size,
                workers=workers,
                recursive=recursive,
                overwrite=overwrite,
                max_pixels=max_pixels,
                max_memory=budget,
                progress=_progress_printer(quiet or as_json),
            )
        except GqtokError as e:
            raise fail(e) from None
        seconds = time.perf_counter() - t0
        if not quiet and sys.stderr.isatty():
            sys.stderr.write("\n")
        for path, msg in res.skipped:
            if not quiet:
                sys.stderr.write(f"error: {msg if msg.startswith(path) else f'{path}: {msg}'}\n")
        summary = {
            "output": str(res.folder),
            "images": res.images,
            "skipped": len(res.skipped),
            "shards_written": res.shards_written,
            "shards_kept": res.shards_kept,
            "seconds": round(seconds, 3),
            "timings": {k: round(v, 3) for k, v in res.timings.items()},
        }
        if as_json:
            typer.echo(json.dumps(summary))
        elif not quiet:
            sys.stderr.write(
                f"exported {res.images} image(s) to {res.folder}: {res.shards_written} shard(s)"
                f" written, {res.shards_kept} kept, {len(res.skipped)} skipped, {seconds:.1f} s\n"
            )
        if res.skipped:
            raise typer.Exit(EXIT_PARTIAL)

    @app.command("import")
    def import_cmd(
        tokens: Annotated[
            str,
            typer.Argument(help="An export folder, one shard (.safetensors) or a .npy token grid."),
        ],
        output: Annotated[
            str,
            typer.Option("--output", "-o", help="Output folder (a file for a single .npy grid)."),
        ],
        fmt: Annotated[
            ImportFormat,
            typer.Option("--format", "-f", help="Image format, or gq for .gq files."),
        ] = ImportFormat.png,
        quality: Annotated[
            int | None, typer.Option("--quality", min=1, max=100, help="JPEG/WebP quality.")
        ] = None,
        index: Annotated[
            list[int] | None,
            typer.Option("--index", help="Only these images (source-list index; repeatable)."),
        ] = None,
        limit: Annotated[
            int | None, typer.Option("--limit", min=1, help="At most N images.")
        ] = None,
        flip: Annotated[
            bool, typer.Option("--flip", help="Decode the tokens of the flipped images.")
        ] = False,
        size: Annotated[
            str | None,
            typer.Option("--size", help="Image size WxH of a .npy grid (default: grid x f)."),
        ] = None,
        model: ModelOpt = None,
        memory_budget: MemoryOpt = None,
        overwrite: OverwriteOpt = False,
        trust_pickle: TrustOpt = False,
        device: DeviceOpt = Device.auto,
        threads: ThreadsOpt = None,
        quiet: QuietOpt = False,
        as_json: JsonOpt = False,
    ) -> None:
        """Turn exported token grids back into images (or .gq files)."""
        from gqtok.zoo.load import load_model
        from gqtok.zoo.paths import DEFAULT_MODEL

        dev = setup_device(device, threads, pipelined=True)
        budget = parse_budget(memory_budget)
        src, out = Path(tokens), Path(output)
        suffix = SUFFIX[fmt.value]
        try:
            if src.suffix == ".npy":
                net = load_model(model or DEFAULT_MODEL, trust_pickle=trust_pickle).to(dev)
                entries: Iterator[Entry] = iter([_npy_entry(src, net, size)])
                single = out if not out.is_dir() else out / (src.stem + suffix)
            else:
                net, entries = _token_source(src, model, trust_pickle)
                net = net.to(dev)
                single = None
        except GqtokError as e:
            raise fail(e) from None
        wanted = set(index) if index else None
        failures: list[GqtokError] = []
        written: list[dict[str, Any]] = []
        pending: list[tuple[Future[None], Path]] = []

        def settle(keep: int) -> None:
            while len(pending) > keep:
                fut, dst = pending.pop(0)
                try:
                    fut.result()
                    written.append({"output": str(dst)})
                except GqtokError as e:
                    failures.append(e)
                    if not quiet:
                        sys.stderr.write(f"error: {e}\n")

        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gqtok-write") as pool:
            selected = 0
            for e in entries:
                if wanted is not None and e.index not in wanted:
                    continue
                if limit is not None and selected >= limit:
                    break
                selected += 1
                grid = e.tokens_flip if flip else e.tokens
                if grid is None:
                    raise fail(InputError("this export has no flipped tokens", str(src)))
                name = f"{e.index:06d}_{Path(e.path).stem}{'.flip' if flip else ''}{suffix}"
                dst = single or out / name
                if dst.exists() and not overwrite:
                    failures.append(OutputError("exists (use --overwrite)", str(dst)))
                    if not quiet:
                        sys.stderr.write(f"error: {failures[-1]}\n")
                    continue
                try:
                    obj = _render(net, grid, e.width, e.height, fmt.value, budget)
                except GqtokError as err:
                    failures.append(err)
                    continue
                fut = pool.submit(_serialise_and_write, obj, dst, fmt.value, quality, overwrite)
                pending.append((fut, dst))
                settle(keep=2)  # writing overlaps the next decode, two images deep
            settle(keep=0)
        seconds = time.perf_counter() - t0
        if as_json:
            typer.echo(
                json.dumps({"written": written, "failed": len(failures), "seconds": seconds})
            )
        elif not quiet:
            sys.stderr.write(f"wrote {len(written)} file(s) to {single or out}, {seconds:.1f} s\n")
        if failures:
            raise typer.Exit(failures[0].exit_code if len(written) == 0 else EXIT_PARTIAL)
