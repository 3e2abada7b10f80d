"""Getting a package's archive: the download cache, then `apt-get download` for a .deb or
`pip download --no-deps` for a wheel; a partial download never lands under its final name."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .common import FetchError, log, warn
from .manifest import Package


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


def tail(text: str, lines: int = 6) -> str:
    """The last lines of a tool's output, for an error message."""
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
                errors.append(f"apt-get download {spec}: {tail(proc.stdout + proc.stderr)}")
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
            warn(f"apt-get update failed:\n    {tail(proc.stdout + proc.stderr)}")
        return True

    def _pip_download(self, pkg: Package, tmpdir: Path) -> Path:
        spec = f"{pkg.package}=={pkg.version}" if pkg.version else pkg.package
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "-d", str(tmpdir), spec]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(tmpdir.glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise FetchError(
                f"{pkg.package}: pip download {spec} failed\n    {tail(proc.stdout + proc.stderr)}"
            )
        return wheels[0]
