"""Commands that need no network start without torch or numpy: ``--help``, ``info`` and
``models`` (cards come from safetensors headers, the .gq limits are plain arithmetic)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

# Runs the real entry point (python -m gqtok) and says at exit whether torch / numpy were imported.
PROBE = """
import atexit, runpy, sys
atexit.register(lambda: sys.__stderr__.write(
    f"\\ntorch-loaded={'torch' in sys.modules} numpy-loaded={'numpy' in sys.modules}\\n"))
sys.argv = ["gqtok", *sys.argv[1:]]
runpy.run_module("gqtok", run_name="__main__")
"""


@pytest.fixture(scope="module")
def sample_gq(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from gqtok.codec import encode_file
    from gqtok.zoo.load import load_model

    out = tmp_path_factory.mktemp("gq") / "b.gq"
    out.write_bytes(encode_file(load_model(), str(REPO / "tests" / "data" / "photo_b.png")).data)
    return out


@pytest.mark.parametrize("args", [["--help"], ["info", "GQ"], ["info", "GQ", "--json"],
                                  ["models"], ["models", "--json"]])  # fmt: skip
def test_command_does_not_import_torch(args: list[str], sample_gq: Path, tmp_path: Path) -> None:
    args = [str(sample_gq) if a == "GQ" else a for a in args]
    env = dict(os.environ, GQTOK_WEIGHTS=str(tmp_path))  # the bundled model only
    r = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, cwd=REPO, env=env,
        timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip().splitlines()[-1] == "torch-loaded=False numpy-loaded=False", r.stderr
    assert r.stdout.strip()


def test_decoders_are_listed_without_torch(sample_gq: Path, tmp_path: Path) -> None:
    """``info`` and ``models`` name a model's decoder files from their cards alone."""
    from gqtok.format.card import decoder_path
    from gqtok.model import decoder_card, load_model_file, save_decoder

    model = tmp_path / "default.safetensors"
    os.symlink(REPO / "weights" / "default.safetensors", model)
    net = load_model_file(model)
    save_decoder(decoder_path(model, "perceptual"), net.decoder, decoder_card(net, "perceptual"))
    env = dict(os.environ, GQTOK_WEIGHTS=str(tmp_path))
    for args in (["info", str(sample_gq), "--json"], ["models", "--json"]):
        r = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True,
                           cwd=REPO, env=env, timeout=120)  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert r.stderr.strip().splitlines()[-1] == "torch-loaded=False numpy-loaded=False"
        out = json.loads(r.stdout)
        if args[0] == "info":
            assert out["decoders"] == ["fidelity", "perceptual"]
        else:
            row = next(m for m in out["models"] if m["path"] == str(model))
            assert row["decoders"] == ["fidelity", "perceptual"]
