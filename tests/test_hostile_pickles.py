"""A checkpoint that runs code when unpickled, given to every command that can read one: each
refuses it in one line (exit 5) and the code never runs; only --trust-pickle loads it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import DATA, FIXTURES, REPO

U = load_file(str(FIXTURES / "unet_small.safetensors"))


class Payload:
    """Unpickling this creates ``marker``: stands for any code a hostile pickle could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (str(self.marker),)


@pytest.fixture()
def planted(tmp_path: Path) -> tuple[Path, Path]:
    """(checkpoint with the reference UNet's weights and a Payload, marker path)."""
    marker = tmp_path / "pwned"
    state = {k: v for k, v in U.items() if not k.startswith("io.")}
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": state, "callbacks": Payload(marker)}, ckpt)
    return ckpt, marker


def gq(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "gqtok", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def _inputs(tmp_path: Path) -> dict[str, str]:
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(DATA / "photo_b.png", photos / "b.png")
    gq_file = tmp_path / "b.gq"
    assert gq("encode", str(photos / "b.png"), "-o", str(gq_file)).returncode == 0
    grid = tmp_path / "grid.npy"
    np.save(grid, np.ones((1, 2, 3), dtype=np.uint16))
    return {"photo": str(photos / "b.png"), "photos": str(photos), "gq": str(gq_file),
            "npy": str(grid)}  # fmt: skip


COMMANDS = {
    "encode": ["encode", "{photo}", "-o", "{out}/x.gq"],
    "decode": ["decode", "{gq}", "-o", "{out}/x.png"],
    "export": ["export", "{photos}", "-o", "{out}/tokens"],
    "import": ["import", "{npy}", "-o", "{out}/x.png"],
    "eval": ["eval", "{photos}", "--metrics", "psnr"],
    "compare": ["compare", "{photos}", "--bpp", "0.5", "--codecs", "jpeg", "--out", "{out}/cmp"],
    "convert": ["convert", "{ckpt}", "-o", "{out}/m.safetensors"],
}


def test_every_command_refuses_a_code_running_checkpoint(
    planted: tuple[Path, Path], tmp_path: Path
) -> None:
    ckpt, marker = planted
    names = {**_inputs(tmp_path), "ckpt": str(ckpt)}
    for command, template in COMMANDS.items():
        out = tmp_path / f"out-{command}"
        args = [a.format(out=out, **names) for a in template]
        if command != "convert":
            args += ["--model", str(ckpt)]
        r = gq(*args)
        assert r.returncode == 5, (command, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) <= 2 and "Traceback" not in r.stderr, (command, r.stderr)
        assert f"{ckpt}: checkpoint holds pickled objects beyond tensors" in lines[0], command
        assert "--trust-pickle" in lines[0], command
        assert not marker.exists(), f"{command} ran the payload"


def test_trust_pickle_is_the_only_way_in(planted: tuple[Path, Path], tmp_path: Path) -> None:
    ckpt, marker = planted
    out = tmp_path / "m.safetensors"
    r = gq("convert", str(ckpt), "-o", str(out), "--trust-pickle")
    assert r.returncode == 0, r.stderr
    assert marker.is_dir() and out.is_file()  # the payload ran: what --trust-pickle gives up
    os.rmdir(marker)
    r = gq("encode", str(DATA / "photo_b.png"), "-o", str(tmp_path / "x.gq"), "--model", str(out))
    assert r.returncode == 0, r.stderr
    assert not marker.exists()  # the converted model file never needs the pickle again
