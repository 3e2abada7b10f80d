"""Training pieces: TDC rules, KL bits, crop sampler, exact resume, export, ST-LPIPS."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gqtok.nets import stlpips as perceptual
from gqtok.nets.config import UNetConfig
from gqtok.quant.search import split_moments
from gqtok.quant.tdc import BITS_PER_NAT, TargetDivergence, kl_bits_from_moments, kl_bits_per_token
from gqtok.train.checkpoints import load_checkpoint
from gqtok.train.config import TrainConfig
from gqtok.train.data import CropSampler, Prefetcher, PyramidSampler
from gqtok.train.export_model import export
from gqtok.train.loop import learning_rate, run
from gqtok.zoo.load import load_model

REPO = Path(__file__).resolve().parent.parent
TINY_NET = UNetConfig(ch=32, ch_mult=(1, 1), num_res_blocks=1, attn_resolutions=(),
                      z_channels=16, stem=1)
HAS_STLPIPS = perceptual.available("alex")


# ---------------------------------------------------------------------------------------------
# KL bits per token


def test_kl_bits_matches_direct_formula() -> None:
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(2, 16, 3, 4, generator=g) * 2
    logvar = torch.randn(2, 16, 3, 4, generator=g) * 3
    logvar[0, 0, 0, 0] = -50.0  # exercises the clamp to [-30, 20]
    logvar[1, 5, 2, 3] = 40.0
    kl2 = kl_bits_per_token(mu, logvar, 16)
    assert kl2.shape == (2, 12, 1)
    for b in range(2):
        for y in range(3):
            for x in range(4):
                total = 0.0
                for c in range(16):
                    m = float(mu[b, c, y, x])
                    lv = min(max(float(logvar[b, c, y, x]), -30.0), 20.0)
                    total += 0.5 * (m * m + math.exp(lv) - 1.0 - lv) * 1.4426
                assert float(kl2[b, y * 4 + x, 0]) == pytest.approx(total, rel=1e-5)


def test_kl_bits_strided_grouping_dim8() -> None:
    b, c, h, w = 1, 16, 2, 3
    mu = torch.zeros(b, c, h, w)
    logvar = torch.zeros(b, c, h, w)
    mu[0, 3, 1, 2] = 2.0  # channel 3 = 1*NG + 1 -> token k = 1 at position (1, 2)
    kl2 = kl_bits_per_token(mu, logvar, 8)
    assert kl2.shape == (1, 6, 2)
    expected = torch.zeros(1, 6, 2)
    expected[0, 1 * 3 + 2, 1] = 0.5 * 4.0 * BITS_PER_NAT
    torch.testing.assert_close(kl2, expected)
    # Same grouping as the quantizer's tokens.
    g = torch.Generator().manual_seed(1)
    moments = torch.randn(2, 32, 3, 5, generator=g)
    kl2 = kl_bits_from_moments(moments, 8)
    mu_t, std_t = split_moments(moments, 8)
    direct = (0.5 * (mu_t**2 + std_t**2 - 1 - torch.log(std_t**2)) * BITS_PER_NAT).sum(1)
    torch.testing.assert_close(kl2.reshape(-1), direct, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# TDC multipliers


def _kl(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).reshape(1, -1, 1)


def test_tdc_branches() -> None:
    t = TargetDivergence(65536)
    assert (t.target, t.tau, t.factor) == (16.0, 0.5, 1.01)
    # Everything inside the band, mean below T: lam down, lam_max at its floor, lam_min at its cap.
    t.update(_kl(15.6, 15.9, 16.4))
    assert t.lam == pytest.approx(1 / 1.01)
    assert t.lam_max == 1.0 and t.lam_min == 1.0
    # Mean above T, a token over T + tau and one under T - tau.
    t = TargetDivergence(65536)
    t.update(_kl(10.0, 30.0, 20.0))
    assert t.lam == pytest.approx(1.01)
    assert t.lam_max == pytest.approx(1.01)
    assert t.lam_min == pytest.approx(1 / 1.01)
    # lam_max decreases again once no token is over budget; lam_min recovers.
    t.lam_max, t.lam_min = 5.0, 0.5
    t.update(_kl(16.0, 16.2))
    assert t.lam_max == pytest.approx(5.0 / 1.01)
    assert t.lam_min == pytest.approx(0.5 * 1.01)
    # Exactly at the band edges counts as inside; mean == T counts as "not above".
    t = TargetDivergence(65536)
    t.update(_kl(15.5, 16.5, 16.0))
    assert t.lam == pytest.approx(1 / 1.01) and t.lam_max == 1.0 and t.lam_min == 1.0


def test_tdc_clamps_and_unclamped_lam() -> None:
    t = TargetDivergence(65536)
    for _ in range(1000):
        t.update(_kl(0.0, 100.0, 100.0))
    assert t.lam_max == 1000.0
    assert t.lam_min == 0.001
    assert t.lam == pytest.approx(1.01**1000)  # no clamp on lam
    for _ in range(1000):
        t.update(_kl(16.0))
    assert t.lam_max == 1.0 and t.lam_min == 1.0
    assert t.lam == pytest.approx(1.0)


def test_tdc_weights_loss_and_state() -> None:
    t = TargetDivergence(256)  # T = 8
    t.lam, t.lam_min, t.lam_max = 2.0, 0.1, 10.0
    kl2 = torch.tensor([[[3.0], [8.2], [12.0]], [[7.5], [8.5], [7.4]]], requires_grad=True)
    w = t.weights(kl2)
    torch.testing.assert_close(w.flatten(), torch.tensor([0.1, 1, 10, 1, 1, 0.1]))
    loss = t.loss(kl2)
    expected = 2.0 * (0.3 + 8.2 + 120.0 + 7.5 + 8.5 + 0.74) / 2
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-6)
    loss.backward()
    torch.testing.assert_close(kl2.grad, 2.0 * w / 2)  # the weights carry no gradient
    t2 = TargetDivergence(256)
    t2.load_state_dict(t.state_dict())
    assert t2.state_dict() == t.state_dict()


# ---------------------------------------------------------------------------------------------
# Data, training, resume, export


def _write_photos(folder: Path, sizes: list[tuple[int, int]], seed: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i, (w, h) in enumerate(sizes):
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([np.sin(xx / (3 + i) + c) + np.cos(yy / (4 + c)) for c in range(3)], -1)
        img = (base * 60 + 128 + rng.normal(0, 8, base.shape)).clip(0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"p{i}.png")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    _write_photos(root / "train", [(48, 40), (64, 64), (40, 36), (80, 60)], seed=0)
    _write_photos(root / "val", [(40, 40), (36, 44)], seed=1)
    return root


def _cfg(data: Path, out: Path, **kw: object) -> TrainConfig:
    base = dict(
        data=data, out=out, network=TINY_NET, crop=32, batch=2, steps=4, log_every=1,
        eval_every=2, eval_crop=32, eval_images=2, ckpt_every=0, seed=3, threads=2,
        device="cpu", scale_min=0.5, perceptual="alex" if HAS_STLPIPS else "none",
    )
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def full_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run_full")
    run(_cfg(data_dir, out))
    return out


def test_crop_sampler_shapes_and_state() -> None:
    photos = [np.full((30, 50, 3), 7, np.uint8), np.zeros((200, 100, 3), np.uint8)]
    s = CropSampler(photos, 32, (0.25, 1.0), flip=True, seed=5)  # photo 0 is below the crop
    state = s.state_dict()
    a = s.batch(6)
    assert a.shape == (6, 32, 32, 3) and a.dtype == np.uint8
    s.load_state_dict(state)
    np.testing.assert_array_equal(s.batch(6), a)


def _photos() -> list[np.ndarray]:
    g = np.random.default_rng(1)
    return [g.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((90, 130), (64, 70),
                                                                        (20, 30))]


def test_pyramid_sampler_crops_are_slices_of_resized_levels() -> None:
    photos = _photos()
    s = PyramidSampler(photos, 32, (0.25, 1.0), levels=3, flip=True, seed=2)
    # scales 0.25, 0.5, 1: only those where the short side still holds the crop are kept;
    # the 20x30 photo fits no level and is enlarged to a 32 px short side
    assert [[lv.shape[:2] for lv in lvs] for lvs in s.levels] == [
        [(45, 65), (90, 130)], [(32, 35), (64, 70)], [(32, 48)]]
    windows = [np.lib.stride_tricks.sliding_window_view(lv, (32, 32, 3)).reshape(-1, 32, 32, 3)
               for lvs in s.levels for lv in lvs]
    flips = 0
    for crop in s.batch(40):
        found = []
        for w in windows:
            for cand, mirrored in ((crop, False), (crop[:, ::-1], True)):
                if (w == cand).all(axis=(1, 2, 3)).any():
                    found.append(mirrored)
        assert found, "crop is not a slice of any level (or its mirror)"
        flips += found[0]
    assert 0 < flips < 40  # both orientations occur


def test_prefetcher_matches_sampler_and_checkpoints_consumed_state() -> None:
    ref = PyramidSampler(_photos(), 32, (0.25, 1.0), 3, True, 7)
    expected = [ref.batch(5) for _ in range(6)]
    feed = Prefetcher(PyramidSampler(_photos(), 32, (0.25, 1.0), 3, True, 7), 5)
    try:
        got = [feed.batch(5) for _ in range(3)]
        state = feed.state_dict()  # the background thread has drawn further by now
        with pytest.raises(ValueError, match="batches of 5"):
            feed.batch(4)
    finally:
        feed.close()
    for a, b in zip(expected[:3], got, strict=True):
        np.testing.assert_array_equal(a, b)
    resumed = PyramidSampler(_photos(), 32, (0.25, 1.0), 3, True, 7)
    resumed.load_state_dict(state)
    for a in expected[3:]:
        np.testing.assert_array_equal(resumed.batch(5), a)


def test_prefetcher_reraises_sampler_errors_on_the_training_thread() -> None:
    class Broken(CropSampler):
        def batch(self, n: int) -> np.ndarray:
            raise OSError("disk went away")

    feed = Prefetcher(Broken(_photos(), 32), 2)
    try:
        with pytest.raises(OSError, match="disk went away"):
            feed.batch(2)
    finally:
        feed.close()


def test_warmup_ramps_then_follows_schedule() -> None:
    cfg = TrainConfig(lr=1e-3, lr_min=0.0, lr_schedule="cosine", steps=1000, warmup_steps=10)
    constant = TrainConfig(lr=1e-3, steps=1000, warmup_steps=10)
    assert [learning_rate(constant, s) for s in (0, 4, 9, 10)] == pytest.approx(
        [1e-4, 5e-4, 1e-3, 1e-3])
    assert learning_rate(cfg, 4) == pytest.approx(5e-4, rel=1e-4)  # ramp x cosine
    plain = TrainConfig(lr=1e-3, lr_min=0.0, lr_schedule="cosine", steps=1000)
    for step in (9, 10, 500):
        assert learning_rate(cfg, step) == pytest.approx(learning_rate(plain, step))


def test_pyramid_run_resumes_bit_identically(data_dir: Path, tmp_path: Path) -> None:
    full, split = tmp_path / "full", tmp_path / "split"
    run(_cfg(data_dir, full, steps=3, scale_levels=3, warmup_steps=2))
    run(_cfg(data_dir, split, steps=1, scale_levels=3, warmup_steps=2))
    run(_cfg(data_dir, split, steps=3, scale_levels=3, warmup_steps=2, resume=True))
    a, b = load_checkpoint(full / "last.pt"), load_checkpoint(split / "last.pt")
    assert a["sampler"] == b["sampler"]
    for key, value in a["decoder"].items():
        assert torch.equal(value, b["decoder"][key]), key


def test_resume_is_bit_identical(data_dir: Path, full_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "run_split"
    run(_cfg(data_dir, out, steps=2))
    with pytest.raises(FileExistsError):
        run(_cfg(data_dir, out, steps=4))
    run(_cfg(data_dir, out, steps=4, resume=True))
    a, b = load_checkpoint(full_run / "last.pt"), load_checkpoint(out / "last.pt")
    assert a["step"] == b["step"] == 4 and a["images_seen"] == b["images_seen"] == 8
    for part in ("encoder", "decoder"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), f"{part}.{key} differs"
    assert a["tdc"] == b["tdc"]
    assert a["sampler"] == b["sampler"]
    for k, st in a["optimizer"]["state"].items():
        assert torch.equal(st["exp_avg_sq"], b["optimizer"]["state"][k]["exp_avg_sq"])
    lines = (out / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("kind,step")
    assert [ln.split(",")[:2] for ln in lines[1:] if ln.startswith("train")] == [
        ["train", str(i)] for i in range(1, 5)
    ]


def test_time_budget_stops_cleanly(data_dir: Path, tmp_path: Path) -> None:
    path = run(_cfg(data_dir, tmp_path / "r", steps=50, minutes=1e-6, perceptual="none"))
    state = load_checkpoint(path)
    assert 0 <= state["step"] < 50


def test_reached_prints_the_step_of_a_run(full_run: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m gqtok.train reached RUN`: what the resumable recipes in scripts/ test."""
    from gqtok.train.command import main

    for source, step in ((full_run, "4"), (full_run / "last.pt", "4"), (tmp_path / "none", "0")):
        main(["reached", str(source)])
        assert capsys.readouterr().out.strip() == step


