"""Hostile input, class 11: a crafted input must not make a command allocate far beyond what
the image size allowed by --max-pixels needs.

``gqtok decode`` refuses a .gq file from its header (at most a few hundred bytes read) when the
image is over --max-pixels, a field is out of the format's limits or the file size disagrees
with the header: multi-GB sparse files and endless pipes cost nothing. ``gqtok import`` refuses
an entry whose image is over --max-pixels before rendering it (and a .npy grid before reading
its tokens). Peak memory is measured on the real CLI in a subprocess (os.wait4's rusage of that
one child) or, in-process, as the rise of this process's peak.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gqtok import export as ex
from gqtok.cli.app import app
from gqtok.format import shards
from tests import gqedit
from tests.conftest import DATA, REPO

runner = CliRunner()
RSS_LIMIT = 400 << 20  # the CLI with torch loaded peaks near 240 MB
RISE_LIMIT = 200 << 20  # what an in-process refusal may add to this process's peak
GIB = 1 << 30
LIMIT_MSG = "over the limit of 200000000 (raise it with --max-pixels)"


def header_only(good: bytes, **fields: object) -> tuple[bytes, int]:
    """The header of ``good`` with these fields (its CRC and payloads left out), and the file
    size the header implies."""
    crafted = gqedit.edit(good, tokens=b"", alpha=b"", **fields)[:-4]
    f = gqedit.fields(crafted + b"\0" * 4)
    return crafted, len(crafted) + f["token_len"] + f["alpha_len"] + 4


def huge_header(good: bytes, size: int = 3 * GIB) -> bytes:
    """A header claiming a 2^20 x 2^20 image whose fields are all within the format's limits
    (grid at f = 32, a token payload that 2^30 tokens can fill) and imply a ``size``-byte file."""
    head, _ = header_only(good, token_len=0)
    token_len = size - len(head) - 4
    assert token_len % 4 == 0
    head, implied = header_only(
        good, width=1 << 20, height=1 << 20, grid_h=1 << 15, grid_w=1 << 15, token_len=token_len
    )
    assert implied == size
    return head


def sparse(path: Path, head: bytes, size: int) -> Path:
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)
    return path


# The child reports its own peak (VmHWM at exit): the kernel's ru_maxrss of a child started by
# vfork/posix_spawn begins at the parent's peak, and pytest's grows to ~1 GB over the suite.
MEASURED = """
import atexit, os, runpy, sys
def report():
    with open("/proc/self/status") as f:
        peak = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
    with open(os.environ["GQTOK_TEST_PEAK"], "w") as out:
        out.write(peak)
