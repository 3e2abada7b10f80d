"""Standard streams as coreutils treat them, with real file descriptors in real processes:
a full disk and a closed stdout are one line and exit 6, a closed stdin is one line and exit 3,
a reader that closes the pipe ends gqtok quietly with 141 (as SIGPIPE would)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DATA, REPO

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")


def sh(command: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run ``gqtok ...`` through the shell, so that redirections (>&-, <&-) are real ones."""
    gq = f"{shlex.quote(sys.executable)} -m gqtok"
    return subprocess.run(
        ["bash", "-c", command.replace("gqtok", gq, 1)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def closed_pipe(*args: str) -> subprocess.CompletedProcess:
    """Run gqtok writing into a pipe whose reader is already gone (like `| head -c 0`, without
    the race: the read end is closed before gqtok writes)."""
    p = subprocess.Popen(
        [sys.executable, "-m", "gqtok", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    assert p.stdout is not None and p.stderr is not None
    p.stdout.close()
    err = p.stderr.read().decode()
    p.wait(timeout=300)
    return subprocess.CompletedProcess(p.args, p.returncode, "", err)


@pytest.fixture(scope="module")
def gq_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("stdio")
    shutil.copy(DATA / "photo_b.png", folder / "b.png")
    r = sh(f"gqtok encode {folder / 'b.png'} -q")
    assert r.returncode == 0, r.stderr
    return folder / "b.gq"


@pytest.mark.parametrize("args", ["info GQ", "info GQ --json", "--help", "--version", "models",
                                  "decode GQ -o -"])  # fmt: skip
def test_full_disk_on_stdout(args: str, gq_file: Path) -> None:
    r = sh(f"gqtok {args.replace('GQ', str(gq_file))} > /dev/full")
    assert r.returncode == 6
    assert r.stderr == "error: <stdout>: No space left on device\n"


@pytest.mark.parametrize("args", ["info GQ", "--help", "decode GQ -o -"])
def test_closed_stdout(args: str, gq_file: Path) -> None:
    r = sh(f"gqtok {args.replace('GQ', str(gq_file))} >&-")
    assert r.returncode == 6
    assert r.stderr == "error: <stdout>: Bad file descriptor\n"


def test_closed_stdout_is_fine_when_nothing_goes_there(gq_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "b.png"
    r = sh(f"gqtok decode {gq_file} -o {out} >&-")
    assert r.returncode == 0 and r.stderr == "" and out.stat().st_size > 0


def test_closed_stdin(tmp_path: Path) -> None:
    r = sh(f"gqtok encode - -o {tmp_path / 'x.gq'} <&-")
    assert r.returncode == 3
    assert r.stderr == "error: <stdin>: cannot read (Bad file descriptor)\n"
    assert not list(tmp_path.iterdir())
    r = sh("gqtok info - <&-")
    assert r.returncode == 3 and r.stderr.count("\n") == 1


@pytest.mark.parametrize("args", [["info", "GQ"], ["info", "GQ", "--json"], ["--help"],
                                  ["models"], ["decode", "GQ", "-o", "-"]])  # fmt: skip
def test_reader_gone_is_quiet(args: list[str], gq_file: Path) -> None:
    r = closed_pipe(*[str(gq_file) if a == "GQ" else a for a in args])
    assert r.returncode == 141 and r.stderr == ""


def test_reader_gone_mid_batch(tmp_path: Path) -> None:
    for name in ("a", "b"):
        shutil.copy(DATA / "photo_b.png", tmp_path / f"{name}.png")
    r = closed_pipe("encode", str(tmp_path), "--json")
    assert r.returncode == 141 and r.stderr == ""
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_unencodable_output_is_escaped(gq_file: Path) -> None:
    r = sh("PYTHONIOENCODING=ascii gqtok models")
    assert r.returncode == 0 and "~s/256\\xb2" in r.stdout
