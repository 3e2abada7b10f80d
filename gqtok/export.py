"""Token export for training generative models: sharded safetensors plus a manifest.

A folder (or a list file) of images becomes ``shard-00000.safetensors``, ``shard-00001...``
and ``manifest.json`` (format in docs/tokens.md). Each shard holds the token grids of up to
``shard_size`` consecutive images of the sorted source list, flattened into one array with
offsets and shapes, so a data loader reads them with numpy alone. Shard k always holds images
[k * shard_size, (k + 1) * shard_size) of the list, which makes an export resumable: a re-run
keeps every shard that is complete, belongs to the same plan (model, codebook, protocol,
sources, shard size) and whose checksum verifies, and encodes only the rest. Shards appear
atomically (temp file + rename), so an interrupted run leaves whole shards or none.

Several processes share one export by whole shards: shard k belongs to rank k % N of a
``gqtok.dist.World``, so every shard file is byte for byte what one process writes. While they
run, each rank records its progress in its own ``rank-R-of-N.json`` (a manifest of its shards)
and never touches manifest.json, which is written once, whole, when every shard exists: by
rank 0 after torchrun's ranks have all finished, by the last job-array rank to finish, or by
``merge_export`` (``gqtok export --merge``) from the shards and the rank files alone.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from gqtok.dist import World, start
from gqtok.errors import GqtokError, InputError, OutputError, UsageError, first_line
from gqtok.format.shards import (  # noqa: F401 - re-exported: readers are found here too
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST,
    Entry,
    Shard,
    iter_entries,
    npy_bytes,
    npy_names,
    read_manifest,
    read_shard,
    sha256_hex,
    shard_arrays,
    shard_bytes,
    shard_name,
    token_dtype,
)
from gqtok.io.files import IMAGE_EXTS, atomic_write_bytes
from gqtok.io.images import DEFAULT_MAX_PIXELS, read_image
from gqtok.io.pipeline import batched, default_io_workers, prefetch
from gqtok.model import Model
from gqtok.quant.codebook import codebook_fingerprint
from gqtok.version import __version__

T = TypeVar("T")
RANK_FILE = re.compile(r"rank-(\d+)-of-(\d+)\.json")


def rank_file(rank: int, size: int) -> str:
    """Name of the progress file of rank ``rank`` of ``size``: a manifest of that rank's shards
    (plus ``rank`` and ``world_size``), so ranks never write manifest.json concurrently."""
    return f"rank-{rank}-of-{size}.json"


def model_record(model: Model) -> dict[str, Any]:
    """What the manifest and every shard say about the model and codebook."""
    q = model.quant
    return {
        "model": {
            "id": model.name,
            "weights_sha256": model.weights_sha256,
            "arch": model.arch,
            "layout": model.layout,
            "downsample": model.downsample,
            "groups": model.groups,
        },
        "codebook": {
            **q.to_dict(),
            "fingerprint": codebook_fingerprint(q.dim, q.size, q.seed).hex(),
        },
        "dtype": token_dtype(q.size).name,
    }



@dataclass(frozen=True)
class Protocol:
    """How images are prepared before tokenizing: the evaluation protocol of ``gqtok eval``
    (gqtok.evaluate.preprocess) plus horizontal-flip augmentation."""

    resize: int | None = None  # shorter side to N px
    center_crop: int | None = None  # then a centred N x N crop
    flip: bool = False  # also store the tokens of the horizontally flipped image
    pad_mode: str = "replicate"
    # the networks' arithmetic (Model.precision): bf16 moments give some other tokens, so a
    # bf16 export is another plan; fp32 is left out of the record, as exports before it were
    precision: str = "fp32"
    # then resampled by this factor (gqtok.io.resample): `export --quality`'s scale; 1 is
    # left out of the record, as exports before it were
    scale: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "resize": self.resize,
            "resize_filter": "Pillow bilinear, antialiased; long side truncated (torchvision)",
            "center_crop": self.center_crop,
            "flip": self.flip,
            "pad_mode": self.pad_mode,
            "color": "8-bit RGB: EXIF orientation applied, gray replicated, alpha dropped",
        }
        if self.precision != "fp32":
            out["network_precision"] = self.precision
        if self.scale != 1:
            out["scale"] = self.scale
            out["scale_filter"] = "gqtok.io.resample (cubic, a = -1/2; docs/format.md)"
        return out

    def prepare(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The pixels to tokenize, and under a scale the image before it (what the tokens
        decode back to, and what their colour correction is fitted to), else None."""
        from gqtok.codec.engine import scaled_rgb
        from gqtok.eval.evaluate import preprocess

        if self.resize or self.center_crop:
            rgb = preprocess(rgb, self.resize, self.center_crop)
        if self.scale == 1:
            return rgb, None
        return scaled_rgb(rgb, self.scale), rgb


