"""``gqtok export`` (images -> token shards for training) and ``gqtok import`` (tokens -> images).

Both load one model, run over many images with the I/O overlapping the network, report each
failed image in one line and carry on (exit code 1), and end with a summary: a line on stderr,
or one JSON object on stdout with ``--json``.

``export`` also runs as several processes (docs/distributed.md): under torchrun rank 0 alone
shows the bar, reports every skipped image and the job's totals and exits with the job's code
(the other ranks exit 0 once the job is done, so torchrun never stops rank 0 before it has
reported); a job-array rank (``--rank R --world-size N``) reports its own part in its own line.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from gqtok.cli.common import (
    MAX_PIXELS,
    BatchOpt,
    BetaOpt,
    CropOpt,
    DecoderOpt,
    Device,
    DeviceOpt,
    GrainOpt,
    GroupOpt,
    JsonOpt,
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
    RealismOpt,
    ResizeOpt,
    SeedOpt,
    SizeOpt,
    ThreadsOpt,
    TrustOpt,
    check_group,
    decoder_or_exit,
    load_or_exit,
    parse_budget,
    setup_device,
)
from gqtok.cli.outputs import check_output, write_output
from gqtok.cli.ui import Bar, Failures, fail, say, warn
from gqtok.errors import DecompressionBombError, GqtokError, InputError, OutputError, UsageError

if TYPE_CHECKING:
    import numpy as np

    from gqtok.dist import World
    from gqtok.export import ExportResult
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
Shards = list[tuple[str, Callable[[], Iterable["Entry"]]]]  # (file, its entries when read)


def _summary(as_json: bool, quiet: bool, record: dict[str, Any], text: str) -> None:
    """The end of a run: one JSON object on stdout (--json), else one line on stderr."""
    if as_json:
        write_output("-", json.dumps(record) + "\n", overwrite=True)
    elif not quiet:
        say(text)


def _size(value: str | None) -> tuple[int, int] | None:
    """--size WxH as (width, height)."""
    if value is None:
        return None
    parts = value.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and 0 < int(p) for p in parts):
        raise typer.BadParameter("use WxH, e.g. 317x211", param_hint="--size")
    return int(parts[0]), int(parts[1])


def _check_size(value: str | None) -> str | None:
    _size(value)  # a usage error while parsing
    return value


def _token_source(path: Path, model_opt: str | None, trust_pickle: bool) -> tuple[Model, Shards]:
    """Model and shards of an export folder or of one shard file."""
    from gqtok.format.shards import read_manifest, read_shard
    from gqtok.zoo.load import model_for_record

    if path.is_dir():
        manifest = read_manifest(path)
        files = [path / rec["file"] for rec in manifest["shards"]]
        shards: Shards = [(str(f), lambda f=f: read_shard(f).entries()) for f in files]
        return model_for_record(manifest, model_opt, trust_pickle), shards
    if path.suffix == ".safetensors":
        shard = read_shard(path)
        return model_for_record(shard.meta, model_opt, trust_pickle), [(str(path), shard.entries)]
    raise InputError("expected an export folder, a shard (.safetensors) or a .npy grid", str(path))


def _check_pixels(width: int, height: int, max_pixels: int, name: str | None = None) -> None:
    """An image over --max-pixels is refused before it is rendered, with the error of an
    oversized image to encode or .gq file to decode (exit code 3)."""
    if width * height > max_pixels:
        raise DecompressionBombError(
            f"image has {width * height} pixels, over the limit of {max_pixels}"
            " (raise it with --max-pixels)",
            name,
        )


def _npy_entry(
    path: Path, model: Model, size: tuple[int, int] | None, max_pixels: int
) -> Entry:
    """The one entry of a .npy grid. The file is mapped, not read: its shape (from the .npy
    header) gives the image size, refused over ``max_pixels`` before any token is read."""
    import numpy as np

    from gqtok.format.shards import Entry

    try:
        grid = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise InputError(f"not a readable .npy token grid ({e})", str(path)) from None
    if grid.ndim == 2:
        grid = grid[None]
    if grid.ndim != 3 or grid.dtype.kind not in "iu":
        raise InputError(f"token grid must be integer (NG, h, w) or (h, w), got {grid.shape}")
    if grid.shape[0] != model.groups or grid.size == 0:
        raise InputError(f"grid has {grid.shape[0]} token groups, the model {model.groups}")
    f = model.downsample
    w, h = size or (grid.shape[2] * f, grid.shape[1] * f)
    if -(-w // f) != grid.shape[2] or -(-h // f) != grid.shape[1]:
        raise InputError(f"a {grid.shape[1]}x{grid.shape[2]} grid cannot be {w}x{h} pixels")
    _check_pixels(w, h, max_pixels, str(path))
    if int(grid.min()) < 0 or int(grid.max()) >= model.quant.size:
        raise InputError(f"token indices must lie in [0, {model.quant.size})", str(path))
    return Entry(0, path.name, grid.astype(np.int64), w, h)


def _render(model: Model, e: Entry, grid: np.ndarray, fmt: str, budget: int | None) -> Any:
    """Decoded image (PIL) or, for the gq format, .gq bytes (entropy coding runs here). The
    tokens of an export with a scale come back at the size before it, as that quality's .gq
    file does (a version 4 file with --format gq)."""
    import numpy as np
    import torch

    from gqtok.codec import Tokens, decode_tokens, pack_tokens

    back = e.image_size if e.image_size != (e.width, e.height) else None
    color = e.color if grid is e.tokens else ()  # fitted to the image, not its mirror image
    tok = Tokens(torch.from_numpy(grid.astype(np.int64)), e.width, e.height, resample_to=back,
                 color=color)  # fmt: skip
    if fmt == "gq":
        return pack_tokens(model, tok).data
    return decode_tokens(model, tok, budget)


def _world(rank: int | None, world_size: int | None) -> World:
    """torchrun's ranks (WORLD_SIZE > 1), a job array's (--rank/--world-size) or one process;
    options that do not fit are a UsageError (one line, exit code 2)."""
    from gqtok.dist import World

    env = World.from_env()
    if (rank is None) != (world_size is None):
        raise UsageError("--rank and --world-size go together: rank R of a job array of N")
    if rank is None or world_size is None:
        return env
    if world_size < 1:
        raise UsageError("--world-size must be at least 1")
    if env.group:
        raise UsageError(
            f"--rank/--world-size are for job arrays; under torchrun (WORLD_SIZE={env.size})"
            " the ranks come from torchrun"
        )
    return World.array(rank, world_size)


def _rank_threads(
    world: World, threads: int | None, workers: int | None
) -> tuple[int | None, int | None]:
    """Under torchrun, each rank's share of the node's cores for torch threads and image
    readers (by default every rank of a node would take all of them)."""
    if not world.group:
        return threads, workers
    from gqtok.io.pipeline import available_cores, default_io_workers

    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "") or 1))
    share = max(1, available_cores() // local)
    return threads or share, default_io_workers(share) if workers is None else workers


def _merge(folder: str, quiet: bool, as_json: bool) -> None:
    """``export --merge DIR``: the manifest of a job array's export, once every rank is done."""
    from gqtok.export import merge_export

    t0 = time.perf_counter()
    try:
        res = merge_export(folder)
    except Exception as e:  # noqa: BLE001 - a damaged rank file or shard raises anything
        raise fail(e, folder, InputError, "cannot merge") from None
    seconds = time.perf_counter() - t0
    _summary(
        as_json,
        quiet,
        {
            "output": str(res.folder),
            "images": res.images,
            "skipped": len(res.skipped),
            "shards": res.shards_kept,
            "world_size": res.world_size,
            "seconds": round(seconds, 3),
        },
        f"merged {res.shards_kept} shard(s) of {res.images} image(s) into"
        f" {res.folder / 'manifest.json'} ({len(res.skipped)} skipped), {seconds:.1f} s",
    )


