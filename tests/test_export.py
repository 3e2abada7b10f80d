"""Token export for training: shards read with numpy alone, decode back, resume, list files."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from gqtok import export as ex
from gqtok.cli.app import app
from gqtok.codec import Tokens, decode_bytes, decode_to_array, encode_arrays
from gqtok.errors import OutputError
from gqtok.eval.evaluate import preprocess
from gqtok.io.images import read_image
from tests.conftest import DATA, REPO

runner = CliRunner()


@pytest.fixture()
def src(tmp_path: Path) -> Path:
    """Seven files, one of them not an image, in nested folders (sorted order below)."""
    root = tmp_path / "src"
    (root / "sub" / "deeper").mkdir(parents=True)
    shutil.copy(DATA / "photo_a.jpg", root / "a.jpg")
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    shutil.copy(DATA / "photo_c.jpg", root / "c.jpg")
    sample = Image.open(REPO / "examples" / "sample.jpg")
    sample.crop((200, 100, 500, 300)).save(root / "d.png")
    shutil.copy(REPO / "examples" / "sample.jpg", root / "sample.jpg")
    shutil.copy(DATA / "photo_b.png", root / "sub" / "b.png")
    Image.open(DATA / "photo_a.jpg").convert("L").save(root / "sub" / "deeper" / "gray.png")
    return root


PATHS = ["a.jpg", "broken.jpg", "c.jpg", "d.png", "sample.jpg", "sub/b.png", "sub/deeper/gray.png"]


def doc_reader() -> str:
    """The plain-numpy reader printed in docs/tokens.md (tested as documented)."""
    text = (REPO / "docs" / "tokens.md").read_text()
    m = re.search(r"<!-- numpy-reader -->\s*```python\n(.*?)```", text, re.S)
    assert m, "docs/tokens.md lost its numpy reader"
    return m.group(1)


CHILD = """
import sys
sys.modules["gqtok"] = None  # prove the reader needs neither gqtok nor safetensors
sys.modules["safetensors"] = None
{reader}
import json
out = []
for rec in iter_tokens(sys.argv[1]):
    out.append({{"index": rec["index"], "path": rec["path"], "dtype": str(rec["tokens"].dtype),
                "tokens": rec["tokens"].tolist(), "flip": rec["tokens_flip"].tolist(),
                "size": [int(s) for s in rec["size"]]}})
