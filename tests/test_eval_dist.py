"""gqtok eval over several processes: the shares of any split combine into the one-process
report, and a real 2-rank torchrun run writes the same JSON and CSV as one process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

import gqtok
from gqtok.dist import World
from gqtok.eval.evaluate import check_metrics, combine, evaluate, measure
from gqtok.eval.metrics import inception

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"
PHOTOS = [DATA / "photo_a.jpg", DATA / "photo_b.png", DATA / "photo_c.jpg",
          DATA / "golden_b_v3.png", REPO / "examples" / "sample.jpg"]  # fmt: skip
TORCHRUN = Path(sys.executable).parent / "torchrun"
INCEPTION = inception.available()  # None: the FID network is installed here


def _broken(path: Path) -> Path:
    path.write_bytes((DATA / "photo_a.jpg").read_bytes()[:400])
    return path


@pytest.fixture()
def one_thread() -> Iterator[None]:
    """Two torch threads beside other jobs on two cores made this test 10x slower (36 s)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("one_thread")
def test_shares_of_any_split_combine_to_the_one_process_report(
    model: gqtok.Model, tmp_path: Path
) -> None:
    paths: list[str | Path] = []
    for i, (src, box) in enumerate([(PHOTOS[0], (0, 0, 64, 48)), (PHOTOS[2], (64, 32, 160, 128)),
                                    (PHOTOS[4], (300, 200, 380, 264)),
                                    (PHOTOS[1], (0, 0, 96, 96))]):  # fmt: skip
        with Image.open(src) as im:
            im.convert("RGB").crop(box).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    paths.insert(1, _broken(tmp_path / "broken.jpg"))
    wanted = check_metrics(["psnr", "msssim"] + (["fid", "kid"] if INCEPTION is None else []))
    whole = evaluate(model, paths, wanted)
    items = list(enumerate(paths))
    shares = [measure(model, World.array(r, 2).part(items), wanted) for r in (1, 0)]
    assert [m.index for m in shares[0].images] == [1, 3]
    split = combine(model, wanted, shares)  # rank 1's share first: put back in source order
    assert split.to_dict() == whole.to_dict()
    assert [r.path for r in split.rows] == [str(p) for i, p in enumerate(paths) if i != 1]
    assert split.failures[0][0] == str(paths[1])
    if INCEPTION is None:
        assert split.feature_images == 4 and split.fid is not None and split.kid is not None
    # a metric one process could not load is unavailable for the whole set, never a subset
    shares[0].unavailable["psnr"] = "not available offline (test)"
    partial = combine(model, wanted, shares)
    assert partial.summary["psnr"].n == 0 and all(r.psnr is None for r in partial.rows)


def _run(cmd: list[str], timeout: float) -> tuple[subprocess.CompletedProcess[str], float]:
    # one thread per process, as torchrun sets on CPUs: network sums depend on the thread count
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    return res, time.perf_counter() - t0


@pytest.mark.skipif(not TORCHRUN.is_file(), reason=f"no torchrun beside {sys.executable}")
def test_torchrun_two_ranks_give_the_one_process_report(tmp_path: Path) -> None:
    """The paper's protocol on 5 photos and 2 broken files, all metrics (those whose weights
    are missing here are unavailable in both): same JSON and CSV, the table once, each failure
    line once (a_broken on rank 0, q_broken on rank 1), exit 1; and a refused --json stops
    every rank before any work."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for src in PHOTOS:
        shutil.copy(src, photos / src.name)
    for name in ("a_broken.jpg", "q_broken.jpg"):
        _broken(photos / name)
    args = ["-m", "gqtok", "eval", str(photos), "--resize", "256", "--center-crop", "256"]
    outs = {n: (tmp_path / f"{n}.json", tmp_path / f"{n}.csv") for n in ("one", "two")}
    launch = [str(TORCHRUN), "--standalone", "--nproc-per-node", "2"]
    one, t_one = _run([sys.executable, *args, "--json", str(outs["one"][0]), "--per-image",
                       str(outs["one"][1])], 600)  # fmt: skip
    two, t_two = _run([*launch, *args, "--json", str(outs["two"][0]), "--per-image",
                       str(outs["two"][1])], 600)  # fmt: skip
    print(f"1 process {t_one:.1f} s, 2 ranks {t_two:.1f} s")
    assert one.returncode == 1, one.stderr
    assert two.returncode == 1, two.stderr  # rank 0's exit code 1: some images failed
    a, b = (json.loads(outs[n][0].read_text()) for n in ("one", "two"))
    assert a == b
    assert outs["one"][1].read_text() == outs["two"][1].read_text()
    assert a["images"] == 5 and [Path(f["path"]).name for f in a["failed"]] == [
        "a_broken.jpg", "q_broken.jpg"]  # fmt: skip
    assert [Path(r["path"]).name for r in a["per_image"]] == sorted(p.name for p in PHOTOS)
    if INCEPTION is None:
        assert a["fid"] is not None and a["kid"] is not None and a["fid_kid_images"] == 5
        assert a["patch_fid_patches"] == 5 and a["patch_kid"] is not None
    assert two.stdout.count("gqtok eval:") == 1 and two.stdout == one.stdout
    for name in ("a_broken.jpg", "q_broken.jpg"):
        assert sum(name in line for line in two.stderr.splitlines()) == 1, two.stderr
    assert two.stderr.count("2 of 7 image(s) failed") == 1

    refused, _ = _run([*launch, *args, "--json", str(outs["two"][0])], 300)
    assert refused.returncode != 0
    assert refused.stderr.count("exists (use --overwrite)") == 1, refused.stderr
    assert json.loads(outs["two"][0].read_text()) == b
