"""Training checkpoints are read without unpickling code: a planted last.pt is refused by
`gqtok train --resume` and `gqtok export-model` unless --trust-pickle is given."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from gqtok.cli import app
from gqtok.errors import ModelError
from gqtok.train.checkpoints import load_checkpoint
from gqtok.train.loop import run
from tests.test_train import REPO, _cfg, _write_photos

runner = CliRunner()
TINY_FLAGS = [
    "--ch", "32", "--ch-mult", "1,1", "--num-res-blocks", "1", "--attn-resolutions", "",
    "--z-channels", "16", "--stem", "1", "--crop", "32", "--batch", "2", "--eval-every", "0",
    "--eval-crop", "32", "--eval-images", "1", "--seed", "3", "--threads", "1", "--device", "cpu",
    "--scale-min", "0.5", "--perceptual", "none",
]


class Payload:
    """Unpickling this creates ``marker``: stands for any code a hostile pickle could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (str(self.marker),)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    _write_photos(root / "train", [(48, 40), (64, 64)], seed=0)
    _write_photos(root / "val", [(40, 40)], seed=1)
    return root


@pytest.fixture(scope="module")
def one_step(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory after one step, with the pyramid sampler and its prefetch thread."""
    out = tmp_path_factory.mktemp("one_step")
    run(_cfg(data_dir, out, steps=1, scale_levels=2, eval_every=0, perceptual="none",
             threads=1))
    return out


def _planted(one_step: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the run whose last.pt also holds a Payload; (run dir, marker path)."""
    out = tmp_path / "run"
    shutil.copytree(one_step, out)
    marker = tmp_path / "payload-ran"
    state = torch.load(out / "last.pt", weights_only=True)
    state["callbacks"] = Payload(marker)
    torch.save(state, out / "last.pt")
    return out, marker


def _refused(output: str, ckpt: Path) -> None:
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert str(ckpt) in lines[0] and "--trust-pickle" in lines[0] and "mkdir" in lines[0]


def test_checkpoints_need_no_unpickling(one_step: Path) -> None:
    path = one_step / "last.pt"
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) == []
    state = torch.load(path, weights_only=True)
    assert state["sampler"]["bit_generator"]["bit_generator"] == "PCG64"
    assert load_checkpoint(path)["step"] == 1


def test_load_checkpoint_refuses_what_is_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"encoder": {}}, tmp_path / "partial.pt")
    with pytest.raises(ModelError, match="not a gqtok training checkpoint"):
        load_checkpoint(tmp_path / "partial.pt")


def test_resume_refuses_a_pickle_payload_unless_trusted(
    one_step: Path, data_dir: Path, tmp_path: Path
) -> None:
    out, marker = _planted(one_step, tmp_path)
    args = ["train", "--data", str(data_dir), "--out", str(out), "--steps", "2", "--resume",
            *TINY_FLAGS, "--scale-levels", "2"]
    r = runner.invoke(app, args)
    assert r.exit_code == ModelError.exit_code, r.output
    _refused(r.output, out / "last.pt")
    assert not marker.exists()
    r = runner.invoke(app, [*args, "--trust-pickle"])
    assert r.exit_code == 0, r.output
    assert marker.exists()
    assert load_checkpoint(out / "last.pt")["step"] == 2  # resumed, and written safely again


def test_export_model_refuses_a_pickle_payload_unless_trusted(
    one_step: Path, tmp_path: Path
) -> None:
    out, marker = _planted(one_step, tmp_path)
    model = tmp_path / "m.safetensors"
    args = ["export-model", str(out), str(model), "--name", "t", "--token-stats-images", "1"]
    r = runner.invoke(app, args)
    assert r.exit_code == ModelError.exit_code, r.output
    _refused(r.output, out / "last.pt")
    assert not marker.exists() and not model.exists()
    r = runner.invoke(app, [*args, "--trust-pickle"])
    assert r.exit_code == 0, r.output
    assert marker.exists() and model.is_file()


def test_python_m_gqtok_train_runs() -> None:
    """scripts/train_default.sh and train_stage3_gpu.sh call `python -m gqtok.train`."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "gqtok.train", "train", "--help"], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "--trust-pickle" in r.stdout and "--scale-levels" in r.stdout


def test_export_model_keeps_an_existing_model_without_overwrite(
    one_step: Path, tmp_path: Path
) -> None:
    """Like every command that writes: an existing output is refused (exit 6, before the
    minutes of work) unless --overwrite, and the checkpoint itself is never an output."""
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"precious")
    args = ["export-model", str(one_step), str(model), "--name", "t", "--token-stats-images", "1"]
    r = runner.invoke(app, args)
    assert r.exit_code == 6, r.output
    assert r.output == f"error: {model}: exists (use --overwrite)\n"
    assert model.read_bytes() == b"precious"
    r = runner.invoke(app, ["export-model", str(one_step), str(one_step / "last.pt"),
                            "--name", "t", "--overwrite"])  # fmt: skip
    assert r.exit_code == 6 and "would overwrite the input" in r.output
    r = runner.invoke(app, [*args, "--overwrite"])
    assert r.exit_code == 0, r.output
    assert model.read_bytes()[:8] != b"precious"