def test_export_loads_and_round_trips(full_run: Path, tmp_path: Path) -> None:
    path = tmp_path / "tiny.safetensors"
    card = export(full_run, path, "tiny-test", token_stats_images=3)
    model = load_model(path)
    assert model.name == "tiny-test" and model.entropy.kind == "frequency"
    assert int(model.entropy.counts.sum()) == card["token_stats"]["tokens"] > 0
    x = torch.rand(1, 3, 16, 24) * 2 - 1
    idx, _ = model.quantize(model.moments(x))
    assert idx.shape == (1, 1, 8, 12)
    assert model.decode_indices(idx).shape == (1, 3, 16, 24)
    c = model.card
    assert c["arch"] == "unet" and c["network"]["ch_mult"] == [1, 1]
    assert c["quantizer"] == {"dim": 16, "size": 65536, "seed": 42, "beta": 1.0}
    assert c["entropy"]["kind"] == "frequency" and c["entropy"]["smoothing"] == 0.5
    tr = c["training"]
    assert (tr["steps"], tr["images_seen"], tr["crop"], tr["batch"]) == (4, 8, 32, 2)
    assert tr["wall_time_s"] >= 0 and "torch" in tr["hardware"]
    assert tr["data"]["train_photos"] == 4 and tr["data"]["val_photos"] == 2
    q = c["quality"]
    for key in ("val_psnr_q", "val_psnr", "val_bits_mean", "val_bits_min", "val_bits_max"):
        assert math.isfinite(q[key])