@dataclass(frozen=True)
class Sources:
    """Images to export: paths as stored in the shards, resolved against ``root``."""

    root: Path
    paths: list[str]
    list_file: Path | None = None

    def resolve(self, rel: str) -> Path:
        p = Path(rel)
        return p if p.is_absolute() else self.root / p


def find_sources(source: str | Path, recursive: bool = True) -> Sources:
    """A folder (image files, sorted, relative POSIX paths) or a list file (one path a line,
    ``#`` comments; relative paths are relative to the list file's folder)."""
    src = Path(source)
    if src.is_dir():
        it = src.rglob("*") if recursive else src.glob("*")
        found = sorted(
            p.relative_to(src).as_posix()
            for p in it
            if p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")
        )
        return Sources(src, found)
    if src.is_file():
        try:
            lines = src.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"cannot read the list file ({e})", str(src)) from None
        paths = [s.strip() for s in lines if s.strip() and not s.strip().startswith("#")]
        return Sources(src.parent, paths, src)
    raise InputError("no such folder or list file", str(src))


def plan_fingerprint(model: Model, protocol: Protocol, sources: Sources, shard_size: int) -> str:
    """Everything that decides a shard's content; a shard of another plan is never reused."""
    plan = {
        "format": FORMAT_VERSION,
        **model_record(model),
        "protocol": protocol.to_dict(),
        "sources": sha256_hex("\n".join(sources.paths)),
        "shard_size": shard_size,
    }
    return sha256_hex(json.dumps(plan, sort_keys=True))


def _valid_shard(
    path: Path, plan: str, index: int, planned: int, paths: list[str] | None = None
) -> Shard | None:
    """The shard at ``path`` if it verifies and is shard ``index`` of ``plan`` with ``planned``
    images (and, given the source list, exactly ``paths``); None otherwise."""
    if not path.is_file():
        return None
    try:
        shard = read_shard(path)
    except GqtokError:
        return None
    m = shard.meta
    ok = m.get("plan") == plan and m.get("shard") == index and m.get("planned") == planned
    if paths is not None:
        ok = ok and m.get("planned_paths_sha256") == sha256_hex("\n".join(paths))
    return shard if ok else None


def _npy_files(k: int, arrays: Iterable[str]) -> list[str]:
    """The .npy files written beside shard k: one per tensor it holds, and the paths."""
    have = {*arrays, "paths"}
    return sorted(n for key, n in npy_names(k).items() if key in have)


def _record(k: int, shard_size: int, meta: dict[str, Any], npy: list[str]) -> dict[str, Any]:
    """The manifest's line for shard k, from its metadata (the same whether the shard was
    just written or read back, where JSON comes with sorted keys)."""
    keys = ("index", "path", "error")
    return {
        "file": shard_name(k),
        "start": k * shard_size,
        "planned": meta["planned"],
        "count": len(meta["paths"]),
        "skipped": [{key: s[key] for key in keys if key in s} for s in meta["skipped"]],
        "npy": npy,
    }


