"""The GPU scripts run on the CPU: bench/gpu_throughput.py --quick reports every row,
scripts/gpu_check.py --device cpu --quick (a dry run: CPU against CPU) passes, and the GPU
training scripts train, resume and export at a toy size, so a lent GPU's minutes go to
training, not to finding a broken script."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import gqtok
from tests.conftest import DATA, REPO
from tests.test_train import HAS_STLPIPS, data_dir  # noqa: F401 - a fixture


def _bench(name: str) -> Any:
    """bench/NAME.py as a module (bench/ is not a package)."""
    return _load("bench", name)


def _load(folder: str, name: str) -> Any:
    """FOLDER/NAME.py as a module (bench/ and scripts/ are not packages)."""
    spec = importlib.util.spec_from_file_location(name, REPO / folder / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_throughput_quick_on_cpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = _bench("gpu_throughput")
    out = tmp_path / "bench.json"
    bench.main(["--device", "cpu", "--quick", "--json", str(out)])
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["size"] == 64 and report["torch"]
    codec = report["codec"]
    assert [(r["model"].split(" ")[0], r["batch"]) for r in codec] == [
        ("gqtok-f8c16-cpu-v3", 1),
        ("gqtok-f8c16-cpu-v3", 2),
        ("sd3unet_gq_0.25", 1),
        ("sd3unet_gq_0.25", 2),
    ]
    for r in codec:
        assert r["tokens_per_image"] == 64
        assert r["export_images_per_s"] > 0 and r["decode_images_per_s"] > 0
        assert r["export_tokens_per_s"] == pytest.approx(r["export_images_per_s"] * 64)
    search = report["search"]
    assert [r["posteriors"] for r in search] == ["default model, photos", "random"]
    assert all(r["tokens"] == 256 and r["gqtok_tokens_per_s"] > 0 for r in search)
    assert all(0.9 <= r["dense_agrees"] <= 1.0 for r in search)
    table = capsys.readouterr().out
    assert "| model | params (M) |" in table and "torch " in table


def test_gpu_check_dry_run_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "check.json"
    cmd = [sys.executable, "scripts/gpu_check.py", "--device", "cpu", "--quick", "--json", str(out)]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(out.read_text())
    assert report["failed"] == []
    names = [c["check"] for c in report["checks"]]
    assert "search hostile G=16" in names and "search inside bf16 autocast" in names
    assert any(n.startswith("network bf16") for n in names)


def test_decode_workers_bench_on_cpu(tmp_path: Path) -> None:
    bench = _bench("decode_workers")
    out = tmp_path / "workers.json"
    args = [
        "--device",
        "cpu",
        "--files",
        "3",
        "--workers",
        "0,2",
        "--repeat",
        "1",
        "--json",
        str(out),
    ]
    report = bench.main(args)
    assert report == json.loads(out.read_text())
    assert [r["workers"] for r in report["rows"]] == [0, 2]
    assert all(r["files_per_s"] > 0 for r in report["rows"])


def _script(name: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """bash scripts/NAME with extra environment variables, this Python as PY, on the CPU."""
    full = {**os.environ, "PY": sys.executable, "DEVICE": "cpu", "PYTHONUNBUFFERED": "1", **env}
    return subprocess.run(["bash", f"scripts/{name}"], cwd=REPO, env=full, capture_output=True,
                          text=True, timeout=600)  # fmt: skip


def test_the_family_training_script_trains_resumes_and_exports_a_g8_model(
    data_dir: Path, tmp_path: Path  # noqa: F811
) -> None:
    """scripts/train_family.sh (what a GPU session runs for issue 15), two steps of tiny crops
    on the CPU: it warm-starts the default for G = 8, resumes, and exports a model gqtok
    loads and codes with (two tokens per position)."""
    run = tmp_path / "g8"
    env = {"MEMBER": "g8", "STEPS": "2", "CROP": "32", "BATCH": "2", "DATA": str(data_dir),
           "RUN": str(run)}  # fmt: skip
    r = _script("train_family.sh", env)
    assert r.returncode == 0, r.stdout + r.stderr
    r = _script("train_family.sh", {**env, "STEPS": "3"})  # run again: resumes at step 2
    assert r.returncode == 0, r.stdout + r.stderr
    steps = [int(row.split(",")[1]) for row in (run / "metrics.csv").read_text().splitlines()
             if row.startswith("train")]  # fmt: skip
    assert steps == [2, 3]  # logged at each run's last step; the second went on from 2
    model = gqtok.load_model(run / "model.safetensors")
    assert model.name == "gqtok-f8c16-g8-v1"
    assert (model.quant.dim, model.quant.size, model.groups) == (8, 65536, 2)
    photo = np.asarray(Image.open(DATA / "photo_a.jpg").convert("RGB"))[:64, :96]
    tokens = gqtok.encode(model, photo)
    assert tuple(tokens.indices.shape) == (2, 8, 12)
    assert gqtok.decode_array(model, tokens).shape == (64, 96, 3)


@pytest.mark.skipif(not HAS_STLPIPS, reason="ST-LPIPS weights not installed")
def test_the_perceptual_gpu_script_trains_a_decoder_the_default_serves(
    data_dir: Path, tmp_path: Path  # noqa: F811
) -> None:
    """scripts/train_perceptual_gpu.sh (issue 14's GPU stage), two steps on the CPU with the
    critic from step 1: its decoder file is bound to the default model and decodes its tokens."""
    run = tmp_path / "perceptual"
    env = {"STEPS": "2", "CROP": "32", "BATCH": "2", "DISC_START": "1", "DATA": str(data_dir),
           "RUN": str(run)}  # fmt: skip
    r = _script("train_perceptual_gpu.sh", env)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = (run / "metrics.csv").read_text().splitlines()
    head = rows[0].split(",")
    train = [dict(zip(head, row.split(","), strict=True)) for row in rows
             if row.startswith("train")]  # fmt: skip
    assert [row["step"] for row in train] == ["2"] and train[0]["gan_d"] != ""  # critic on
    weights = tmp_path / "weights"
    weights.mkdir()
    shutil.copy(REPO / "weights" / "default.safetensors", weights / "default.safetensors")
    shutil.copy(run / "default.decoder-perceptual.safetensors",
                weights / "default.decoder-perceptual.safetensors")  # fmt: skip
    model = gqtok.load_model(weights / "default.safetensors")
    assert "perceptual" in model.decoders
    photo = np.asarray(Image.open(DATA / "photo_a.jpg").convert("RGB"))[:64, :96]
    tokens = gqtok.encode(model, photo)
    a = gqtok.decode_array(model, tokens)
    b = gqtok.decode_array(model, tokens, decoder="perceptual")
    assert a.shape == b.shape == (64, 96, 3) and not np.array_equal(a, b)


@pytest.mark.skipif(not HAS_STLPIPS, reason="ST-LPIPS weights not installed")
def test_the_carried_stlpips_weights_are_found_without_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """scripts/gpu_carry.py lays the AlexNet file out so that a Python without the
    stlpips-pytorch wheel (the GPU machine) finds it on PYTHONPATH, hash-checked."""
    from gqtok.nets import stlpips

    dst = _load("scripts", "gpu_carry").main(["--out", str(tmp_path / "carry")])
    assert dst.stat().st_size < 16 << 20  # the whole wheel would not fit the 64 MiB carry
    installed = Path(next(iter(importlib.util.find_spec(stlpips.PACKAGE)
                               .submodule_search_locations)))  # fmt: skip
    # this process as the GPU machine sees it: the package's folder gone from the path
    monkeypatch.setattr(sys, "path", [str(tmp_path / "carry")] + [
        p for p in sys.path if not (Path(p) / installed.name).exists()])  # fmt: skip
    sys.path_importer_cache.clear()
    assert stlpips.weights_file("alex") == dst
    net = stlpips.STLPIPS("alex", weights=stlpips.weights_file("alex"))  # sha256 checked
    x = torch.zeros(1, 3, 32, 32)
    assert float(net(x, x)) == 0.0


@pytest.mark.skipif(not HAS_STLPIPS, reason="ST-LPIPS weights not installed")
def test_the_gpu_training_session_runs_every_stage_and_returns_its_products(
    data_dir: Path, tmp_path: Path  # noqa: F811
) -> None:
    """scripts/gpu_train_session.sh, the one device command for issues 14 and 15, as a dry run
    (two steps a stage on the CPU): the perceptual decoder at three blends and both family
    members come back in $OUT, within what the device tool returns (8 files of 16 MiB, plain
    names), the logs and metrics packed in one archive."""
    out = tmp_path / "out"
    env = {"OUT": str(out), "STEPS": "2", "CROP": "32", "BATCH": "2", "DISC_START": "1",
           "DATA": str(data_dir), "PERCEPTUAL_RUN": str(tmp_path / "perceptual"),
           "FAMILY_RUNS": str(tmp_path), "WORK": str(tmp_path / "work")}  # fmt: skip
    r = _script("gpu_train_session.sh", env)
    assert r.returncode == 0, r.stdout + r.stderr + (out / "session.log").read_text()
    files = sorted(p.name for p in out.iterdir())
    assert files == ["family-g4.safetensors", "family-g8.safetensors",
                     "perceptual-b0.5.safetensors", "perceptual-b0.7.safetensors",
                     "perceptual-b1.0.safetensors", "records.tar.gz", "session.log"]  # fmt: skip
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", n) for n in files)
    assert all((out / n).stat().st_size < 16 << 20 for n in files)
    assert gqtok.load_model(out / "family-g4.safetensors").quant.dim == 4
    weights = tmp_path / "weights"  # a blend is a decoder the default serves
    weights.mkdir()
    shutil.copy(REPO / "weights" / "default.safetensors", weights / "default.safetensors")
    shutil.copy(out / "perceptual-b0.5.safetensors",
                weights / "default.decoder-perceptual.safetensors")  # fmt: skip
    assert "perceptual" in gqtok.load_model(weights / "default.safetensors").decoders
    with tarfile.open(out / "records.tar.gz") as tar:
        packed = {Path(n).name for n in tar.getnames()}
    assert {"perceptual.log", "perceptual.metrics.csv", "family-g8.log", "family-g4.metrics.csv",
            "family-g8.model.json"} <= packed  # fmt: skip
    log = (out / "session.log").read_text()
    assert "start: 2 steps a stage" in log and "family g4 done" in log
    r = _script("gpu_train_session.sh", {**env, "DATA": str(tmp_path / "none")})
    assert r.returncode == 2  # no photos: says so and stops before any stage
