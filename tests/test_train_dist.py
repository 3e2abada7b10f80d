"""`gqtok train` under torchrun: 2 CPU ranks on gloo against one process on the same global batch.

The runs are real (torchrun, gloo, DistributedDataParallel, the tiny network of test_train on
synthetic photos); the checks are what a distributed run promises: the ranks end with identical
weights and TDC multipliers, the result is the one-process run's on the global batch, a resume
with the same number of ranks continues bit-identically, and one with another number is refused.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
TORCHRUN = Path(sys.executable).with_name("torchrun")
STEPS, LR = 3, 1e-4
TINY = ["--ch", "32", "--ch-mult", "1,1", "--num-res-blocks", "1", "--attn-resolutions=",
        "--z-channels", "16", "--stem", "1", "--codebook-size", "4096"]

pytestmark = pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not beside python")


def _photos(root: Path) -> Path:
    for sub, sizes, seed in (("train", [(48, 40), (64, 64), (40, 36), (80, 60)], 0),
                             ("val", [(40, 40), (36, 44)], 1)):
        (root / sub).mkdir(parents=True)
        rng = np.random.default_rng(seed)
        for i, (w, h) in enumerate(sizes):
            yy, xx = np.mgrid[0:h, 0:w]
            base = np.stack([np.sin(xx / (3 + i) + c) + np.cos(yy / (4 + c)) for c in range(3)],
                            -1)
            img = (base * 60 + 128 + rng.normal(0, 8, base.shape)).clip(0, 255)
            Image.fromarray(img.astype(np.uint8)).save(root / sub / f"p{i}.png")
    return root


def _train(data: Path, out: Path, batch: int, ranks: int, steps: int = STEPS,
           resume: bool = False, extra: list[str] | None = None,
           ) -> subprocess.CompletedProcess[str]:
    args = ["-m", "gqtok", "train", "--data", str(data), "--out", str(out), "--batch", str(batch),
            "--steps", str(steps), "--crop", "32", "--log-every", "1", "--eval-every", "2",
            "--eval-crop", "32", "--eval-images", "2", "--seed", "3", "--device", "cpu",
            "--scale-min", "0.5", "--perceptual", "none", "--lr", str(LR), *TINY]
    if resume:
        args.append("--resume")
    args += extra or []
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    if ranks == 1:
        cmd = [sys.executable, *args, "--threads", "1"]
    else:
        cmd = [str(TORCHRUN), "--standalone", "--nproc-per-node", str(ranks), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def _ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _ckpt(out: Path) -> dict:
    return torch.load(out / "last.pt", weights_only=True)


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "metrics.csv").open(newline="") as f:
        return [r for r in csv.DictReader(f) if r["kind"] == "train"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dist_train")
    data = _photos(root / "photos")
    out = {"data": data, "two": root / "two", "one": root / "one", "long": root / "long"}
    _ok(_train(data, out["two"], batch=2, ranks=2))
    _ok(_train(data, out["one"], batch=4, ranks=1))
    return out


def test_ranks_end_identical_and_match_one_process(runs: dict[str, Path]) -> None:
    two, one = _ckpt(runs["two"]), _ckpt(runs["one"])
    assert two["world_size"] == 2 and one["world_size"] == 1
    digests = two["replicas"]  # every rank's weights + TDC multipliers, gathered on rank 0
    assert len(digests) == 2 and digests[0] == digests[1]
    assert two["step"] == one["step"] == STEPS
    assert two["images_seen"] == one["images_seen"] == 4 * STEPS
    # the same crops and noise as one process drawing the global batch of 4
    assert two["sampler"] == one["sampler"]
    assert torch.equal(two["rng"]["noise"], one["rng"]["noise"])
    for key in ("lam", "lam_min", "lam_max"):  # TDC rules saw the all-reduced statistics
        assert two["tdc"][key] == pytest.approx(one["tdc"][key], rel=1e-12)
    for a, b in zip(_rows(runs["two"]), _rows(runs["one"]), strict=True):
        for key in ("loss", "l1", "kl_loss", "bits_mean", "bits_min", "bits_max"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-5), key
        assert a["images"] == b["images"]
    diffs = torch.cat([(two[n][k] - one[n][k]).abs().flatten()
                       for n in ("encoder", "decoder") for k in one[n]])
    # Averaged gradients equal the global batch's up to float rounding. Biases of convolutions
    # followed by GroupNorm have an exactly zero gradient, so Adam turns rounding noise into
    # steps of up to lr: they may differ by up to lr x steps, all others agree to 1e-6.
    assert float(diffs.max()) <= 2 * LR * STEPS
    assert float((diffs > 1e-6).float().mean()) < 0.005


def test_resume_with_same_ranks_is_bit_identical(runs: dict[str, Path], tmp_path: Path) -> None:
    _ok(_train(runs["data"], runs["two"], batch=2, ranks=2, steps=5, resume=True))
    _ok(_train(runs["data"], runs["long"], batch=2, ranks=2, steps=5))
    resumed, straight = _ckpt(runs["two"]), _ckpt(runs["long"])
    assert resumed["step"] == straight["step"] == 5
    for n in ("encoder", "decoder"):
        for k, v in straight[n].items():
            assert torch.equal(resumed[n][k], v), (n, k)
    assert resumed["tdc"] == straight["tdc"] and resumed["sampler"] == straight["sampler"]


def test_resume_with_other_ranks_is_refused(runs: dict[str, Path]) -> None:
    proc = _train(runs["data"], runs["long"], batch=4, ranks=1, steps=6, resume=True)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()[-1]
    assert "written by 2 process(es), this run has 1" in err
    assert "under torchrun with 2 processes" in err
    assert _ckpt(runs["long"])["step"] == 5  # untouched


def test_decoder_only_ranks_average_their_gradients(runs: dict[str, Path],
                                                   tmp_path: Path) -> None:
    """--decoder-only averages gradients by hand (its adaptive weight and two discriminator
    passes per backward do not fit DDP): the ranks stay identical, decoder and
    discriminator, and without the GAN term the run is the one-process run on the global
    batch."""
    from gqtok.train.export_model import export

    model = tmp_path / "tiny.safetensors"
    export(runs["one"], model, "tiny", token_stats_images=1)
    extra = ["--decoder-only", "--init", str(model)]
    gan, plain2, plain1 = tmp_path / "gan", tmp_path / "plain2", tmp_path / "plain1"
    _ok(_train(runs["data"], gan, batch=2, ranks=2, extra=[*extra, "--disc-start", "1"]))
    state = _ckpt(gan)
    assert len(state["replicas"]) == 2 and state["replicas"][0] == state["replicas"][1]
    assert "disc" in state and float(_rows(gan)[-1]["gan_weight"]) > 0
    _ok(_train(runs["data"], plain2, batch=2, ranks=2, extra=[*extra, "--disc-start", "99"]))
    _ok(_train(runs["data"], plain1, batch=4, ranks=1, extra=[*extra, "--disc-start", "99"]))
    two, one = _ckpt(plain2), _ckpt(plain1)
    assert two["replicas"][0] == two["replicas"][1]
    for a, b in zip(_rows(plain2), _rows(plain1), strict=True):
        assert float(a["l1"]) == pytest.approx(float(b["l1"]), rel=1e-5)
    diffs = torch.cat([(two["decoder"][k] - v).abs().flatten() for k, v in one["decoder"].items()])
    assert float(diffs.max()) <= 2 * LR * STEPS
    assert float((diffs > 1e-6).float().mean()) < 0.005
    assert all(torch.equal(two["encoder"][k], v) for k, v in one["encoder"].items())  # frozen
