"""Metric definitions against independent references, and the weight files' integrity checks."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from gqtok.eval.metrics import MetricUnavailable, WeightsMismatch
from gqtok.eval.metrics import fidelity as px
from gqtok.eval.metrics import inception as inc
from gqtok.eval.metrics import lpips as lp
from gqtok.eval.metrics.usage import TokenCounter

DATA = Path(__file__).parent / "data"
PHOTOS = ("photo_a.jpg", "photo_b.png", "photo_c.jpg")


def _rgb(name: str) -> np.ndarray:
    with Image.open(DATA / name) as im:
        return np.asarray(im.convert("RGB"))


def _jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"))


def _crops(size: int = 128) -> list[np.ndarray]:
    """Six distinct real-photo crops: a handful is enough to order codecs by quality."""
    a, c = _rgb("photo_a.jpg"), _rgb("photo_c.jpg")
    return [
        a[:size, :size],
        a[-size:, -size:],
        a[40 : 40 + size, 100 : 100 + size],
        c[:size, :size],
        c[-size:, -size:],
        c[:size, -size:],
    ]


def _fid_or_skip() -> inc.InceptionFeatures:
    why = inc.available()
    if why:
        pytest.skip(f"FID network: {why}")
    return inc.InceptionFeatures()


def _stlpips_or_skip(name: str = "stlpips_alex") -> lp.Distance:
    try:
        return lp.load_distance(name)
    except MetricUnavailable as e:
        pytest.skip(f"ST-LPIPS: {e}")


def _flip_byte(src: Path, dst: Path, at: int = 1000) -> Path:
    shutil.copyfile(src, dst)
    with dst.open("r+b") as f:
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0x01]))
    return dst


# --- PSNR / SSIM / MS-SSIM ---------------------------------------------------------------


@pytest.mark.parametrize("name", PHOTOS)
@pytest.mark.parametrize("quality", [10, 50, 90])
def test_psnr_ssim_match_scikit_image(name: str, quality: int) -> None:
    metrics = pytest.importorskip("skimage.metrics", reason="scikit-image (test reference)")
    a = _rgb(name)
    b = _jpeg(a, quality)
    ref_psnr = metrics.peak_signal_noise_ratio(a, b, data_range=255)
    ref_ssim = metrics.structural_similarity(
        a,
        b,
        data_range=255,
        channel_axis=2,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
    )
    assert abs(px.psnr(a, b) - ref_psnr) < 1e-3
    assert abs(px.ssim(a, b) - ref_ssim) < 1e-4


def test_identical_images() -> None:
    a = _rgb("photo_c.jpg")
    assert px.psnr(a, a) == float("inf")
    assert px.ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    assert px.ms_ssim(a, a) == (pytest.approx(1.0, abs=1e-12), 5)


def test_msssim_scale_rule() -> None:
    assert px.msssim_scales(256, 256) == 5
    assert px.msssim_scales(176, 400) == 5
    assert px.msssim_scales(175, 400) == 4
    assert px.msssim_scales(97, 150) == 4
    assert px.msssim_scales(21, 21) == 1
    assert px.msssim_scales(10, 300) == 0
    tiny = _rgb("photo_c.jpg")[:10, :10]
    assert px.ms_ssim(tiny, tiny) == (None, 0)
    assert px.ssim(tiny, tiny) is None


def test_msssim_one_scale_is_ssim() -> None:
    a = _rgb("photo_a.jpg")[:20, :40]
    b = _jpeg(a, 30)
    value, scales = px.ms_ssim(a, b)
    assert scales == 1
    assert value == pytest.approx(px.ssim(a, b), abs=1e-12)


def test_fidelity_orders_jpeg_qualities() -> None:
    a = _rgb("photo_c.jpg")
    scores = [(px.psnr(a, b), px.ssim(a, b), px.ms_ssim(a, b)[0]) for b in
              (_jpeg(a, q) for q in (10, 50, 90))]  # fmt: skip
    for worse, better in zip(scores, scores[1:], strict=False):
        assert all(w < b for w, b in zip(worse, better, strict=True))


# --- FID / KID -------------------------------------------------------------------------------


def test_tf_resize_matches_legacy_bilinear() -> None:
    """Independent form of TF1 resize_bilinear: affine grid shifted by half a pixel each."""
    x = torch.rand(1, 3, 37, 53, dtype=torch.float64) * 255
    theta = torch.eye(2, 3, dtype=torch.float64)
    theta[0, 2] += 1 / 53 - 1 / 299
    theta[1, 2] += 1 / 37 - 1 / 299
    grid = F.affine_grid(theta[None], [1, 3, 299, 299], align_corners=False)
    ref = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    assert torch.allclose(inc.tf_resize(x), ref, atol=1e-9)
    same = torch.rand(1, 3, 299, 299, dtype=torch.float64)
    assert torch.equal(inc.tf_resize(same), same)


def test_frechet_distance_matches_scipy_sqrtm() -> None:
    linalg = pytest.importorskip("scipy.linalg", reason="scipy (test reference)")
    rng = np.random.default_rng(0)
    for n1, n2, d in ((6, 9, 16), (40, 30, 8)):
        f1 = rng.normal(size=(n1, d))
        f2 = rng.normal(size=(n2, d)) * 1.3 + 0.2
        s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
        root = linalg.sqrtm(s1 @ s2)
        ref = ((f1.mean(0) - f2.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * root.real)
        assert inc.frechet_distance(f1, f2) == pytest.approx(ref, rel=1e-6, abs=1e-6)


def test_kid_is_small_for_same_distribution() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(200, 16)), rng.normal(size=(200, 16))
    same = inc.kernel_inception_distance(a, b)
    shifted = inc.kernel_inception_distance(a, b + 1.0)
    assert abs(same.mean) < 3 * same.std + 1e-3
    assert shifted.mean > 10 * max(same.std, 1e-3)
    assert (same.subsets, same.subset_size) == (100, 100)


def test_fid_and_stlpips_order_jpeg_qualities() -> None:
    net = _fid_or_skip()
    dist = _stlpips_or_skip()
    crops = _crops()
    ref = net(crops)
    assert ref.shape == (len(crops), 2048)
    assert abs(inc.frechet_distance(ref, net(crops))) < 1e-3  # recomputed: same set, FID ~0
    fids, lpips = [], []
    for q in (10, 50, 90):
        degraded = [_jpeg(c, q) for c in crops]
        fids.append(inc.frechet_distance(ref, net(degraded)))
        lpips.append(np.mean([dist(c, d) for c, d in zip(crops, degraded, strict=True)]))
    assert fids[0] > fids[1] > fids[2] > 0
    assert lpips[0] > lpips[1] > lpips[2] > 0


# --- weight integrity --------------------------------------------------------------------------


def test_tampered_inception_weights_are_refused(tmp_path: Path) -> None:
    if inc.available():
        pytest.skip(f"FID network: {inc.available()}")
    bad = _flip_byte(inc.weights_file(), tmp_path / "default_1.pt", at=5_000_000)
    with pytest.raises(WeightsMismatch, match="sha256"):
        inc.InceptionFeatures(weights=bad)


def test_tampered_stlpips_weights_are_refused(tmp_path: Path) -> None:
    from gqtok.nets import stlpips as perceptual

    if not perceptual.available("alex"):
        pytest.skip("stlpips-pytorch is not installed")
    bad = _flip_byte(perceptual.weights_file("alex"), tmp_path / "alex_shift_tolerant.pth")
    with pytest.raises(WeightsMismatch, match="sha256"):
        lp.load_distance("stlpips_alex", weights=bad)


def _fake_alexnet(path: Path) -> Path:
    """A stand-in with the layout of torchvision's AlexNet checkpoint (its weights are not here)."""
    gen = torch.Generator().manual_seed(0)
    layers = {
        0: (64, 3, 11),
        3: (192, 64, 5),
        6: (384, 192, 3),
        8: (256, 384, 3),
        10: (256, 256, 3),
    }
    state = {"classifier.1.weight": torch.zeros(4, 4)}
    for i, (cout, cin, k) in layers.items():
        state[f"features.{i}.weight"] = torch.randn(cout, cin, k, k, generator=gen) * 0.05
        state[f"features.{i}.bias"] = torch.zeros(cout)
    torch.save(state, path)
    return path