def test_cosine_schedule_endpoints_and_monotone() -> None:
    cfg = TrainConfig(lr=2e-4, lr_min=1e-5, lr_schedule="cosine", steps=100)
    rates = [learning_rate(cfg, s) for s in range(101)]
    assert rates[0] == pytest.approx(2e-4) and rates[100] == pytest.approx(1e-5)
    assert rates[50] == pytest.approx((2e-4 + 1e-5) / 2)
    assert all(a > b for a, b in zip(rates, rates[1:], strict=False))
    assert learning_rate(TrainConfig(lr=3e-4, steps=100), 77) == 3e-4
    with pytest.raises(ValueError, match="schedule"):
        learning_rate(TrainConfig(lr_schedule="step"), 1)


def test_warm_start_continues_from_exported_model(full_run: Path, data_dir: Path,
                                                   tmp_path: Path) -> None:
    first = tmp_path / "first.safetensors"
    card = export(full_run, first, "stage-1", token_stats_images=2)
    out = tmp_path / "stage2"
    run(_cfg(data_dir, out, steps=3, init=str(first), lr_schedule="cosine", lr_min=1e-6,
             eval_every=0, perceptual="none"))
    state = load_checkpoint(out / "last.pt")
    # the multipliers continue from the card (then move by one factor per step)
    lam0, f = card["training"]["tdc"]["lam"], card["training"]["tdc"]["factor"]
    assert lam0 * f ** -3.001 <= state["tdc"]["lam"] <= lam0 * f ** 3.001
    assert state["init"]["model"] == "stage-1" and state["init"]["steps"] == 4
    # the weights started from the model, not from a fresh initialisation (another seed): after
    # three small steps they are far closer to the model's than a fresh run's are
    second = tmp_path / "second.safetensors"
    card2 = export(out, second, "stage-2", token_stats_images=2)
    assert card2["training"]["init"]["weights_sha256"] == card["weights_sha256"]
    assert card2["training"]["lr_schedule"] == "cosine"
    assert load_model(second).card["training"]["init"]["model"] == "stage-1"
    fresh = tmp_path / "fresh"
    run(_cfg(data_dir, fresh, steps=3, eval_every=0, perceptual="none", seed=11))
    w_first = _conv_in(first)
    w_warm = load_checkpoint(out / "last.pt")["encoder"]["conv_in.weight"]
    w_fresh = load_checkpoint(fresh / "last.pt")["encoder"]["conv_in.weight"]
    assert (w_warm - w_first).norm() < 0.2 * (w_fresh - w_first).norm()