def _export_summary(res: ExportResult, world: World, seconds: float) -> tuple[dict, str]:
    """The --json record and the summary line; a job-array rank says whose they are and
    whether it wrote the manifest (or which shards another rank still owes)."""
    record: dict[str, Any] = {
        "output": str(res.folder),
        "images": res.images,
        "skipped": len(res.skipped),
        "shards_written": res.shards_written,
        "shards_kept": res.shards_kept,
        "seconds": round(seconds, 3),
        "timings": {k: round(v, 3) for k, v in res.timings.items()},
    }
    text = (
        f"exported {res.images} image(s) to {res.folder}: {res.shards_written} shard(s)"
        f" written, {res.shards_kept} kept, {len(res.skipped)} skipped, {seconds:.1f} s"
    )
    if world.group:
        record["world_size"] = world.size
        text += f" ({world.size} processes)"
    elif world.distributed:
        record.update(
            rank=world.rank, world_size=world.size, manifest=res.manifest, missing=res.missing
        )
        text = f"rank {world.rank} of {world.size}: {text}; " + (
            "every shard is there: manifest.json written"
            if res.manifest
            else f"{len(res.missing)} shard(s) of other ranks still missing: manifest.json"
            f" follows from the last rank, or gqtok export --merge {res.folder}"
        )
    return record, text


