"""scripts/photo_manifest.json: which photos of which package, under what name and licence."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from .normalise import ROTATIONS


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


def safe_stem(stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "photo"


def load_manifest(path: Path) -> list[Package]:
    """The packages in manifest order; a malformed entry stops the script with its path."""
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
