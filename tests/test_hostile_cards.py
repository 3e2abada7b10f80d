"""Tampered model files: cards of the wrong types or values, bad frequency tables, names that a
.gq header cannot store. Each must end in a one-line ModelError (exit 5) naming the file and
the field; ``gqtok models`` must list the good files and skip the bad ones."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gqtok.errors import ModelError
from gqtok.format.card import check_card, read_card
from gqtok.model import load_model_file
from gqtok.zoo.load import convert_checkpoint
from gqtok.zoo.paths import list_local_models
from tests.conftest import REPO

DEFAULT = REPO / "weights" / "default.safetensors"
RAW = DEFAULT.read_bytes()
_N = struct.unpack("<Q", RAW[:8])[0]
HEADER = json.loads(RAW[8 : 8 + _N])
CARD = json.loads(HEADER["__metadata__"]["gqtok.card"])
DATA = RAW[8 + _N :]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def model_file(path: Path, card_text: str | None = None, header: dict | None = None,
               data: bytes = DATA) -> Path:  # fmt: skip
    """default.safetensors with another card (as raw text) or another safetensors header."""
    h = json.loads(json.dumps(header or HEADER))
    if card_text is not None:
        h["__metadata__"]["gqtok.card"] = card_text
    text = json.dumps(h).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def edited(change: Any) -> str:
    card = json.loads(json.dumps(CARD))
    change(card)
    return json.dumps(card)


def _set(path: str, value: Any):  # noqa: ANN202
    def change(card: dict) -> None:
        *parents, last = path.split(".")
        node = card
        for p in parents:
            node = node[p]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value

    return change


CASES = [
    (_set("quantizer.dim", 0), "quantizer.dim: must be in 1..21201, got 0"),
    (_set("quantizer.size", "65536"), "quantizer.size: must be an integer, got a string"),
    (_set("quantizer.size", 65536.0), "quantizer.size: must be an integer, got a number"),
    (_set("quantizer.seed", -1), "quantizer.seed: must be in"),
    (_set("quantizer.beta", True), "quantizer.beta: must be a number, got a boolean"),
    (_set("quantizer.dim", 3), "quantizer.dim: must divide network.z_channels"),
    (_set("quantizer.size", 2**22), "quantizer: codebook of K=4194304 x G=16 exceeds"),
    (_set("quantizer", [16]), "quantizer: must be an object"),
    (_set("clamp", 5), "clamp: must be an array, got an integer"),
    (_set("clamp", [1.0, -1.0]), "clamp: must be \\[low, high\\]"),
    (_set("clamp", [0, "1"]), "clamp\\[1\\]: must be a number"),
    (_set("entropy", [1]), "entropy: must be an object, got an array"),
    (_set("entropy.smoothing", -1), "entropy.smoothing: must be above 0"),
    (_set("entropy.kind", "huffman"), "entropy.kind: must be one of uniform, frequency"),
    (_set("layout", "xyz"), "layout: must be one of bchw, blc"),
    (_set("arch", "resnet"), "arch: must be one of unet, vit"),
    (_set("name", "x" * 300), "name: model id must be 1..255 bytes of UTF-8, got 300"),
    (_set("name", "two\nlines"), "name: model id contains a control character"),
    (_set("name", ""), "name: model id must be 1..255 bytes"),
    (_set("network.ch", -3), "network.ch: must be in 1..4096, got -3"),
    (_set("network.ch_mult", "2,2,4"), "network.ch_mult: must be an array"),
    (_set("network.ch_mult", [2] * 30), "network.ch_mult: must have 1..8 items, got 30"),
    (_set("network.num_res_blocks", 10**9), "network.num_res_blocks: must be in 1..16"),
    (_set("network.double_z", False), "network.double_z: must be true"),
    (_set("network.in_channels", 4), "network.in_channels: must be in 3..3"),
    (_set("network", KeyError), "network: is missing"),
    (_set("network", None), "network: must be an object, got null"),
    (_set("gqtok_model", 2), "gqtok_model: must be in 1..1, got 2"),
    (_set("weights_sha256", "zz"), "weights_sha256: is not a valid value"),
    (_set("training", "yes"), "training: must be an object"),
]


@pytest.mark.parametrize("change,match", CASES, ids=[m.split(":")[0] for _, m in CASES])
def test_tampered_card_is_a_one_line_model_error(tmp_path: Path, change, match: str) -> None:  # noqa: ANN001
    path = model_file(tmp_path / "bad.safetensors", edited(change))
    with pytest.raises(ModelError, match=f"^{path}: bad model card: {match}") as info:
        load_model_file(path)
    assert "\n" not in str(info.value) and info.value.exit_code == 5


@pytest.mark.parametrize(
    "text,match",
    [
        ("[1, 2]", "bad model card: must be an object, got an array"),
        ("{", "bad model card: not JSON"),
        ("[" * 100_000 + "]" * 100_000, "bad model card: not JSON \\(JSON nested too deeply\\)"),
        (json.dumps({**CARD, "quantizer": {"beta": float("nan")}}), "NaN is not JSON"),
        ("x" * (1 << 24 | 1), "exceeds the limit"),
    ],
)
def test_card_that_is_not_a_json_object(tmp_path: Path, text: str, match: str) -> None:
    path = model_file(tmp_path / "bad.safetensors", text)
    with pytest.raises(ModelError, match=match) as info:
        read_card(path)
    assert "\n" not in str(info.value)


def test_metadata_card_that_is_not_a_string(tmp_path: Path) -> None:
    header = json.loads(json.dumps(HEADER))
    header["__metadata__"]["gqtok.card"] = {"network": {}}
    path = model_file(tmp_path / "bad.safetensors", header=header)
    with pytest.raises(ModelError, match="metadata gqtok.card is not a string"):
        read_card(path)


def _counts_patch(header: dict, data: bytes, value: bytes | None, dtype: str | None) -> tuple:
    h = json.loads(json.dumps(header))
    start, _ = h["entropy.counts"]["data_offsets"]
    if dtype:
        h["entropy.counts"]["dtype"] = dtype
    if value is not None:
        data = data[:start] + value + data[start + len(value) :]
    return h, data


@pytest.mark.parametrize(
    "value,dtype,match",
    [
        (struct.pack("<q", -5), None, "entropy.counts must lie in 0..2\\^53-1"),
        (struct.pack("<q", 2**62), None, "entropy.counts must lie in"),
        (None, "F64", "entropy.counts must be an integer tensor, got float64"),
    ],
)
def test_bad_frequency_table(tmp_path: Path, value, dtype, match: str) -> None:  # noqa: ANN001
    header, data = _counts_patch(HEADER, DATA, value, dtype)
    path = model_file(tmp_path / "bad.safetensors", header=header, data=data)
    with pytest.raises(ModelError, match=match):
        load_model_file(path)


def test_counts_of_the_wrong_shape(tmp_path: Path) -> None:
    header = json.loads(json.dumps(HEADER))
    start, stop = header["entropy.counts"]["data_offsets"]
    header["entropy.counts"]["shape"] = [(stop - start) // 16, 2]  # same bytes, 2-D
    path = model_file(tmp_path / "bad.safetensors", header=header)
    with pytest.raises(ModelError, match="entropy table size differs"):
        load_model_file(path)


def test_valid_cards_pass_unchanged() -> None:
    assert check_card(json.loads(json.dumps(CARD))) == CARD
    vit = {"arch": "vit", "layout": "blc", "clamp": [-1.0, 1.0],
           "network": {"image_size": 256, "patch_size": 8, "width": 768, "heads": 12}}  # fmt: skip
    assert check_card(vit) is vit
    with pytest.raises(ModelError, match="network.patch_size: must divide"):
        check_card({**vit, "network": {"image_size": 250, "patch_size": 8}})


def test_models_lists_the_good_files_and_skips_the_bad(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    folder = tmp_path / "weights"
    folder.mkdir()
    model_file(folder / "a_dim0.safetensors", edited(_set("quantizer.dim", 0)))
    model_file(folder / "b_notjson.safetensors", "{")
    model_file(folder / "c_clamp.safetensors", edited(_set("clamp", 5)))
    (folder / "d_empty.safetensors").write_bytes(b"")
    (folder / "e_garbage.safetensors").write_bytes(b"\xff" * 64)
    model_file(folder / "f_good.safetensors", edited(_set("name", "my-good-model")))
    monkeypatch.setenv("GQTOK_WEIGHTS", str(folder))
    errors: list[tuple[Path, ModelError]] = []
    found = list_local_models(on_error=lambda p, e: errors.append((p, e)))
    names = [card["name"] for _, card in found]
    assert "my-good-model" in names and CARD["name"] in names
    assert [p.name[0] for p, _ in errors] == ["a", "b", "c", "d", "e"]
    assert all("\n" not in str(e) and isinstance(e, ModelError) for _, e in errors)
    env = {**ENV, "GQTOK_WEIGHTS": str(folder)}
    res = subprocess.run([sys.executable, "-m", "gqtok", "models", "--json"], capture_output=True,
                         text=True, env=env, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)["models"]
    assert "my-good-model" in [r["name"] for r in rows]
    assert "Traceback" not in res.stderr


def test_convert_refuses_a_name_that_gq_files_cannot_store(tmp_path: Path) -> None:
    out = tmp_path / "renamed.safetensors"
    for name in ("é" * 128, "a\tb"):
        with pytest.raises(ModelError, match="name: model id"):
            convert_checkpoint(DEFAULT, out, name=name)
    res = subprocess.run(
        [sys.executable, "-m", "gqtok", "convert", str(DEFAULT), "-o", str(out), "--name",
         "x" * 256], capture_output=True, text=True, env=ENV, timeout=300,
    )  # fmt: skip
    assert res.returncode == 5, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "name: model id" in res.stderr
    assert list(tmp_path.iterdir()) == []  # neither the model file, its sidecar nor a temp
