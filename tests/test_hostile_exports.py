"""Tampered token exports: edited manifests and shard metadata, arrays that do not fit each
other or the model. Every case is a one-line InputError (exit 3) naming the file and the
field, or a ModelError where the export names a model that does not fit it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from gqtok import export as ex
from gqtok.errors import GqtokError, InputError, ModelError
from gqtok.format import shards
from gqtok.zoo.load import model_for_record
from tests.conftest import DATA, REPO

ENV = {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def made(model, tmp_path_factory) -> Path:  # noqa: ANN001
    """An export of three 32x32 images with flips, two shards."""
    src = tmp_path_factory.mktemp("src")
    for name in ("photo_a.jpg", "photo_b.png", "photo_c.jpg"):
        shutil.copy(DATA / name, src / name)
    out = tmp_path_factory.mktemp("export") / "tokens"
    ex.export_tokens(model, src, out, resize=32, center_crop=32, flip=True, shard_size=2)
    return out


@pytest.fixture()
def export(made: Path, tmp_path: Path) -> Path:
    out = tmp_path / "tokens"
    shutil.copytree(made, out)
    return out


def load(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    with safe_open(str(path), framework="np") as f:
        meta = json.loads(f.metadata()[shards.META_KEY])
        return {k: f.get_tensor(k) for k in f.keys()}, meta  # noqa: SIM118


def rewrite(path: Path, change: Callable[[dict, dict], None], fix_checksum: bool = True) -> None:
    tensors, meta = load(path)
    change(tensors, meta)
    if fix_checksum:
        meta["checksum"] = shards.checksum(tensors)
    save_file(tensors, str(path), metadata={shards.META_KEY: json.dumps(meta)})


def edit_manifest(folder: Path, change: Callable[[dict], Any]) -> None:
    m = json.loads((folder / shards.MANIFEST).read_text())
    change(m)
    (folder / shards.MANIFEST).write_text(json.dumps(m))


def entries(folder: Path) -> list:
    return list(shards.iter_entries(folder))


def _refused(fn: Callable[[], Any], error: type, match: str) -> GqtokError:
    with pytest.raises(error, match=match) as info:
        fn()
    assert "\n" not in str(info.value)
    return info.value


def test_the_export_reads_back(export: Path) -> None:
    got = entries(export)
    assert [e.index for e in got] == [0, 1, 2] and got[0].tokens.shape == (1, 4, 4)


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda m: m.pop("model"), "bad token manifest: model: is missing"),
        (lambda m: m["model"].update(groups="1"), "model.groups: must be an integer"),
        (lambda m: m["model"].update(id="a\x00b"), "model.id: model id contains a control"),
        (lambda m: m["codebook"].update(size=2**25), "codebook.size: must be in 2..16777214"),
        (lambda m: m["codebook"].update(dim=64, size=2**20), "codebook: codebook of K="),
        (lambda m: m.update(dtype="uint32"), "dtype: must be uint16 for K=65536"),
        (lambda m: m["shards"][0].update(file="../../etc/passwd"), r"shards\[0\].file: is not"),
        (lambda m: m["shards"][1].update(file="/tmp/x.safetensors"), r"shards\[1\].file: is not"),
        (lambda m: m["shards"][0].update(file="a\x00.safetensors"), r"shards\[0\].file"),
        (lambda m: m["shards"][0].pop("file"), r"shards\[0\].file: is missing"),
        (lambda m: m.update(shards="shard-00000.safetensors"), "shards: must be an array"),
        (lambda m: m.update(version=99), "version: must be in 1..1, got 99"),
        (lambda m: m.update(complete="yes"), "complete: must be true or false"),
        (lambda m: m.update(format="other"), "not a gqtok token export manifest"),
    ],
)
def test_edited_manifest(export: Path, change, match: str) -> None:  # noqa: ANN001
    edit_manifest(export, change)
    err = _refused(lambda: entries(export), InputError, match)
    assert str(err).startswith(str(export))


def test_manifest_that_is_not_json_or_too_deep(export: Path) -> None:
    (export / shards.MANIFEST).write_text("[" * 100_000)
    _refused(lambda: entries(export), InputError, "unreadable manifest")
    (export / shards.MANIFEST).write_text("[1]")
    _refused(lambda: entries(export), InputError, "not a gqtok token export manifest")
    (export / shards.MANIFEST).write_bytes(b"\xff\xfe{")
    _refused(lambda: entries(export), InputError, "unreadable manifest")


def _set_meta(key: str, value: Any):  # noqa: ANN202
    def change(t: dict, m: dict) -> None:
        m[key] = value

    return change


def _tensor(key: str, fn: Callable[[np.ndarray], np.ndarray]):  # noqa: ANN202
    def change(t: dict, m: dict) -> None:
        t[key] = fn(t[key])

    return change


def _scaled(fn: Callable[[np.ndarray], np.ndarray]):  # noqa: ANN202
    """A shard of an export at a scale (its protocol says so) with image_sizes = fn(sizes)."""

    def change(t: dict, m: dict) -> None:
        m["protocol"]["scale"] = 2.0
        t["image_sizes"] = fn(t["sizes"])

    return change


def _colored(colors: np.ndarray):  # noqa: ANN202
    """A shard of an export at a scale with image_sizes and these colour corrections."""

    def change(t: dict, m: dict) -> None:
        _scaled(lambda a: a // 2)(t, m)
        t["colors"] = colors

    return change


def _bump(a: np.ndarray, i: int, by: int) -> np.ndarray:
    a = a.copy()
    a.flat[i] += by
    return a


SHARD_CASES = [
    (lambda t, m: m.pop("model"), "bad token shard metadata: model: is missing"),
    (lambda t, m: m["paths"].pop(), "offsets, shapes and sizes must describe the 1 grids"),
    (lambda t, m: m["paths"].__setitem__(0, "a\x00b.png"), r"paths\[0\]: contains a NUL"),
    (lambda t, m: m["paths"].__setitem__(0, 5), r"paths\[0\]: must be a string"),
    (lambda t, m: m["codebook"].update(size=1000), "tokens: values must be below .* K=1000"),
    (lambda t, m: m["model"].update(downsample=4), "sizes: a grid is not ceil"),
    (lambda t, m: m["model"].update(groups=2), r"shapes: must be \(NG=2"),
    (lambda t, m: m.update(dtype="uint32"), "dtype: must be uint16"),
    (lambda t, m: m.update(skipped=[{"index": -1}]), r"skipped\[0\].index: must be in"),
    (_tensor("shapes", lambda a: _bump(a, 1, 1)), "shapes: a grid's size differs from its"),
    (_tensor("shapes", lambda a: a * -1), "shapes: must be"),
    (_tensor("sizes", lambda a: _bump(a, 0, 64)), "sizes: a grid is not ceil"),
    (_tensor("sizes", lambda a: a * 0), "sizes: width and height must be in"),
    (_tensor("offsets", lambda a: a[::-1].copy()), "offsets: must rise from 0"),
    (_tensor("offsets", lambda a: _bump(a, 1, 3)), "a grid's size differs from its offsets"),
    (_tensor("index", lambda a: a[:1].copy()), "index: must have 2 entries"),
    (_tensor("index", lambda a: a[::-1].copy()), "index: must be non-negative and increasing"),
    (_tensor("tokens", lambda a: a.astype(np.int64)), "tokens: must be a 1-D uint16 tensor"),
    (_tensor("tokens", lambda a: a[:-1].copy()), "offsets: must rise from 0 to the 31 tokens"),
    (_tensor("tokens_flip", lambda a: a[:-1].copy()), "tokens_flip: must have as many"),
    (lambda t, m: t.pop("sizes"), "sizes: tensor is missing"),
    (lambda t, m: t.update(image_sizes=t["sizes"] // 2), "image_sizes: only an export with a"),
    (_scaled(lambda a: a // 8), r"image_sizes: coded size 32x32 is not within a factor 4"),
    (_scaled(lambda a: a[:1].copy()), r"image_sizes: must have one \(width, height\) per grid"),
    (_scaled(lambda a: a.astype(np.int64)), "image_sizes: must be a 2-D int32 tensor"),
    (_scaled(lambda a: a * 0), "image_sizes: width and height must be in 1.."),
    (lambda t, m: t.update(colors=np.zeros((2, 12), np.int16)), "colors: only an export with"),
    (_colored(np.zeros((1, 12), np.int16)), "colors: must have 12 or 48 or 120 or 228 values"),
    (_colored(np.zeros((2, 13), np.int16)), "colors: must have 12 or 48 or 120 or 228 values"),
    (_colored(np.zeros((2, 12), np.int32)), "colors: must be a 2-D int16 tensor"),
]


@pytest.mark.parametrize("change,match", SHARD_CASES)
def test_edited_shard(export: Path, change, match: str) -> None:  # noqa: ANN001
    path = export / shards.shard_name(0)
    rewrite(path, change)
    err = _refused(lambda: shards.read_shard(path), InputError, match)
    assert str(err).startswith(f"{path}: bad token shard")
    _refused(lambda: entries(export), InputError, match)


def test_shard_tensors_edited_without_the_checksum(export: Path) -> None:
    path = export / shards.shard_name(0)
    rewrite(path, _tensor("tokens", lambda a: a ^ 1), fix_checksum=False)
    _refused(lambda: shards.read_shard(path), InputError, "checksum mismatch")
    shards.read_shard(path, verify=False)  # a plausible shard, only the checksum is off


def test_a_shard_of_another_export_is_refused(export: Path) -> None:
    rewrite(export / shards.shard_name(1), lambda t, m: m["codebook"].update(seed=7))
    _refused(lambda: entries(export), InputError, "shard's codebook record differs")


def test_model_for_record_checks_the_record_against_the_model(export: Path, model) -> None:  # noqa: ANN001
    manifest = shards.read_manifest(export)
    assert model_for_record(manifest).weights_sha256 == model.weights_sha256
    bad = json.loads(json.dumps(manifest))
    bad["model"]["groups"] = 2
    _refused(lambda: model_for_record(bad), ModelError, "2 token groups at f=8")
    bad = json.loads(json.dumps(manifest))
    bad["codebook"]["fingerprint"] = "00" * 8
    _refused(lambda: model_for_record(bad), ModelError, "recorded fingerprint")
    bad = json.loads(json.dumps(manifest))
    del bad["codebook"]
    _refused(lambda: model_for_record(bad), InputError, "codebook: is missing")


def test_import_of_a_tampered_export_is_one_line_and_goes_on(export: Path, tmp_path: Path) -> None:
    """The tampered shard is one error line (exit 3's message), the intact one is imported,
    and the batch ends with its count line and exit 1."""
    shard0 = export / shards.shard_name(0)
    rewrite(shard0, lambda t, m: m["paths"].__setitem__(0, "x\x00.png"))
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "gqtok", "import", str(export), "-o", str(out)],
                         capture_output=True, text=True, env=ENV, timeout=300)  # fmt: skip
    assert res.returncode == 1, res.stderr
    lines = res.stderr.strip().splitlines()
    assert "Traceback" not in res.stderr and len(lines) == 3
    assert lines[0].startswith(f"error: {shard0}: ") and "contains a NUL" in lines[0]
    assert lines[1].startswith("wrote 1 file(s)") and lines[2] == "1 of 2 file(s) failed"
    assert len(list(out.iterdir())) == 1


def test_merge_of_edited_manifests_and_rank_files(export: Path) -> None:
    """``gqtok export --merge`` reads only what the folder holds: edits are one-line
    InputErrors, and an edited count costs no more than the shards on disk."""
    want = json.loads((export / shards.MANIFEST).read_text())
    assert ex.merge_export(export).images == 3  # a one-process export merges to itself
    assert json.loads((export / shards.MANIFEST).read_text()) == want
    edit_manifest(export, lambda m: m["sources"].update(count=10**15))
    err = _refused(lambda: ex.merge_export(export), InputError, "missing or damaged")
    assert str(err) == (
        f"{export}: shard 1, shard 2, shard 3, shard 4 and 499999999999995 more"
        " missing or damaged: rerun the export"
    )
    edit_manifest(export, lambda m: m["sources"].update(count="3"))
    _refused(lambda: ex.merge_export(export), InputError, "lacks sources.count")
    (export / shards.MANIFEST).write_text(json.dumps(want))
    rank = export / ex.rank_file(1, 2)
    rank.write_text(json.dumps({**want, "plan": "other", "rank": 1, "world_size": 2}))
    _refused(lambda: ex.merge_export(export), InputError, "rank files of different exports")
    rank.write_text(json.dumps({**want, "rank": 1, "world_size": "2"}))
    err = _refused(lambda: ex.merge_export(export), InputError, "world_size: must be an int")
    assert str(err).startswith(str(rank))