def test_lpips_checks_both_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        linear = lp.linear_file()
    except MetricUnavailable as e:
        pytest.skip(str(e))
    backbone = _fake_alexnet(tmp_path / lp.HUB_FILE)
    with pytest.raises(WeightsMismatch):  # not the published AlexNet
        lp.AlexNetLPIPS(backbone=backbone, linear=linear)
    from gqtok.eval.metrics.weights import sha256_file

    monkeypatch.setattr(lp, "HUB_SHA256_PREFIX", sha256_file(backbone))
    net = lp.AlexNetLPIPS(backbone=backbone, linear=linear)  # wiring with a stand-in backbone
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    assert float(net(x, x)[0]) == 0.0
    assert float(net(x, x.flip(-1))[0]) > 0.0
    bad = _flip_byte(linear, tmp_path / "alex.pth", at=600)
    with pytest.raises(WeightsMismatch, match="sha256"):
        lp.AlexNetLPIPS(backbone=backbone, linear=bad)


def test_lpips_unavailable_without_hub_backbone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    why = lp.lpips_unavailable()
    assert why is not None and lp.HUB_FILE in why and "torch hub cache" in why
    with pytest.raises(MetricUnavailable):
        lp.load_distance("lpips")


# --- codebook usage -------------------------------------------------------------------------


def test_token_usage_and_entropy() -> None:
    c = TokenCounter(16)
    c.add(np.array([[0, 1], [2, 3]]))
    c.add(np.array([0, 1, 2, 3]))
    s = c.summary()
    assert (s.tokens, s.used) == (8, 4)
    assert s.usage_pct == pytest.approx(25.0)
    assert s.entropy_bits == pytest.approx(2.0)
    assert s.max_entropy_bits == pytest.approx(4.0)