def _manifest(
    header: dict[str, Any], shards: list[dict[str, Any]], complete: bool, **extra: int
) -> dict[str, Any]:
    return {
        **header,
        "shards": shards,
        "images": sum(s["count"] for s in shards),
        "skipped": sum(len(s["skipped"]) for s in shards),
        "complete": complete,
        **extra,
    }


def _write_json(out: Path, name: str, record: dict[str, Any]) -> None:
    text = json.dumps(record, indent=2) + "\n"
    atomic_write_bytes(out / name, text.encode(), overwrite=True)


def _rank_files(out: Path) -> list[Path]:
    return sorted(p for p in out.glob("rank-*-of-*.json") if RANK_FILE.fullmatch(p.name))


def _publish_manifest(out: Path, record: dict[str, Any]) -> None:
    """The final manifest.json; the rank files it supersedes go (a rank that rewrites its own
    afterwards, or a folder some rank never finished in, keeps one: harmless, same plan)."""
    _write_json(out, MANIFEST, record)
    for p in _rank_files(out):
        p.unlink(missing_ok=True)


@dataclass
class ExportResult:
    """What a run did. Under torchrun every rank gets the totals of all ranks; a job-array
    rank gets its own, and ``missing`` lists the shards no rank had written when it ended."""

    folder: Path
    images: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, error)
    shards_written: int = 0
    shards_kept: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    rank: int = 0
    world_size: int = 1
    manifest: bool = False  # manifest.json was written, listing every shard
    missing: list[int] = field(default_factory=list)