print(json.dumps(out))
"""


def test_export_round_trip_numpy_only(model, src, tmp_path) -> None:  # noqa: ANN001
    out = tmp_path / "tokens"
    args = ["export", str(src), "-o", str(out), "--resize", "64", "--center-crop", "64"]
    res = runner.invoke(app, [*args, "--flip", "--npy", "--shard-size", "3", "--json", "-q"])
    assert res.exit_code == 1, res.output  # partial: broken.jpg skipped, the rest exported
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["images"] == 6 and summary["skipped"] == 1 and summary["shards_written"] == 3
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "gqtok-tokens" and manifest["complete"] is True
    assert manifest["model"]["id"] == model.name
    assert manifest["model"]["weights_sha256"] == model.weights_sha256
    assert manifest["codebook"]["size"] == 65536 and manifest["dtype"] == "uint16"
    assert manifest["protocol"]["resize"] == 64 and manifest["protocol"]["flip"] is True
    assert [s["file"] for s in manifest["shards"]] == [ex.shard_name(k) for k in range(3)]
    assert manifest["shards"][0]["skipped"][0]["path"] == "broken.jpg"
    # read back with numpy only, exactly as docs/tokens.md shows
    run = subprocess.run(
        [sys.executable, "-c", CHILD.format(reader=doc_reader()), str(out)],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    recs = json.loads(run.stdout)
    assert [r["path"] for r in recs] == [p for p in PATHS if p != "broken.jpg"]
    assert [r["index"] for r in recs] == [0, 2, 3, 4, 5, 6]
    for r in recs:
        assert r["dtype"] == "uint16" and np.array(r["tokens"]).shape == (1, 8, 8)
        assert r["size"] == [64, 64]
        # the exported grid is the grid of the prepared image, through the same codec
        rgb = preprocess(read_image(src / r["path"]).rgb, 64, 64)
        want = encode_arrays(model, [rgb, np.ascontiguousarray(rgb[:, ::-1])])
        assert np.array_equal(np.array(r["tokens"]), want[0].indices.numpy())
        assert np.array_equal(np.array(r["flip"]), want[1].indices.numpy())
    # the optional .npy files hold the same arrays
    t1 = np.load(out / "shard-00001.tokens.npy")
    paths1 = np.load(out / "shard-00001.paths.npy")
    assert t1.dtype == np.uint16 and list(paths1) == ["d.png", "sample.jpg", "sub/b.png"]
    assert np.array_equal(t1, np.concatenate([np.array(r["tokens"]).ravel() for r in recs[2:5]]))
    # decode: gqtok import -> images equal to decoding the grids directly
    imgs = tmp_path / "imgs"
    res = runner.invoke(app, ["import", str(out), "-o", str(imgs), "--index", "4", "-q"])
    assert res.exit_code == 0, res.output
    png = imgs / "000004_sample.png"
    assert sorted(p.name for p in imgs.iterdir()) == [png.name]
    grid = torch.tensor(recs[3]["tokens"])
    direct = decode_to_array(model, Tokens(grid, 64, 64))
    assert np.array_equal(np.asarray(Image.open(png)), direct)
    prepared = preprocess(read_image(src / "sample.jpg").rgb, 64, 64)
    assert psnr(direct, prepared) > 18
    res = runner.invoke(app, ["import", str(out), "-o", str(imgs), "--flip", "-f", "gq", "-q"])
    assert res.exit_code == 0, res.output
    gq = imgs / "000004_sample.flip.gq"
    flipped, header = decode_bytes(gq.read_bytes(), model)
    assert (header.width, header.height) == (64, 64)
    assert psnr(np.asarray(flipped), prepared[:, ::-1]) > 18  # tokens of the mirrored image


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255**2 / max(mse, 1e-12))


def _tokens(folder: Path) -> list[tuple[int, str, list]]:
    return [(e.index, e.path, e.tokens.tolist()) for e in ex.iter_entries(folder)]


def test_resume_after_interrupted_export(model, src, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    (src / "broken.jpg").unlink()
    opts = {"resize": 96, "center_crop": 96, "shard_size": 2}
    fresh = ex.export_tokens(model, src, tmp_path / "fresh", workers=1, **opts)
    assert fresh.shards_written == 3 and fresh.images == 6
    out = tmp_path / "out"
    real_write = ex._Exporter.write_shard
    writes: list[int] = []

    def interrupted(self, k, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        if k == 1:
            raise KeyboardInterrupt  # Ctrl-C while shard 1 is being written
        writes.append(k)
        return real_write(self, k, *a, **kw)

    monkeypatch.setattr(ex._Exporter, "write_shard", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ex.export_tokens(model, src, out, workers=1, **opts)
    assert writes == [0] and not (out / ex.shard_name(1)).exists()
    assert json.loads((out / "manifest.json").read_text())["complete"] is False
    kept = (out / ex.shard_name(0)).stat()
    # a killed run can also leave a temp file, and a copied-in torn shard must not pass
    (out / ".shard-00001.safetensors.dead.tmp").write_bytes(b"partial")
    (out / ex.shard_name(2)).write_bytes((tmp_path / "fresh" / ex.shard_name(2)).read_bytes()[:-9])
    monkeypatch.setattr(ex._Exporter, "write_shard", real_write)
    res = ex.export_tokens(model, src, out, workers=1, **opts)
    assert (res.shards_kept, res.shards_written) == (1, 2)
    assert (out / ex.shard_name(0)).stat().st_mtime_ns == kept.st_mtime_ns  # not rewritten
    assert not list(out.glob(".*.tmp"))
    assert json.loads((out / "manifest.json").read_text())["complete"] is True
    assert _tokens(out) == _tokens(tmp_path / "fresh")
    # a third run has nothing left to do
    again = ex.export_tokens(model, src, out, workers=0, **opts)
    assert (again.shards_kept, again.shards_written, again.images) == (3, 0, 6)


def test_list_file_and_plan_changes(model, src, tmp_path) -> None:  # noqa: ANN001
    lst = tmp_path / "train.txt"
    lst.write_text(f"# training split\nsrc/c.jpg\n\n{src / 'sub' / 'b.png'}\nsrc/a.jpg\n")
    out = tmp_path / "tok"
    res = ex.export_tokens(model, lst, out, resize=32, center_crop=32, shard_size=1)
    assert res.images == 3 and res.shards_written == 3
    entries = list(ex.iter_entries(out))
    assert [e.path for e in entries] == ["src/c.jpg", str(src / "sub" / "b.png"), "src/a.jpg"]
    assert all(e.tokens.shape == (1, 4, 4) and (e.width, e.height) == (32, 32) for e in entries)
    manifest = ex.read_manifest(out)
    assert manifest["sources"]["list_file"] == str(lst) and manifest["sources"]["count"] == 3
    # the same folder with other settings is refused, then replaced on request
    with pytest.raises(OutputError, match="other settings"):
        ex.export_tokens(model, lst, out, resize=48, center_crop=48, shard_size=1)
    res = ex.export_tokens(model, lst, out, resize=48, center_crop=48, shard_size=2, overwrite=True)
    assert res.shards_written == 2 and not (out / ex.shard_name(2)).exists()
    assert [e.tokens.shape for e in ex.iter_entries(out)] == [(1, 6, 6)] * 3


def test_import_a_bare_npy_grid(model, tmp_path) -> None:  # noqa: ANN001
    rgb = read_image(DATA / "photo_b.png").rgb
    tok = encode_arrays(model, [rgb])[0]
    grid = tmp_path / "grid.npy"
    np.save(grid, tok.indices.numpy().astype(np.uint16)[0])  # (h, w) is accepted for NG = 1
    out = tmp_path / "b.png"
    res = runner.invoke(app, ["import", str(grid), "-o", str(out), "--size", "150x97", "-q"])
    assert res.exit_code == 0, res.output
    assert np.array_equal(np.asarray(Image.open(out)), decode_to_array(model, tok))
    res = runner.invoke(app, ["import", str(grid), "-o", str(out), "--size", "300x97", "-q"])
    assert res.exit_code == 3 and "cannot be" in res.output


def test_a_network_failure_skips_that_image_only(model, src, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """A batch whose network pass fails is retried image by image: the image at fault is
    recorded as skipped, every other image of the batch is exported."""
    import gqtok.codec as codec

    real = codec.encode_arrays
    bad_width = Image.open(DATA / "photo_c.jpg").width

    def failing(m, arrays, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        if any(x.shape[1] == bad_width for x in arrays):
            raise RuntimeError("simulated network failure")
        return real(m, arrays, *a, **k)

    monkeypatch.setattr(codec, "encode_arrays", failing)
    res = ex.export_tokens(model, src, tmp_path / "tokens", batch_size=4, workers=0)
    skipped = dict(res.skipped)
    assert set(skipped) == {"broken.jpg", "c.jpg"}
    assert skipped["c.jpg"] == "c.jpg: simulated network failure"
    paths = [e.path for e in ex.iter_entries(tmp_path / "tokens")]
    assert paths == [p for p in PATHS if p not in ("broken.jpg", "c.jpg")]


def test_bf16_tokens_are_another_plan(model, src, tmp_path) -> None:  # noqa: ANN001
    """--precision bf16 changes some tokens: its shards never mix with an fp32 export's."""
    out = tmp_path / "tok"
    ex.export_tokens(model, src, out, resize=32, center_crop=32)
    assert "network_precision" not in ex.read_manifest(out)["protocol"]  # fp32: as before
    try:
        model.to("cpu", "bf16")
        with pytest.raises(OutputError, match="other settings"):
            ex.export_tokens(model, src, out, resize=32, center_crop=32)
        res = ex.export_tokens(model, src, tmp_path / "bf16", resize=32, center_crop=32)
        assert res.images == len(PATHS) - 1  # all but broken.jpg
        assert ex.read_manifest(tmp_path / "bf16")["protocol"]["network_precision"] == "bf16"
    finally:
        model.to("cpu", "fp32")