def test_warm_start_for_another_token_size(full_run: Path, data_dir: Path,
                                           tmp_path: Path) -> None:
    """The rate family: the same network retrained for G = 8 (two tokens per position) from a
    G = 16 model keeps the weights; the multipliers start over for the new target."""
    first = tmp_path / "g16.safetensors"
    export(full_run, first, "g16", token_stats_images=1)
    out = tmp_path / "g8"
    run(_cfg(data_dir, out, steps=2, dim=8, codebook_size=4096, init=str(first),
             eval_every=0, perceptual="none"))
    state = load_checkpoint(out / "last.pt")
    assert state["init"]["quantizer"] == {"dim": 16, "size": 65536}
    assert state["tdc"]["target"] == 12.0
    f = state["tdc"]["factor"]
    assert f**-2.001 <= state["tdc"]["lam"] <= f**2.001  # from 1.0, not the card's
    w_first = _conv_in(first)
    assert (state["encoder"]["conv_in.weight"] - w_first).abs().max() < 0.01
    card = export(out, tmp_path / "g8.safetensors", "g8", token_stats_images=1)
    assert card["quantizer"]["dim"] == 8 and card["training"]["init"]["model"] == "g16"
    with pytest.raises(ValueError, match="decodes this model's own tokens"):
        run(_cfg(data_dir, tmp_path / "dec", dim=8, init=str(first), decoder_only=True,
                 perceptual="none"))


