"""Patch FID / KID (HiFiC protocol) with the real Inception weights on real photos."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter
from typer.testing import CliRunner

from gqtok.eval.metrics.inception import (
    InceptionFeatures,
    frechet_distance,
    kernel_inception_distance,
)
from gqtok.eval.metrics.patches import PatchFID, iter_patches, patch_features, patch_grid

ROOT = Path(__file__).parent.parent
DATA = ROOT / "tests" / "data"
SAMPLE = ROOT / "examples" / "sample.jpg"  # 768x512
PHOTOS = [SAMPLE, DATA / "photo_a.jpg", DATA / "photo_c.jpg"]  # 768x512, 317x211, 256x256


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _blur(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(3)))


@pytest.fixture(scope="module")
def inception() -> InceptionFeatures:
    return InceptionFeatures()


@pytest.fixture(scope="module")
def feats(inception: InceptionFeatures) -> tuple[np.ndarray, np.ndarray]:
    """Patch features of the photos and of their blurred copies, 47 each.

    128 px patches on the same two grids (offset 64): the 256 px protocol gives only 8 + 0 + 1
    patches here, too few for KID (subsets of 5) to separate anything.
    """
    a = np.concatenate([patch_features(inception, _rgb(p), 128) for p in PHOTOS])
    b = np.concatenate([patch_features(inception, _blur(_rgb(p)), 128) for p in PHOTOS])
    return a, b


def test_patch_grid_of_768x512() -> None:
    base = [(t, x) for t in (0, 256) for x in (0, 256, 512)]
    shifted = [(128, 128), (128, 384)]
    assert patch_grid(512, 768) == base + shifted
    assert patch_grid(255, 4000) == [] and patch_grid(256, 256) == [(0, 0)]
    assert len(patch_grid(640, 640)) == 4 + 4  # shifted grid: 128 + 2 * 256 = 640 fits

    rgb = _rgb(SAMPLE)
    assert rgb.shape == (512, 768, 3)
    stacks = list(iter_patches(rgb, batch=3))
    assert [len(s) for s in stacks] == [3, 3, 2]
    patches = np.concatenate(stacks)
    assert patches.shape == (8, 256, 256, 3) and patches.dtype == np.uint8
    np.testing.assert_array_equal(patches[7], rgb[128:384, 384:640])
    np.testing.assert_array_equal(patches[4], rgb[256:512, 256:512])


def test_small_images_give_no_patches(inception: InceptionFeatures) -> None:
    small = _rgb(DATA / "photo_b.png")  # 150x97
    acc = PatchFID(inception)
    assert acc.add(small, small) == 0 and acc.patches == 0
    assert acc.fid() is None and acc.kid() is None
    assert patch_features(inception, small).shape == (0, 2048)


def test_batched_features_match_one_by_one(inception: InceptionFeatures) -> None:
    rgb = _rgb(DATA / "photo_a.jpg")[:, :256]  # 256x211: three 128 px patches
    batched = patch_features(inception, rgb, 128)
    one = inception([rgb[t : t + 128, x : x + 128] for t, x in patch_grid(211, 256, 128)])
    assert len(batched) == 3
    np.testing.assert_allclose(batched, one, rtol=1e-4, atol=1e-4)


def test_patch_fid_kid_identical_and_blurred(feats: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = feats
    assert len(a) == len(b) == 39 + 3 + 5
    assert abs(frechet_distance(a, a)) < 1e-3
    assert frechet_distance(a, b) > 50.0  # measured ~208
    # KID draws each set's subsets independently, so identical sets give ~0, not exactly 0
    kid_same = kernel_inception_distance(a, a)  # measured -0.014 +- 0.005
    kid_blur = kernel_inception_distance(a, b)  # measured 0.075 +- 0.011
    assert abs(kid_same.mean) < 0.03
    assert kid_blur.mean > 0.05 and kid_blur.mean > kid_same.mean + 3 * kid_blur.std


def test_accumulator_pairs_same_positions(inception: InceptionFeatures) -> None:
    rgb = _rgb(DATA / "photo_c.jpg")  # 256x256: one patch
    acc = PatchFID(inception)
    assert acc.add(rgb, rgb) == 1 and acc.add(rgb, _blur(rgb)) == 1
    a, b = acc.features()
    assert acc.patches == 2 and a.shape == b.shape == (2, 2048)
    np.testing.assert_array_equal(a[0], b[0])
    assert acc.fid() is not None and acc.kid() is None  # KID needs 4
    with pytest.raises(ValueError):
        acc.add(rgb, rgb[:128])


def test_cli_eval_reports_patch_fields(tmp_path: Path) -> None:
    from tests.test_eval import _app

    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(SAMPLE, folder / "sample.jpg")
    shutil.copy(DATA / "photo_c.jpg", folder / "c.jpg")
    res = CliRunner().invoke(
        _app(), ["eval", str(folder), "--metrics", "patch_fid,patch_kid,psnr", "--json", "-"]
    )
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["metrics"] == ["psnr", "patch_fid", "patch_kid"]
    assert d["patch_fid_patches"] == 9
    assert d["patch_fid"] is not None and d["patch_fid"] >= 0
    assert d["patch_kid"]["subset_size"] == 5
    assert d["fid"] is None and d["fid_kid_images"] == 0
    assert any(n.startswith("patch_fid: based on only 9 patches") for n in d["notes"])

    res = CliRunner().invoke(_app(), ["eval", str(folder / "c.jpg"), "--metrics", "patch_fid"])
    assert res.exit_code == 0, res.output
    assert "patch FID (256 px)" in res.stdout and "1 patches" in res.stdout
    assert "patch_fid: needs at least 2 patches" in " ".join(res.stdout.split())


def test_compare_patch_fid_per_codec_and_target(tmp_path: Path) -> None:
    from tests.test_eval import _app

    shutil.copy(SAMPLE, tmp_path / "sample.jpg")
    out = tmp_path / "rd"
    res = CliRunner().invoke(
        _app(),
        ["compare", str(tmp_path / "sample.jpg"), "--bpp", "1.0", "--codecs", "jpeg",
         "--patch-fid", "--out", str(out), "--json"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    rows = {(r["target"], r["codec"]): r for r in d["summary"]}
    jpeg = rows[("1", "jpeg")]
    assert jpeg["images"] == 1 and jpeg["patch_fid_patches"] == 8
    assert jpeg["patch_fid"] is not None and jpeg["patch_kid"] is not None
    own = [r for r in d["summary"] if r["codec"].startswith("gqtok:")]
    assert len(own) == 1 and own[0]["patch_fid_patches"] == 8 and own[0]["patch_fid"] > 0
    assert any(n.startswith("patch_fid: based on 8-8 patches") for n in d["notes"])
    assert "patch_fid" in json.loads((out / "rd.json").read_text())["summary"][0]
