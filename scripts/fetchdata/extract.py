"""Only the listed photos out of a .deb (streamed through `dpkg-deb --fsys-tarfile`, symlinks
followed) or a wheel (a zip), each written atomically to its destination."""

from __future__ import annotations

import os
import subprocess
import tarfile
import zipfile
from pathlib import Path

from .common import FetchError, write_atomic
from .download import tail


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
        raise FetchError(f"dpkg-deb --fsys-tarfile {deb.name} failed: {tail(stderr)}")
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
