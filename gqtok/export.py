"""Token export for training generative models: sharded safetensors plus a manifest.

A folder (or a list file) of images becomes ``shard-00000.safetensors``, ``shard-00001...``
and ``manifest.json`` (format in docs/tokens.md). Each shard holds the token grids of up to
``shard_size`` consecutive images of the sorted source list, flattened into one array with
offsets and shapes, so a data loader reads them with numpy alone. Shard k always holds images
[k * shard_size, (k + 1) * shard_size) of the list, which makes an export resumable: a re-run
keeps every shard that is complete, belongs to the same plan (model, codebook, protocol,
sources, shard size) and whose checksum verifies, and encodes only the rest. Shards appear
atomically (temp file + rename), so an interrupted run leaves whole shards or none.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gqtok.errors import GqtokError, InputError, OutputError, first_line
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

    def to_dict(self) -> dict[str, Any]:
        return {
            "resize": self.resize,
            "resize_filter": "Pillow bilinear, antialiased; long side truncated (torchvision)",
            "center_crop": self.center_crop,
            "flip": self.flip,
            "pad_mode": self.pad_mode,
            "color": "8-bit RGB: EXIF orientation applied, gray replicated, alpha dropped",
        }

    def prepare(self, rgb: np.ndarray) -> np.ndarray:
        from gqtok.eval.evaluate import preprocess

        if self.resize or self.center_crop:
            return preprocess(rgb, self.resize, self.center_crop)
        return rgb


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


def _valid_shard(path: Path, plan: str, index: int, paths: list[str]) -> Shard | None:
    if not path.is_file():
        return None
    try:
        shard = read_shard(path)
    except GqtokError:
        return None
    m = shard.meta
    planned = m.get("plan") == plan and m.get("shard") == index
    ok = planned and m.get("planned_paths_sha256") == sha256_hex("\n".join(paths))
    return shard if ok else None


@dataclass
class ExportResult:
    folder: Path
    images: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, error)
    shards_written: int = 0
    shards_kept: int = 0
    timings: dict[str, float] = field(default_factory=dict)


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
    ) -> None:
        self.model, self.sources, self.out, self.protocol = model, sources, out, protocol
        self.shard_size, self.npy, self.batch_size = shard_size, npy, batch_size
        self.workers, self.max_pixels, self.max_memory = workers, max_pixels, max_memory
        self.dtype = token_dtype(model.quant.size)
        self.plan = plan_fingerprint(model, protocol, sources, shard_size)
        self.result = ExportResult(out)
        self.lock = threading.Lock()
        self.progress: Callable[[int, int], None] | None = None
        self.done = 0

    def manifest(self, shards: list[dict[str, Any]], complete: bool) -> dict[str, Any]:
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
            "shards": shards,
            "images": sum(s["count"] for s in shards),
            "skipped": sum(len(s["skipped"]) for s in shards),
            "complete": complete,
        }

    def write_manifest(self, shards: list[dict[str, Any]], complete: bool) -> None:
        text = json.dumps(self.manifest(shards, complete), indent=2) + "\n"
        atomic_write_bytes(self.out / MANIFEST, text.encode(), overwrite=True)

    def load(self, rel: str) -> np.ndarray:
        t0 = time.perf_counter()
        rgb = read_image(self.sources.resolve(rel), max_pixels=self.max_pixels, name=rel).rgb
        rgb = self.protocol.prepare(rgb)
        self._time("io", t0)
        return rgb

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
            for (i, rel), rgb in batch:
                if isinstance(rgb, BaseException):
                    msg = str(rgb) if isinstance(rgb, GqtokError) else f"{rel}: {rgb!r}"
                    skipped.append({"index": i, "path": rel, "error": msg})
                    self.result.skipped.append((rel, msg))
                else:
                    good.append((i, rel, rgb))
            try:
                entries += self.encode_batch(good)
            except Exception:  # noqa: BLE001 - find the image(s) at fault, keep the others
                for one in good:
                    try:
                        entries += self.encode_batch([one])
                    except Exception as e:  # noqa: BLE001 - recorded as a skip, not fatal
                        i, rel, _ = one
                        msg = str(e) if isinstance(e, GqtokError) else f"{rel}: {first_line(e)}"
                        skipped.append({"index": i, "path": rel, "error": msg})
                        self.result.skipped.append((rel, msg))
            self.advance(len(batch))
        return entries, skipped

    def encode_batch(self, good: list[tuple[int, str, np.ndarray]]) -> list[Entry]:
        """Entries of loaded images (and their mirror images under the flip protocol)."""
        from gqtok.codec import encode_arrays

        arrays = [rgb for _, _, rgb in good]
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
        for k, (i, rel, _) in enumerate(good):
            tok = toks[k]
            flip = toks[k + len(good)].indices.numpy() if self.protocol.flip else None
            out.append(Entry(i, rel, tok.indices.numpy(), tok.width, tok.height, flip))
        return out

    def advance(self, n: int) -> None:
        self.done += n
        if self.progress:
            self.progress(self.done, len(self.sources.paths))

    def write_shard(
        self, k: int, entries: list[Entry], skipped: list[dict], paths: list[str]
    ) -> None:
        tensors = shard_arrays(entries, self.dtype, self.protocol.flip)
        meta = {
            "format": FORMAT_VERSION,
            **model_record(self.model),
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
        paths = self.sources.paths
        n_shards = max(1, -(-len(paths) // self.shard_size))
        records: list[dict[str, Any]] = []
        self.write_manifest(records, complete=False)
        for k in range(n_shards):
            part = paths[k * self.shard_size : (k + 1) * self.shard_size]
            shard = _valid_shard(self.out / shard_name(k), self.plan, k, part)
            if shard is not None:
                self.result.shards_kept += 1
                skipped = shard.meta["skipped"]
                self.result.skipped += [(s["path"], s["error"]) for s in skipped]
                if self.npy and not self.npy_ok(k, shard):
                    self.write_npy(k, shard.tensors, shard.meta["paths"])
                count = len(shard.meta["paths"])
                self.advance(len(part))
            else:
                entries, skipped = self.encode_shard(k * self.shard_size, part)
                self.write_shard(k, entries, skipped, part)
                self.result.shards_written += 1
                count = len(entries)
            self.result.images += count
            records.append(
                {
                    "file": shard_name(k),
                    "start": k * self.shard_size,
                    "planned": len(part),
                    "count": count,
                    "skipped": skipped,
                    "npy": sorted(npy_names(k).values()) if self.npy else [],
                }
            )
            self.write_manifest(records, complete=k == n_shards - 1)
        _remove_shards_from(self.out, n_shards)
        return self.result


def _check_folder(out: Path, plan: str, overwrite: bool) -> None:
    """Refuse to mix two different exports in one folder (unless overwriting)."""
    if out.exists() and not out.is_dir():
        raise OutputError("exists and is not a folder", str(out))
    if not (out / MANIFEST).exists() or overwrite:
        return
    try:
        old = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # a torn manifest of ours: the shards are checked one by one anyway
    if old.get("plan") != plan:
        raise OutputError(
            "holds an export with other settings, sources or model"
            " (use --overwrite to replace it, or another folder)",
            str(out),
        )


def _remove_shards_from(out: Path, first: int) -> None:
    """Shards (and their .npy files) of an earlier, longer export: not part of this plan."""
    for p in list(out.glob("shard-*.safetensors")) + list(out.glob("shard-*.*.npy")):
        num = p.name[len("shard-") :].split(".", 1)[0]
        if num.isdigit() and int(num) >= first:
            p.unlink(missing_ok=True)


def _clean_temps(out: Path) -> None:
    """Temp files of a run that was killed mid-write (atomic writes clean up otherwise)."""
    for p in out.glob(".shard-*.tmp"):
        p.unlink(missing_ok=True)
    for p in out.glob(f".{MANIFEST}.*.tmp"):
        p.unlink(missing_ok=True)


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
) -> ExportResult:
    """Tokenize a folder or list file into ``out`` (resumable; see the module docstring).

    Unreadable images are skipped and listed (``ExportResult.skipped``, the manifest) instead
    of stopping the export. ``workers`` I/O threads read and prepare images while the network
    runs (default: 1 on 2 cores).
    """
    if shard_size < 1 or batch_size < 1:
        raise ValueError("shard_size and batch_size must be at least 1")
    sources = source if isinstance(source, Sources) else find_sources(source, recursive)
    if not sources.paths:
        raise InputError("no images found", str(source))
    protocol = Protocol(resize, center_crop, flip, pad_mode)
    out = Path(out)
    plan = plan_fingerprint(model, protocol, sources, shard_size)
    _check_folder(out, plan, overwrite)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create the folder ({e.strerror or e})", str(out)) from None
    _clean_temps(out)
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
    )
    return exporter.run(progress)