def export_cmd(
    source: Annotated[
        str | None,
        typer.Argument(
            help="Folder of images, or a text file with one image path a line"
            " (not with --merge).",
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option(
            "--output", "-o", help="Folder for the shards and manifest.json.", show_default=False
        ),
    ] = None,
    model: ModelOpt = None,
    resize: ResizeOpt = None,
    center_crop: CropOpt = None,
    flip: Annotated[
        bool,
        typer.Option("--flip", help="Also store tokens of the horizontally flipped image."),
    ] = False,
    shard_size: Annotated[
        int, typer.Option("--shard-size", min=1, max=1 << 20, help="Images per shard.")
    ] = 1024,
    npy: Annotated[
        bool, typer.Option("--npy", help="Also write each shard's arrays as .npy files.")
    ] = False,
    batch_size: BatchOpt = 8,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers", min=0, max=256, help="Image reading threads (default: 1 on 2 cores)."
        ),
    ] = None,
    recursive: Annotated[
        bool, typer.Option("--recursive/--no-recursive", help="Descend into subfolders.")
    ] = True,
    pad: PadOpt = PadMode.replicate,
    max_pixels: MaxPixelsOpt = MAX_PIXELS,
    memory_budget: MemoryOpt = None,
    group: GroupOpt = None,
    codebook_size: SizeOpt = None,
    quality: Annotated[
        float | None,
        typer.Option(
            "--quality", min=0, max=100,
            help="Tokens at this quality's codebook size and scale (as gqtok encode"
            " --quality; the shards record the scaled size and the size before it).",
        ),
    ] = None,
    seed: SeedOpt = None,
    beta: BetaOpt = None,
    overwrite: OverwriteOpt = False,
    trust_pickle: TrustOpt = False,
    precision: PrecisionOpt = Precision.fp32,
    device: DeviceOpt = Device.auto,
    threads: ThreadsOpt = None,
    rank: Annotated[
        int | None,
        typer.Option(
            "--rank",
            help="This process's rank R in a job array (with --world-size N): it writes the"
            " shards k with k % N == R. Under torchrun the ranks come from torchrun.",
            show_default=False,
        ),
    ] = None,
    world_size: Annotated[
        int | None,
        typer.Option(
            "--world-size",
            help="How many job-array ranks share the output folder (with --rank).",
            show_default=False,
        ),
    ] = None,
    merge: Annotated[
        str | None,
        typer.Option(
            "--merge",
            metavar="DIR",
            help="Only write DIR/manifest.json of a job array's export once every rank has"
            " finished: checks every shard and names the rank of each missing one. Needs no"
            " SOURCE, -o or model: the rank files in DIR hold the plan.",
            show_default=False,
        ),
    ] = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Tokenize a folder into sharded safetensors for training (resumable; docs/tokens.md).

    Several processes share the work under torchrun or as a job array (--rank/--world-size);
    see docs/distributed.md.
    """
    from gqtok.dist import World, start, stop

    try:
        if merge is not None:
            if any(v is not None for v in (source, output, rank, world_size)):
                raise UsageError("--merge DIR takes no SOURCE, -o, --rank or --world-size")
            if World.from_env().group:
                raise UsageError("--merge runs in one process, not under torchrun")
        elif source is None or output is None:
            raise UsageError("give SOURCE and -o/--output (or --merge DIR)")
        world = _world(rank, world_size)
    except UsageError as e:
        raise fail(e) from None
    if merge is not None:
        return _merge(merge, quiet, as_json)
    assert source is not None and output is not None  # checked above
    from gqtok.codec.rate import at_size, quality_setting
    from gqtok.export import export_tokens
    from gqtok.quant.config import ModelOptions

    budget = parse_budget(memory_budget)
    check_group(model, group)
    if quality is not None and codebook_size is not None:
        raise typer.BadParameter(
            "--quality chooses the codebook size: leave out --codebook-size",
            param_hint="--codebook-size",
        )
    threads, workers = _rank_threads(world, threads, workers)
    dev = world.device(setup_device(device, threads, pipelined=True))
    try:
        try:
            start(world)
        except Exception as e:  # noqa: BLE001 - torch's rendezvous errors span many lines
            raise fail(e, None, GqtokError, "cannot join torchrun's process group") from None
        opts = ModelOptions(group, codebook_size, seed, beta, trust_pickle=trust_pickle)
        net = load_or_exit(model, opts, dev)
        scale = 1.0
        if quality is not None:
            setting = quality_setting(net, quality)
            net, scale = at_size(net, setting.size), setting.scale
        net = net.to(dev, precision.value)
        t0 = time.perf_counter()
        with Bar("exporting", None, not (quiet or as_json) and world.is_main) as bar:
            try:
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
                    scale=scale,
                    progress=bar.to,
                    world=world,
                )
            except Exception as e:  # noqa: BLE001 - shards written so far stay (resumable)
                raise fail(e, output, GqtokError, "export stopped, rerun to resume") from None
    finally:
        stop(world)
    if world.group and not world.is_main:
        return  # rank 0 reports the job: every skipped image once, the totals, the exit code
    seconds = time.perf_counter() - t0
    failures = Failures(quiet)
    for path, msg in res.skipped:
        failures.add(GqtokError(msg), path)
    record, text = _export_summary(res, world, seconds)
    _summary(as_json, quiet, record, text)
    failures.exit(res.images + len(res.skipped), "image(s)")


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
    quality: QualityOpt = None,
    index: Annotated[
        list[int] | None,
        typer.Option("--index", min=0, help="Only these images (source-list index; repeatable)."),
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="At most N images.")] = None,
    flip: Annotated[
        bool, typer.Option("--flip", help="Decode the tokens of the flipped images.")
    ] = False,
    size: Annotated[
        str | None,
        typer.Option(
            "--size",
            callback=_check_size,
            help="Image size WxH of a .npy grid (default: grid x f).",
        ),
    ] = None,
    model: ModelOpt = None,
    decoder: DecoderOpt = "fidelity",
    realism: RealismOpt = None,
    grain: GrainOpt = None,
    max_pixels: MaxPixelsOpt = MAX_PIXELS,
    memory_budget: MemoryOpt = None,
    overwrite: OverwriteOpt = False,
    trust_pickle: TrustOpt = False,
    precision: PrecisionOpt = Precision.fp32,
    device: DeviceOpt = Device.auto,
    threads: ThreadsOpt = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Turn exported token grids back into images (or .gq files); --decoder / --realism pick
    which of the model's decoders renders them."""
    from concurrent.futures import Future, ThreadPoolExecutor

    from gqtok.io.images import encode_image_bytes
    from gqtok.quant.config import ModelOptions
    from gqtok.zoo.paths import DEFAULT_MODEL

    budget = parse_budget(memory_budget)
    dev = setup_device(device, threads, pipelined=True)
    src, out = Path(tokens), Path(output)
    suffix = SUFFIX[fmt.value]
    single: Path | None = None
    if src.suffix == ".npy":
        net = load_or_exit(model or DEFAULT_MODEL, ModelOptions(trust_pickle=trust_pickle), dev)
        single = out / (src.stem + suffix) if out.is_dir() else out
        try:
            entry = _npy_entry(src, net, _size(size), max_pixels)
        except Exception as e:  # noqa: BLE001 - a crafted .npy raises anything
            raise fail(e, tokens, InputError, "cannot read") from None
        shards: Shards = [(tokens, lambda: [entry])]
    else:
        try:
            net, shards = _token_source(src, model, trust_pickle)
            net = net.to(dev)
        except Exception as e:  # noqa: BLE001 - a crafted export raises anything
            raise fail(e, tokens, InputError, "cannot read") from None
    if fmt.value != "gq":
        net = decoder_or_exit(net, decoder, realism, model or net.name, grain).to(
            dev, precision.value)
    elif decoder != "fidelity" or realism is not None or grain is not None:
        warn("--decoder/--realism/--grain do nothing with --format gq (the tokens are written"
             " as they are)")
    wanted = set(index) if index else None
    failures = Failures(quiet)
    written: list[dict[str, Any]] = []
    pending: list[tuple[Future[None], Path]] = []
    count = 0

    def selected() -> Iterator[Entry]:
        """The chosen entries, shard by shard; a shard that cannot be read is one error."""
        nonlocal count
        for name, read in shards:
            try:
                entries = list(read())
            except Exception as e:  # noqa: BLE001 - a damaged shard raises anything
                count += 1
                failures.add(e, name, InputError, "cannot read")
                continue
            for e in entries:
                if wanted is not None and e.index not in wanted:
                    continue
                if limit is not None and count >= limit:
                    return
                count += 1
                yield e

    def save(obj: Any, dst: Path) -> None:
        data = obj if isinstance(obj, bytes) else encode_image_bytes(obj, fmt.value, quality)
        write_output(dst, data, overwrite, [src])

    def settle(keep: int) -> None:
        while len(pending) > keep:
            fut, dst = pending.pop(0)
            try:
                fut.result()
                written.append({"output": str(dst)})
            except Exception as e:  # noqa: BLE001 - this file's output failed
                failures.add(e, str(dst), OutputError, "cannot write")

    t0 = time.perf_counter()
    with Bar("importing", None, not (quiet or as_json)) as bar, ThreadPoolExecutor(
        max_workers=1, thread_name_prefix="gqtok-write"
    ) as pool:
        for e in selected():
            grid = e.tokens_flip if flip else e.tokens
            if grid is None:
                raise fail(InputError("this export has no flipped tokens", str(src)))
            name = f"{e.index:06d}_{Path(e.path).stem}{'.flip' if flip else ''}{suffix}"
            dst = single or out / name
            bar.advance(str(dst))
            try:
                check_output(dst, overwrite, [src])
                image = e.image_size or (e.width, e.height)  # the larger of the two counts
                _check_pixels(*max(image, (e.width, e.height), key=lambda s: s[0] * s[1]),
                              max_pixels)  # fmt: skip
                obj = _render(net, e, grid, fmt.value, budget)
            except Exception as err:  # noqa: BLE001 - crafted tokens raise anything
                failures.add(err, str(dst), InputError, "cannot decode")
                continue
            pending.append((pool.submit(save, obj, dst), dst))
            settle(keep=2)  # writing overlaps the next decode, two images deep
        settle(keep=0)
    seconds = time.perf_counter() - t0
    _summary(
        as_json,
        quiet,
        {"written": written, "failed": len(failures), "seconds": seconds},
        f"wrote {len(written)} file(s) to {single or out}, {seconds:.1f} s",
    )
    failures.exit(count)


def register(app: typer.Typer) -> None:
    """Add ``export`` and ``import`` to the gqtok Typer app."""
    app.command("export")(export_cmd)
    app.command("import")(import_cmd)