atexit.register(report)
sys.argv = ["gqtok", *sys.argv[1:]]
runpy.run_module("gqtok", run_name="__main__")
"""


def run_measured(
    args: list[str], feed: bytes | None = None, zeros: int = 0
) -> tuple[int, str, int]:
    """(exit code, stderr, peak RSS in bytes) of ``python -m gqtok ARGS``. With ``feed``, stdin
    is a pipe carrying ``feed`` and then up to ``zeros`` zero bytes, as far as gqtok reads."""
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    err_path = tmp / f"gqtok-rss-{os.getpid()}.err"
    peak_path = tmp / f"gqtok-rss-{os.getpid()}.peak"
    env = {**os.environ, "GQTOK_TEST_PEAK": str(peak_path)}
    with open(err_path, "w+b") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", MEASURED, *args],
            stdin=subprocess.PIPE if feed is not None else subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=REPO,
            env=env,
        )
        writer = None
        if feed is not None:
            writer = threading.Thread(target=_feed, args=(proc.stdin, feed, zeros), daemon=True)
            writer.start()
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if writer is not None:
            writer.join(10)
        err.seek(0)
        text = err.read().decode()
    err_path.unlink()
    peak = int(peak_path.read_text()) * 1024  # VmHWM is in kB
    peak_path.unlink()
    return proc.returncode, text, peak


def _feed(pipe, data: bytes, zeros: int) -> None:  # noqa: ANN001
    chunk = bytes(1 << 20)
    try:
        pipe.write(data)
        while zeros > 0:
            zeros -= pipe.write(chunk[: min(zeros, len(chunk))])
    except OSError:  # BrokenPipeError: gqtok stopped reading, as it should
        pass
    finally:
        try:
            pipe.close()
        except OSError:
            pass


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ------------------------------------------------------------------------------------------
# gqtok decode


def test_a_multi_gb_file_over_max_pixels_is_refused_from_its_header(
    good_gq: bytes, tmp_path: Path
) -> None:
    path = sparse(tmp_path / "huge.gq", huge_header(good_gq), 3 * GIB)
    code, err, rss = run_measured(["decode", str(path), "-o", str(tmp_path / "x.png")])
    assert code == 3, err
    assert err == f"error: {path}: image has {1 << 40} pixels, {LIMIT_MSG}\n"
    assert rss < RSS_LIMIT, f"peak RSS {rss >> 20} MB"
    assert not (tmp_path / "x.png").exists()


def test_the_same_through_a_pipe_is_refused_after_the_header(
    good_gq: bytes, tmp_path: Path
) -> None:
    head = huge_header(good_gq)
    code, err, rss = run_measured(
        ["decode", "-", "-o", str(tmp_path / "x.png")], feed=head, zeros=3 * GIB - len(head)
    )
    assert code == 3, err
    assert err == f"error: <stdin>: image has {1 << 40} pixels, {LIMIT_MSG}\n"
    assert rss < RSS_LIMIT, f"peak RSS {rss >> 20} MB"


def test_a_file_whose_size_disagrees_with_its_header_is_not_read(
    good_gq: bytes, tmp_path: Path
) -> None:
    path = sparse(tmp_path / "long.gq", good_gq, 3 * GIB)
    code, err, rss = run_measured(["decode", str(path), "-o", str(tmp_path / "x.png")])
    assert code == 4, err
    assert err == (
        f"error: {path}: corrupt .gq file (has trailing bytes: {3 * GIB} bytes,"
        f" header says {len(good_gq)})\n"
    )
    assert rss < RSS_LIMIT, f"peak RSS {rss >> 20} MB"


def test_a_small_image_with_gigabytes_of_payload_is_refused_by_its_fields(
    good_gq: bytes, tmp_path: Path
) -> None:
    """Within --max-pixels, but a 1x1 image cannot have a 4 GiB token payload: that is a
    FormatError from the header, before the payload is read (here in-process)."""
    head, size = header_only(
        good_gq, width=1, height=1, grid_h=1, grid_w=1, token_len=(1 << 32) - 4
    )
    path = sparse(tmp_path / "long.gq", head, size)
    before = peak_rss()
    r = runner.invoke(app, ["decode", str(path), "-o", str(tmp_path / "x.png")])
    assert peak_rss() - before < RISE_LIMIT
    assert r.exit_code == 4, r.output
    assert r.stderr == (
        f"error: {path}: corrupt .gq header (token payload of {(1 << 32) - 4} bytes is too long"
        " for 1 tokens)\n"
    )


def test_stdin_that_does_not_end_is_read_only_a_little_past_the_file(
    good_gq: bytes, tmp_path: Path
) -> None:
    code, err, rss = run_measured(
        ["decode", "-", "-o", str(tmp_path / "x.png")], feed=good_gq, zeros=3 * GIB
    )
    assert code == 4, err
    size = len(good_gq)
    assert err == f"error: <stdin>: corrupt .gq file (has trailing bytes: header says {size})\n"
    assert rss < RSS_LIMIT, f"peak RSS {rss >> 20} MB"


@pytest.mark.parametrize(
    "cut,problem",
    [
        (-10, "truncated: {n} bytes, header says {size}"),
        (10, "has trailing bytes: {n} bytes, header says {size}"),
    ],
)
def test_short_or_long_stdin_keeps_its_exact_message(
    good_gq: bytes, tmp_path: Path, cut: int, problem: str
) -> None:
    data = good_gq[:cut] if cut < 0 else good_gq + bytes(cut)
    r = runner.invoke(app, ["decode", "-", "-o", str(tmp_path / "x.png")], input=data)
    assert r.exit_code == 4, r.output
    msg = problem.format(n=len(data), size=len(good_gq))
    assert r.stderr == f"error: <stdin>: corrupt .gq file ({msg})\n"


def test_a_valid_file_from_a_path_and_stdin_decodes_the_same(
    good_gq: bytes, tmp_path: Path
) -> None:
    path = tmp_path / "b.gq"
    path.write_bytes(good_gq)
    a = runner.invoke(app, ["decode", str(path), "-o", str(tmp_path / "a.png"), "-q"])
    b = runner.invoke(app, ["decode", "-", "-o", str(tmp_path / "b.png"), "-q"], input=good_gq)
    assert a.exit_code == b.exit_code == 0, a.output + b.output
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    r = runner.invoke(app, ["decode", str(path), "-o", str(tmp_path / "c.png"),
                            "--max-pixels", str(150 * 97 - 1)])  # fmt: skip
    assert r.exit_code == 3 and r.stderr == (
        f"error: {path}: image has {150 * 97} pixels, over the limit of {150 * 97 - 1}"
        " (raise it with --max-pixels)\n"
    )


# ------------------------------------------------------------------------------------------
# gqtok import


def test_a_npy_grid_over_max_pixels_is_refused_before_its_tokens_are_read(
    model, tmp_path: Path  # noqa: ANN001
) -> None:
    """A 512 MiB sparse (1, 2^14, 2^14) grid is a 2^17 x 2^17 image at f = 8."""
    path = tmp_path / "huge.npy"
    side = 1 << 14
    np.lib.format.open_memmap(path, mode="w+", dtype=np.uint16, shape=(1, side, side)).flush()
    pixels = (side * model.downsample) ** 2
    before = peak_rss()
    r = runner.invoke(app, ["import", str(path), "-o", str(tmp_path / "x.png")])
    assert peak_rss() - before < RISE_LIMIT
    assert r.exit_code == 3, r.output
    assert r.stderr == f"error: {path}: image has {pixels} pixels, {LIMIT_MSG}\n"
    assert not (tmp_path / "x.png").exists()


def test_an_export_entry_over_max_pixels_is_one_line_and_import_goes_on(
    model, tmp_path: Path  # noqa: ANN001
) -> None:
    """Shard 0's first entry is replaced by a consistent 16384 x 16384 one (a 2048 x 2048
    grid of tokens, checksum and all): that entry fails alone, the other two are written."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("photo_a.jpg", "photo_b.png", "photo_c.jpg"):
        (src / name).write_bytes((DATA / name).read_bytes())
    tokens = tmp_path / "tokens"
    ex.export_tokens(model, src, tokens, resize=32, center_crop=32, shard_size=2)
    path = tokens / shards.shard_name(0)
    shard = shards.read_shard(path)
    entries = shard.entries()
    grid = np.zeros((1, 2048, 2048), dtype=np.uint16)
    entries[0] = shards.Entry(entries[0].index, entries[0].path, grid, 16384, 16384)
    tensors = shards.shard_arrays(entries, np.dtype(shard.meta["dtype"]), flip=False)
    path.write_bytes(shards.shard_bytes(tensors, shard.meta))
    assert shards.read_shard(path).entries()[0].width == 16384  # a valid shard

    out = tmp_path / "out"
    r = runner.invoke(app, ["import", str(tokens), "-o", str(out)])
    assert r.exit_code == 1, r.output
    lines = r.stderr.splitlines()
    big = out / "000000_photo_a.png"
    assert lines[0] == f"error: {big}: image has {16384**2} pixels, {LIMIT_MSG}"
    assert lines[1].startswith("wrote 2 file(s)") and lines[2] == "1 of 3 file(s) failed"
    assert len(lines) == 3
    assert sorted(p.name for p in out.iterdir()) == ["000001_photo_b.png", "000002_photo_c.png"]
    r = runner.invoke(app, ["import", str(tokens), "-o", str(out), "--index", "1",
                            "--max-pixels", "1023", "--overwrite"])  # fmt: skip
    assert r.exit_code == 3
    assert r.stderr.splitlines()[0] == (
        f"error: {out / '000001_photo_b.png'}: image has 1024 pixels, over the limit of 1023"
        " (raise it with --max-pixels)"
    )
