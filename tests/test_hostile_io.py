"""Outputs under races: two real processes writing one name without --overwrite. Exactly one
wins, the other gets OutputError, and the name holds one writer's complete content."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import DATA, REPO

ENV = {**os.environ, "PYTHONPATH": str(REPO)}

# Each writer fills its temp file, says so, and waits until the other has too, so that both
# publish at the same moment: the race is at the link, not decided by who starts first.
WRITER = r"""
import os, sys, time
from pathlib import Path
from gqtok.errors import OutputError
from gqtok.io.files import atomic_write

out, me, other, fill = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
flags = out.parent / "flags"

def write(tmp):
    tmp.write_bytes(me.encode() * fill)
    (flags / me).touch()
    deadline = time.monotonic() + 60
    while not (flags / other).exists():
        if time.monotonic() > deadline:
            sys.exit(9)
        time.sleep(0.001)

try:
    atomic_write(out, write)
except OutputError as e:
    print(e, file=sys.stderr)
    sys.exit(e.exit_code)
"""


def test_two_processes_race_for_one_name(tmp_path: Path) -> None:
    fill = 1 << 20  # 1 MiB per writer: a torn file would show both letters or a short length
    for round_ in range(4):
        folder = tmp_path / f"r{round_}"
        (folder / "flags").mkdir(parents=True)
        out = folder / "out.bin"
        procs = [
            subprocess.Popen([sys.executable, "-c", WRITER, str(out), me, other, str(fill)],
                             env=ENV, stderr=subprocess.PIPE, text=True)  # fmt: skip
            for me, other in (("a", "b"), ("b", "a"))
        ]
        codes = [p.wait(timeout=120) for p in procs]
        errors = [p.stderr.read() for p in procs]  # type: ignore[union-attr]
        assert sorted(codes) == [0, 6], (codes, errors)
        loser = errors[codes.index(6)]
        assert loser.strip() == f"{out}: exists (use --overwrite)"
        winner = "ab"[codes.index(0)]
        assert out.read_bytes() == winner.encode() * fill
        assert sorted(p.name for p in folder.iterdir()) == ["flags", "out.bin"]  # no temp left


def test_two_cli_decodes_race_for_one_output(tmp_path: Path) -> None:
    """The same through the command line: one decode writes the PNG, the other exits 6."""
    from gqtok import load_model
    from gqtok.codec import encode_file

    gq = tmp_path / "b.gq"
    gq.write_bytes(encode_file(load_model(), str(DATA / "photo_b.png")).data)
    out = tmp_path / "b.png"
    procs = [
        subprocess.Popen([sys.executable, "-m", "gqtok", "decode", str(gq), "-o", str(out)],
                         env=ENV, stderr=subprocess.PIPE, text=True)  # fmt: skip
        for _ in range(2)
    ]
    codes = [p.wait(timeout=300) for p in procs]
    errors = [p.stderr.read() for p in procs]  # type: ignore[union-attr]
    assert sorted(codes) == [0, 6], (codes, errors)
    assert "exists" in errors[codes.index(6)]
    from PIL import Image

    with Image.open(out) as im:
        im.load()
        assert im.size == (150, 97)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.gq", "b.png"]