class _Exporter:
    """One export run; see export_tokens."""

    def __init__(
        self,
        model: Model,
        sources: Sources,
        out: Path,
        protocol: Protocol,
        shard_size: int,
        npy: bool,
        batch_size: int,
        workers: int,
        max_pixels: int,
        max_memory: int | str | None,
        world: World,
    ) -> None:
        self.model, self.sources, self.out, self.protocol = model, sources, out, protocol
        self.shard_size, self.npy, self.batch_size = shard_size, npy, batch_size
        self.workers, self.max_pixels, self.max_memory = workers, max_pixels, max_memory
        self.world = world
        self.dtype = token_dtype(model.quant.size)
        self.plan = plan_fingerprint(model, protocol, sources, shard_size)
        self.n_shards = max(1, -(-len(sources.paths) // shard_size))
        self.header = self.make_header()
        self.result = ExportResult(out, rank=world.rank, world_size=world.size)
        self.lock = threading.Lock()
        self.progress: Callable[[int, int], None] | None = None
        self.done = 0
        self.total = len(sources.paths)

    def make_header(self) -> dict[str, Any]:
        """The manifest without its shards: all that --merge needs to check the shards and
        write the manifest without the model or the sources (every rank file carries it)."""
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "gqtok_version": __version__,
            **model_record(self.model),
            "protocol": self.protocol.to_dict(),
            "sources": {
                "root": str(self.sources.root.resolve()),
                "list_file": str(self.sources.list_file) if self.sources.list_file else None,
                "count": len(self.sources.paths),
                "paths_sha256": sha256_hex("\n".join(self.sources.paths)),
            },
            "shard_size": self.shard_size,
            "plan": self.plan,
        }

    def planned(self, k: int) -> list[str]:
        return self.sources.paths[k * self.shard_size : (k + 1) * self.shard_size]

    def write_progress(self, shards: list[dict[str, Any]], complete: bool) -> None:
        """The running manifest of one process (the complete one is run's to publish, once);
        this rank's rank file among several."""
        if not self.world.distributed:
            if not complete:
                _write_json(self.out, MANIFEST, _manifest(self.header, shards, complete))
            return
        w = self.world
        record = _manifest(self.header, shards, complete, rank=w.rank, world_size=w.size)
        _write_json(self.out, rank_file(w.rank, w.size), record)

    def load(self, rel: str) -> tuple[np.ndarray, np.ndarray | None]:
        t0 = time.perf_counter()
        rgb = read_image(self.sources.resolve(rel), max_pixels=self.max_pixels, name=rel).rgb
        prepared = self.protocol.prepare(rgb)
        self._time("io", t0)
        return prepared

    def _time(self, key: str, t0: float) -> None:
        dt = time.perf_counter() - t0
        with self.lock:  # called from the I/O threads
            self.result.timings[key] = self.result.timings.get(key, 0.0) + dt

    def encode_shard(self, start: int, paths: list[str]) -> tuple[list[Entry], list[dict]]:
        entries: list[Entry] = []
        skipped: list[dict[str, Any]] = []
        items = list(enumerate(paths, start))
        loaded = prefetch(lambda it: self.load(it[1]), items, self.workers, 2 * self.batch_size)
        for batch in batched(loaded, self.batch_size):
            good = []
            for (i, rel), got in batch:
                if isinstance(got, BaseException):
                    msg = str(got) if isinstance(got, GqtokError) else f"{rel}: {got!r}"
                    skipped.append({"index": i, "path": rel, "error": msg})
                    self.result.skipped.append((rel, msg))
                else:
                    good.append((i, rel, *got))
            try:
                entries += self.encode_batch(good)
            except Exception:  # noqa: BLE001 - find the image(s) at fault, keep the others
                for one in good:
                    try:
                        entries += self.encode_batch([one])
                    except Exception as e:  # noqa: BLE001 - recorded as a skip, not fatal
                        i, rel = one[:2]
                        msg = str(e) if isinstance(e, GqtokError) else f"{rel}: {first_line(e)}"
                        skipped.append({"index": i, "path": rel, "error": msg})
                        self.result.skipped.append((rel, msg))
            self.advance(len(batch))
        return entries, skipped

    def encode_batch(
        self, good: list[tuple[int, str, np.ndarray, np.ndarray | None]]
    ) -> list[Entry]:
        """Entries of loaded images (index, path, pixels, the image before the protocol's
        scale), and their mirror images' tokens under the flip protocol. Tokens of an image
        coded larger carry the colour correction its .gq file would (the flipped ones none)."""
        from gqtok.codec import encode_arrays
        from gqtok.codec.engine import resampled_to, with_color

        arrays = [rgb for _, _, rgb, _ in good]
        if self.protocol.flip:
            arrays += [np.ascontiguousarray(rgb[:, ::-1]) for rgb in arrays]
        timings: dict[str, float] = {}
        toks = encode_arrays(
            self.model, arrays, self.protocol.pad_mode, self.batch_size, timings, self.max_memory
        )
        with self.lock:
            for key, v in timings.items():
                self.result.timings[key] = self.result.timings.get(key, 0.0) + v
        out = []
        for k, (i, rel, _, before) in enumerate(good):
            tok = toks[k]
            flip = toks[k + len(good)].indices.numpy() if self.protocol.flip else None
            image, color = None, ()
            if before is not None:
                image = (before.shape[1], before.shape[0])
                color = with_color(self.model, resampled_to(tok, before), before,
                                   self.max_memory).color  # fmt: skip
            out.append(Entry(i, rel, tok.indices.numpy(), tok.width, tok.height, flip, image,
                             color))  # fmt: skip
        return out

    def advance(self, n: int) -> None:
        self.done += n
        if self.progress:
            self.progress(self.done, self.total)

    def write_shard(
        self, k: int, entries: list[Entry], skipped: list[dict], paths: list[str]
    ) -> tuple[dict[str, Any], list[str]]:
        """Write shard k (its .npy files first, so the shard's name appears last); its meta
        and the names of its tensors."""
        tensors = shard_arrays(entries, self.dtype, self.protocol.flip)
        meta = {
            "format": FORMAT_VERSION,
            **{key: self.header[key] for key in ("model", "codebook", "dtype")},
            "protocol": self.protocol.to_dict(),
            "plan": self.plan,
            "shard": k,
            "start": k * self.shard_size,
            "planned": len(paths),
            "planned_paths_sha256": sha256_hex("\n".join(paths)),
            "paths": [e.path for e in entries],
            "skipped": skipped,
        }
        if self.npy:
            self.write_npy(k, tensors, meta["paths"])
        atomic_write_bytes(self.out / shard_name(k), shard_bytes(tensors, meta), overwrite=True)
        return meta, list(tensors)

    def write_npy(self, k: int, tensors: dict[str, np.ndarray], paths: list[str]) -> None:
        arrays = {**tensors, "paths": np.array(paths, dtype=np.str_)}
        for key, name in npy_names(k).items():
            if key in arrays:
                atomic_write_bytes(self.out / name, npy_bytes(arrays[key]), overwrite=True)

    def npy_ok(self, k: int, shard: Shard) -> bool:
        for key, name in npy_names(k).items():
            if key == "paths" or key in shard.tensors:
                try:
                    a = np.load(self.out / name, allow_pickle=False)
                except (OSError, ValueError):
                    return False
                want = shard.meta["paths"] if key == "paths" else shard.tensors[key]
                if not np.array_equal(a, np.asarray(want)):
                    return False
        return True

    def run(self, progress: Callable[[int, int], None] | None) -> ExportResult:
        self.progress = progress
        mine = self.world.part(range(self.n_shards))
        self.total = sum(len(self.planned(k)) for k in mine)
        records: dict[int, dict[str, Any]] = {}
        self.write_progress([], complete=not mine)
        for k in mine:
            records[k] = self.export_shard(k)
            self.write_progress(list(records.values()), complete=len(records) == len(mine))
        _remove_shards_from(self.out, self.n_shards, self.world)
        if self.world.group:
            self.gather(records)
        elif self.world.distributed:
            self.finish_alone(records)
        else:
            _publish_manifest(self.out, _manifest(self.header, list(records.values()), True))
            self.result.manifest = True
        return self.result

    def export_shard(self, k: int) -> dict[str, Any]:
        """Keep shard k if it is valid for this plan, else encode and write it; its record."""
        part = self.planned(k)
        shard = _valid_shard(self.out / shard_name(k), self.plan, k, len(part), part)
        if shard is not None:
            self.result.shards_kept += 1
            self.result.skipped += [(s["path"], s["error"]) for s in shard.meta["skipped"]]
            if self.npy and not self.npy_ok(k, shard):
                self.write_npy(k, shard.tensors, shard.meta["paths"])
            self.advance(len(part))
            meta, arrays = shard.meta, list(shard.tensors)
        else:
            if self.world.distributed:  # no manifest.json may list a shard being rewritten
                (self.out / MANIFEST).unlink(missing_ok=True)
            entries, skipped = self.encode_shard(k * self.shard_size, part)
            meta, arrays = self.write_shard(k, entries, skipped, part)
            self.result.shards_written += 1
        self.result.images += len(meta["paths"])
        npy = _npy_files(k, arrays) if self.npy else []
        return _record(k, self.shard_size, meta, npy)

    def gather(self, records: dict[int, dict[str, Any]]) -> None:
        """torchrun: the records and totals of every rank on every rank; rank 0 writes the
        manifest while the others wait, so it exists once any rank returns."""
        r = self.result
        mine = (list(records.values()), r.images, r.skipped, r.shards_written, r.shards_kept)
        everyone = self.world.all_gather((mine, r.timings))
        shards = sorted((rec for (recs, *_), _ in everyone for rec in recs), key=_start)
        if len(shards) != self.n_shards:
            raise OutputError(f"the ranks wrote {len(shards)} of {self.n_shards} shards", None)
        r.images = sum(m[1] for m, _ in everyone)
        r.skipped = [s for m, _ in everyone for s in m[2]]
        r.shards_written = sum(m[3] for m, _ in everyone)
        r.shards_kept = sum(m[4] for m, _ in everyone)
        r.timings = {}
        for _, timings in everyone:
            for key, v in timings.items():
                r.timings[key] = r.timings.get(key, 0.0) + v
        if self.world.is_main:
            record = _manifest(self.header, shards, True, world_size=self.world.size)
            _publish_manifest(self.out, record)
        self.world.barrier()
        r.manifest = True

    def finish_alone(self, records: dict[int, dict[str, Any]]) -> None:
        """A job-array rank at its end: if every other rank's shards are there and valid, it
        writes manifest.json (the last rank to finish does; ``merge_export`` otherwise)."""
        ks = range(self.n_shards)
        missing = [k for k in ks if not (self.out / shard_name(k)).is_file()]
        shards = []
        for k in [] if missing else ks:  # only when no shard is missing: once, at the end
            if k in records:
                shards.append(records[k])
                continue
            part = self.planned(k)
            shard = _valid_shard(self.out / shard_name(k), self.plan, k, len(part), part)
            if shard is None:
                missing.append(k)
            else:
                npy = _npy_on_disk(self.out, k, shard)
                shards.append(_record(k, self.shard_size, shard.meta, npy))
        self.result.missing = missing
        if not missing:
            record = _manifest(self.header, shards, True, world_size=self.world.size)
            _publish_manifest(self.out, record)
            self.result.manifest = True


def _start(record: dict[str, Any]) -> int:
    return int(record["start"])


def _npy_on_disk(out: Path, k: int, shard: Shard) -> list[str]:
    """Shard k's .npy files if all of them are there (a rank wrote them with --npy)."""
    names = _npy_files(k, shard.tensors)
    return names if all((out / n).is_file() for n in names) else []


def _check_folder(out: Path, plan: str, overwrite: bool) -> None:
    """Refuse to mix two different exports in one folder (unless overwriting). Every rank runs
    this, at once: with ``overwrite`` each removes the manifest and rank files another plan
    left, never a file of its own plan, so no rank deletes another's progress."""
    if out.exists() and not out.is_dir():
        raise OutputError("exists and is not a folder", str(out))
    if not out.is_dir():
        return
    for path in [out / MANIFEST, *_rank_files(out)]:
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # gone, or torn by hand: the shards are checked one by one anyway
        if not isinstance(old, dict) or old.get("plan") == plan:
            continue
        if not overwrite:
            raise OutputError(
                "holds an export with other settings, sources or model"
                " (use --overwrite to replace it, or another folder)",
                str(out),
            )
        path.unlink(missing_ok=True)


def _shard_number(name: str) -> int | None:
    """k of shard-k.safetensors, shard-k.<array>.npy and their temp files (.shard-k...tmp)."""
    num = name.lstrip(".")[len("shard-") :].split(".", 1)[0]
    return int(num) if num.isdigit() else None


def _remove_shards_from(out: Path, first: int, world: World) -> None:
    """Shards (and their .npy files) of an earlier, longer export: not part of this plan.
    Each rank removes those that would be its own (k % N), so the ranks never race."""
    for p in list(out.glob("shard-*.safetensors")) + list(out.glob("shard-*.*.npy")):
        k = _shard_number(p.name)
        if k is not None and k >= first and k % world.size == world.rank:
            p.unlink(missing_ok=True)


def _clean_temps(out: Path, world: World) -> None:
    """Temp files of a run that was killed mid-write (atomic writes clean up otherwise).

    io.files names them ``.<name>.<random>.tmp``; a rank removes only those of names it writes
    itself (its shards, its rank file), never one another rank is filling right now. Temps of
    manifest.json go where one process writes it: one process, torchrun's rank 0 before the
    others can have finished, or merge_export; rank 0 also takes those of rank files of another
    world size. A job-array rank leaves manifest temps alone: another rank may be publishing.
    """
    for p in out.glob(".shard-*.tmp"):
        k = _shard_number(p.name)
        if k is not None and k % world.size == world.rank:
            p.unlink(missing_ok=True)
    mine = rank_file(world.rank, world.size)
    for p in out.glob(".rank-*-of-*.json.*.tmp"):
        m = RANK_FILE.fullmatch(p.name[1:].rsplit(".", 2)[0])
        other_size = m is not None and int(m.group(2)) != world.size
        if p.name.startswith(f".{mine}.") or (world.is_main and other_size):
            p.unlink(missing_ok=True)
    if not world.distributed or (world.group and world.is_main):
        _clean_manifest_temps(out)


def _clean_manifest_temps(out: Path) -> None:
    for p in out.glob(f".{MANIFEST}.*.tmp"):
        p.unlink(missing_ok=True)


def _from_main(world: World, make: Callable[[], T]) -> T:
    """``make()`` of rank 0, on every rank of torchrun's group (of each rank in a job array):
    one listing of a large source folder, the same list everywhere. An error there is raised
    on every rank, so no rank waits for one that has given up."""
    value: T | None = None
    error: GqtokError | None = None
    if world.is_main or not world.group:
        try:
            value = make()
        except GqtokError as e:
            error = e
    value, error = world.broadcast((value, error))
    if error is not None:
        raise error
    return value  # type: ignore[return-value]  # set wherever no error was raised


def _sources(source: str | Path | Sources, recursive: bool) -> Sources:
    sources = source if isinstance(source, Sources) else find_sources(source, recursive)
    if not sources.paths:
        raise InputError("no images found", str(source))
    return sources


def export_tokens(
    model: Model,
    source: str | Path | Sources,
    out: str | Path,
    *,
    resize: int | None = None,
    center_crop: int | None = None,
    flip: bool = False,
    pad_mode: str = "replicate",
    shard_size: int = 1024,
    npy: bool = False,
    batch_size: int = 8,
    workers: int | None = None,
    recursive: bool = True,
    overwrite: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_memory: int | str | None = None,
    progress: Callable[[int, int], None] | None = None,
    world: World | None = None,
    scale: float = 1.0,
) -> ExportResult:
    """Tokenize a folder or list file into ``out`` (resumable; see the module docstring);
    ``scale`` resamples each prepared image by that factor first (``export --quality``).

    Unreadable images are skipped and listed (``ExportResult.skipped``, the manifest) instead
    of stopping the export. ``workers`` I/O threads read and prepare images while the network
    runs (default: 1 on 2 cores).

    ``world`` shares the export among processes by whole shards (shard k to rank k % N):
    torchrun's ranks (``World.from_env()``; the process group is joined here if it is not
    yet, and rank 0 lists the sources for all) or a job array's (``World.array(rank, n)``,
    every rank lists the same sources itself). ``progress`` counts this rank's images.
    """
    if shard_size < 1 or batch_size < 1:
        raise ValueError("shard_size and batch_size must be at least 1")
    world = world or World()
    start(world)
    sources = _from_main(world, lambda: _sources(source, recursive))
    protocol = Protocol(resize, center_crop, flip, pad_mode, model.precision, scale)
    out = Path(out)
    plan = plan_fingerprint(model, protocol, sources, shard_size)
    if len(set(world.all_gather(plan))) > 1:
        raise UsageError("the ranks disagree on the export: give each the same model and options")
    _check_folder(out, plan, overwrite)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create the folder ({e.strerror or e})", str(out)) from None
    _clean_temps(out, world)
    exporter = _Exporter(
        model,
        sources,
        out,
        protocol,
        shard_size,
        npy,
        batch_size,
        default_io_workers() if workers is None else workers,
        max_pixels,
        max_memory,
        world,
    )
    return exporter.run(progress)


def _merge_header(out: Path) -> tuple[dict[str, Any], int]:
    """The export's header (the newest of manifest.json and the rank files, which must all be
    of one plan) and its world size (1 if no rank file or manifest records one)."""
    found: list[tuple[float, dict[str, Any]]] = []
    for path in [out / MANIFEST, *_rank_files(out)]:
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            continue
        found.append((mtime, read_manifest(out, path.name)))
    if not found:
        raise InputError(f"no {MANIFEST} and no rank-R-of-N.json: not a gqtok export", str(out))
    if len({m.get("plan") for _, m in found}) > 1:
        raise InputError(
            "holds rank files of different exports (other settings, sources or model):"
            " rerun the ranks with --overwrite",
            str(out),
        )
    newest = max(found, key=lambda f: f[0])[1]
    count = (newest.get("sources") or {}).get("count")
    if type(count) is not int or count < 1 or not {"shard_size", "plan"} <= newest.keys():
        raise InputError(f"{MANIFEST} lacks sources.count, shard_size or plan", str(out))
    skip = ("shards", "images", "skipped", "complete", "rank", "world_size")
    header = {k: v for k, v in newest.items() if k not in skip}
    return header, int(newest.get("world_size", 1))


def _shard_label(k: int, size: int) -> str:
    return f"shard {k} (rank {k % size} of {size})" if size > 1 else f"shard {k}"


def _missing_message(shown: list[int], total: int, kind: str, size: int) -> str:
    """One line: which shards are missing or damaged (the first ones of ``total``), whose
    they are, what to do."""
    text = ", ".join(_shard_label(k, size) for k in shown[:4])
    if total > 4:
        text += f" and {total - 4} more"
    if size <= 1:
        return f"{text} {kind}: rerun the export"
    if total == 1:
        return f"{text} {kind}: rerun that rank"
    ranks = ", ".join(str(r) for r in sorted({k % size for k in shown[:4]}))
    return f"{text} {kind}: rerun rank(s) {ranks}" + (", ..." if total > 4 else "")


def merge_export(folder: str | Path) -> ExportResult:
    """Write the manifest of an export that several independent processes (a job array) made:
    every planned shard must exist and verify (checksum, plan, index); an InputError names each
    one that does not and its rank. Needs neither the model nor the sources: the rank files
    (or an earlier manifest) hold the plan. Safe to repeat."""
    out = Path(folder)
    if not out.is_dir():
        raise InputError("no such export folder", str(out))
    header, size = _merge_header(out)
    count, shard_size = header["sources"]["count"], int(header["shard_size"])
    result = ExportResult(out, world_size=size)
    n = max(1, -(-count // shard_size))
    # the shards on disk, not range(n): an edited count must not make this loop for ever
    found = (_shard_number(p.name) for p in out.glob("shard-*.safetensors"))
    present = sorted({k for k in found if k is not None and k < n})
    present = [k for k in present if (out / shard_name(k)).is_file()]
    shards: list[dict[str, Any]] = []
    damaged: list[int] = []
    for k in present:
        planned = min(shard_size, count - k * shard_size)
        shard = _valid_shard(out / shard_name(k), header["plan"], k, planned)
        if shard is None:
            damaged.append(k)
            continue
        shards.append(_record(k, shard_size, shard.meta, _npy_on_disk(out, k, shard)))
        result.skipped += [(s["path"], s["error"]) for s in shard.meta["skipped"]]
    absent = n - len(present)
    if damaged or absent:
        taken = set(present)
        gaps = itertools.islice((k for k in range(n) if k not in taken), 4)
        kind = "damaged or of other settings" if not absent else "missing"
        kind = "missing or damaged" if damaged and absent else kind
        text = _missing_message(sorted([*damaged, *gaps]), len(damaged) + absent, kind, size)
        raise InputError(text, str(out))
    _clean_manifest_temps(out)
    extra = {"world_size": size} if size > 1 else {}
    _publish_manifest(out, _manifest(header, shards, True, **extra))
    result.images = sum(s["count"] for s in shards)
    result.shards_kept, result.manifest = len(shards), True
    return result
