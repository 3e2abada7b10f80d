"""Files written by earlier releases decode with this one: every model that shipped as the
default (or as its coarse-codebook model) stays resolvable by the id in its files (weights/
and weights/retired/), and each coding that shipped (.gq version 1 static tables, version 2
context and prior, version 3) still decodes to the pixels the writing release decoded it to.
tests/data/released/README.md says which release wrote each file and how."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from gqtok.cli import app
from gqtok.codec import pack_tokens, unpack_tokens
from gqtok.eval.catalog import models_table
from gqtok.format import container
from gqtok.zoo.load import model_for_header, path_for_model_id
from tests.conftest import DATA, REPO

RELEASED = DATA / "released"
runner = CliRunner()

# file -> (model id, format version, entropy kind, codebook size K)
FILES = {
    "v1.gq": ("gqtok-f8c16-cpu-v1", 1, "frequency", 65536),
    "v2.gq": ("gqtok-f8c16-cpu-v2", 1, "frequency", 65536),
    "v3-context.gq": ("gqtok-f8c16-cpu-v3", 2, "context", 65536),
    "v3-q10.gq": ("gqtok-f8c16-cpu-v3", 2, "prior", 161),
    "v3-q95.gq": ("gqtok-f8c16-cpu-v3", 2, "context", 602256),
    "v3-coarse-q10.gq": ("gqtok-f8c16-cpu-v3-coarse", 3, "context", 161),
    # version 4 files (coded at another scale); the number is their token coding's version
    "v4-q90.gq": ("gqtok-f8c16-cpu-v3", 2, "context", 65536),
    "v4-q5.gq": ("gqtok-f8c16-cpu-v3-coarse", 2, "context", 2353),
    # version 5: version 4 coded larger, with a colour correction
    "v5-q90.gq": ("gqtok-f8c16-cpu-v3", 2, "context", 65536),
    # version 6: version 5 with a restoration filter
    "v6-q100.gq": ("gqtok-f8c16-cpu-v3", 2, "context", 65536),
}


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), np.int16)


@pytest.mark.parametrize("name", sorted(FILES))
def test_a_file_of_an_earlier_release_decodes_to_its_pixels(name: str, tmp_path: Path) -> None:
    data = (RELEASED / name).read_bytes()
    header = container.unpack(data, name)[0]
    assert (header.model_id, header.version, header.entropy_kind, header.size) == FILES[name]
    assert header.scaled == name.startswith(("v4", "v5", "v6"))
    assert bool(header.color) == name.startswith(("v5", "v6"))
    assert header.file_version == {"v4": 4, "v5": 5, "v6": 6}.get(name[:2], header.version)
    out = tmp_path / "out.png"
    res = runner.invoke(app, ["decode", str(RELEASED / name), "-o", str(out)])
    assert res.exit_code == 0, res.output
    # the pixels the writing release decoded the file to; the networks now run with
    # channels-last activations, which rounds a few values one level the other way (v1, v2:
    # 2 of 43 650 values) -- another CPU may round a few more
    diff = np.abs(_pixels(out) - _pixels(RELEASED / name.replace(".gq", ".png")))
    assert diff.max() <= 3 and diff.mean() < 0.05


@pytest.mark.parametrize("name", sorted(FILES))
def test_the_tokens_of_an_earlier_release_code_to_the_same_bytes(name: str) -> None:
    """The entropy coders are unchanged: decoding then re-coding gives the file back."""
    data = (RELEASED / name).read_bytes()
    header = container.unpack(data, name)[0]
    model = model_for_header(header)  # found by id and weights hash, as gqtok decode does
    assert model.weights_fingerprint == header.weights_hash
    _, tokens, _ = unpack_tokens(model, data, name)
    entropy = "context" if header.entropy_kind == "context" else "static"
    assert pack_tokens(model, tokens, entropy=entropy).data == data


def test_retired_defaults_are_listed_and_info_finds_their_model() -> None:
    rows = {r["name"]: r for r in models_table()}
    for old in ("gqtok-f8c16-cpu-v1", "gqtok-f8c16-cpu-v2"):
        assert rows[old]["kind"] == "retired" and rows[old]["available"]
        assert Path(rows[old]["path"]).parent == REPO / "weights" / "retired"
    assert rows["gqtok-f8c16-cpu-v3"]["kind"] == "default"
    res = runner.invoke(app, ["info", str(RELEASED / "v1.gq"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["decoders"] == ["fidelity"]


def test_a_file_finds_its_weights_among_models_of_the_same_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model named like a retired one but with other weights, earlier on the search path,
    does not capture the retired model's files: the header's weights hash picks the file."""
    impostor = tmp_path / "gqtok-f8c16-cpu-v1.safetensors"
    res = runner.invoke(
        app,
        ["convert", str(REPO / "weights" / "retired" / "gqtok-f8c16-cpu-v2.safetensors"),
         "-o", str(impostor), "--name", "gqtok-f8c16-cpu-v1"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    monkeypatch.setenv("GQTOK_WEIGHTS", str(tmp_path))
    header = container.unpack((RELEASED / "v1.gq").read_bytes())[0]
    model = model_for_header(header)
    assert model.source == str(REPO / "weights" / "retired" / "gqtok-f8c16-cpu-v1.safetensors")
    out = tmp_path / "v1.png"
    res = runner.invoke(app, ["decode", str(RELEASED / "v1.gq"), "-o", str(out)])
    assert res.exit_code == 0, res.output
    # by name alone (no weights hash) the first file on the search path is the impostor
    assert path_for_model_id("gqtok-f8c16-cpu-v1") == impostor


def test_a_token_export_of_an_earlier_release_imports_to_its_pixels(tmp_path: Path) -> None:
    """export-v2/: tests/data/photo_b.png exported by the v2 release (e65651e); that release's
    `gqtok import` gave the pixels of v2.png (the same tokens as v2.gq)."""
    out = tmp_path / "imported"
    res = runner.invoke(app, ["import", str(RELEASED / "export-v2"), "-o", str(out)])
    assert res.exit_code == 0, res.output
    (png,) = out.iterdir()
    diff = np.abs(_pixels(png) - _pixels(RELEASED / "v2.png"))
    assert diff.max() <= 3 and diff.mean() < 0.05
