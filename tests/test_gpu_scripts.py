"""The GPU scripts run on the CPU: bench/gpu_throughput.py --quick reports every row, and
scripts/gpu_check.py --device cpu --quick (a dry run: CPU against CPU) passes."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO


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
