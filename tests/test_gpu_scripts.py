"""The GPU scripts run on the CPU: bench/gpu_throughput.py --quick reports every row,
scripts/gpu_check.py --device cpu --quick (a dry run: CPU against CPU) passes, and the GPU
training scripts train, resume and export at a toy size, so a lent GPU's minutes go to
training, not to finding a broken script."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import gqtok
from tests.conftest import DATA, REPO
from tests.test_train import HAS_STLPIPS, data_dir  # noqa: F401 - a fixture


def _bench(name: str) -> Any:
    """bench/NAME.py as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
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