def test_adam_betas_follow_the_command_line(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "betas"
    run(_cfg(data_dir, out, steps=1, eval_every=0, perceptual="none", adam_beta1=0.5,
             adam_beta2=0.9))
    groups = load_checkpoint(out / "last.pt")["optimizer"]["param_groups"]
    assert [tuple(g["betas"]) for g in groups] == [(0.5, 0.9)]
    # a resumed run follows its own flags, not the betas saved in the optimiser state
    run(_cfg(data_dir, out, steps=2, eval_every=0, perceptual="none", resume=True))
    groups = load_checkpoint(out / "last.pt")["optimizer"]["param_groups"]
    assert [tuple(g["betas"]) for g in groups] == [(0.9, 0.999)]
    with pytest.raises(ValueError, match="adam-beta1"):
        run(_cfg(data_dir, tmp_path / "bad", adam_beta1=1.0))


def _conv_in(path: Path) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(str(path))["encoder.conv_in.weight"].float()


def test_warm_start_rejects_other_network(full_run: Path, data_dir: Path, tmp_path: Path) -> None:
    first = tmp_path / "m.safetensors"
    export(full_run, first, "tiny", token_stats_images=1)
    other = UNetConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                       z_channels=16, stem=1)
    with pytest.raises(ValueError, match="differs"):
        run(_cfg(data_dir, tmp_path / "o", network=other, init=str(first), perceptual="none"))
    with pytest.raises(FileNotFoundError, match="no such model"):
        run(_cfg(data_dir, tmp_path / "p", init=str(tmp_path / "missing.safetensors")))


def test_training_does_not_import_constriction(data_dir: Path, tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "import gqtok.train as t\n"
        "from gqtok.nets.config import UNetConfig\n"
        "net = UNetConfig(ch=32, ch_mult=(1, 1), num_res_blocks=1, attn_resolutions=())\n"
        f"cfg = t.TrainConfig(data=Path({str(data_dir)!r}), out=Path({str(tmp_path)!r}),"
        " network=net, crop=32, batch=2, steps=2, eval_every=1, eval_crop=32, eval_images=1,"
        " perceptual='none', threads=1, device='cpu')\n"
        "t.run(cfg)\n"
        "assert 'constriction' not in sys.modules, 'constriction was imported'\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]


# ---------------------------------------------------------------------------------------------
# ST-LPIPS


@pytest.mark.skipif(not HAS_STLPIPS, reason="stlpips-pytorch wheel not installed")
def test_stlpips_basic_properties() -> None:
    m = perceptual.STLPIPS("alex")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 48, 48, generator=g) * 2 - 1
    y = (x + 0.4 * torch.randn(x.shape, generator=g)).clamp(-1, 1).requires_grad_(True)
    d = m(y, x)
    assert d.shape == (2,) and bool((d > 0).all())
    assert torch.equal(m(x, x), torch.zeros(2))
    d.sum().backward()
    assert y.grad is not None and bool(torch.isfinite(y.grad).all())
    assert not any(p.requires_grad for p in m.parameters())
    m.train()
    assert not m.training


def test_stlpips_rejects_wrong_weights(tmp_path: Path) -> None:
    bad = tmp_path / "alex_shift_tolerant.pth"
    bad.write_bytes(b"not the weights")
    with pytest.raises(ValueError, match="sha256"):
        perceptual.STLPIPS("alex", weights=bad)
