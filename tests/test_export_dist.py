"""gqtok export over several processes: torchrun's ranks and a job array's write exactly the
shards one process writes, byte for byte, and one manifest once every shard is there; a rank
that dies leaves its shards missing, a re-run of it resumes, --merge says whose shard is
missing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gqtok import export as ex
from gqtok.cli.app import app
from gqtok.dist import World
from gqtok.errors import InputError, OutputError
from tests.conftest import DATA, REPO

runner = CliRunner()
OPTS = {"resize": 32, "center_crop": 32}
CLI_OPTS = ["--resize", "32", "--center-crop", "32"]


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five files, one not an image; sorted: a.jpg b.png broken.jpg c.jpg sample.jpg."""
    root = tmp_path_factory.mktemp("src")
    shutil.copy(DATA / "photo_a.jpg", root / "a.jpg")
    shutil.copy(DATA / "photo_b.png", root / "b.png")
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    shutil.copy(DATA / "photo_c.jpg", root / "c.jpg")
    shutil.copy(REPO / "examples" / "sample.jpg", root / "sample.jpg")
    return root


@pytest.fixture(scope="module")
def reference(model, src, tmp_path_factory) -> Callable[[int], Path]:  # noqa: ANN001
    """The one-process export of ``src`` for a shard size (made once per size)."""
    made: dict[int, Path] = {}

    def get(shard_size: int) -> Path:
        if shard_size not in made:
            out = tmp_path_factory.mktemp("reference") / "tokens"
            ex.export_tokens(model, src, out, shard_size=shard_size, workers=0, **OPTS)
            made[shard_size] = out
        return made[shard_size]

    return get


def assert_same_export(got: Path, want: Path, world_size: int) -> None:
    """Token for token, shard file for shard file, the same export (and nothing else left)."""
    def entries(folder: Path) -> list[tuple]:
        return [(e.index, e.path, e.tokens.tolist(), e.width, e.height)
                for e in ex.iter_entries(folder)]  # fmt: skip

    assert entries(got) == entries(want)
    names = sorted(p.name for p in want.iterdir())
    assert sorted(p.name for p in got.iterdir()) == names  # no rank file, no temp file left
    for name in names:
        if name.startswith("shard-"):
            assert (got / name).read_bytes() == (want / name).read_bytes(), name
    manifest = ex.read_manifest(got)
    assert manifest.pop("world_size") == world_size
    assert manifest == ex.read_manifest(want)


def one_line_error(text: str) -> str:
    assert text.count("\n") == 1 and text.startswith("error: "), text
    return text.strip()


def test_torchrun_two_ranks_write_what_one_process_writes(reference, src, tmp_path) -> None:  # noqa: ANN001
    out = tmp_path / "tokens"
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(PYTHONPATH=str(REPO), GQTOK_DIST_TIMEOUT="120")
    args = ["export", str(src), "-o", str(out), *CLI_OPTS, "--shard-size", "2", "--json"]
    run = subprocess.run(
        [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "gqtok", *args],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300,
    )  # fmt: skip
    # rank 0 exits 1 (an image was skipped), which torchrun reports as its own failure
    assert run.returncode == 1, run.stderr
    (line,) = run.stdout.strip().splitlines()  # one summary, from rank 0, with the job's totals
    summary = json.loads(line)
    assert (summary["images"], summary["skipped"], summary["world_size"]) == (4, 1, 2)
    assert (summary["shards_written"], summary["shards_kept"]) == (3, 0)
    assert run.stderr.count("error: broken.jpg:") == 1  # rank 1's skipped image, told once
    assert_same_export(out, reference(2), world_size=2)


def test_job_array_ranks_then_merge(reference, src, tmp_path) -> None:  # noqa: ANN001
    out = tmp_path / "tokens"
    args = ["export", str(src), "-o", str(out), *CLI_OPTS, "--shard-size", "2", "--world-size", "2"]

    def rank(r: int, *more: str):  # noqa: ANN202
        return runner.invoke(app, [*args, "--rank", str(r), *more])

    res = rank(0, "--json")  # shards 0 and 2
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["rank"] == 0 and summary["manifest"] is False and summary["missing"] == [1]
    assert not (out / "manifest.json").exists()
    progress = ex.read_manifest(out, ex.rank_file(0, 2))
    assert [s["file"] for s in progress["shards"]] == [ex.shard_name(0), ex.shard_name(2)]
    assert progress["complete"] is True and progress["rank"] == 0
    res = runner.invoke(app, ["export", "--merge", str(out)])
    assert res.exit_code == 3
    assert one_line_error(res.stderr) == (
        f"error: {out}: shard 1 (rank 1 of 2) missing: rerun that rank"
    )
    assert not (out / "manifest.json").exists()
    res = rank(1)  # shard 1: broken.jpg is skipped (exit 1), and now every shard is there
    assert res.exit_code == 1, res.output
    assert res.stderr.count("error: broken.jpg:") == 1
    assert "rank 1 of 2: exported 1 image(s)" in res.stderr
    assert "manifest.json written" in res.stderr
    assert_same_export(out, reference(2), world_size=2)
    # --merge checks again and writes the same manifest; a damaged shard is named with its rank
    res = runner.invoke(app, ["export", "--merge", str(out), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["images"] == 4
    assert_same_export(out, reference(2), world_size=2)
    shard = out / ex.shard_name(2)
    shard.write_bytes(shard.read_bytes()[:-5])
    res = runner.invoke(app, ["export", "--merge", str(out)])
    assert res.exit_code == 3
    assert one_line_error(res.stderr).endswith(
        "shard 2 (rank 0 of 2) damaged or of other settings: rerun that rank"
    )


def test_a_killed_rank_resumes_its_own_shards(model, reference, src, tmp_path, monkeypatch) -> None:  # noqa: ANN001, E501
    """Rank 1 of 2 with one image per shard (its shards: 1 and 3) is killed while writing
    shard 3; the re-run keeps shard 1, writes shard 3, and removes its own temp files only."""
    out = tmp_path / "tokens"
    opts = {"shard_size": 1, "workers": 0, **OPTS}
    real_write = ex._Exporter.write_shard

    def killed(self, k, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        if k == 3:
            raise KeyboardInterrupt  # the job scheduler kills the rank mid-way
        return real_write(self, k, *a, **kw)

    monkeypatch.setattr(ex._Exporter, "write_shard", killed)
    with pytest.raises(KeyboardInterrupt):
        ex.export_tokens(model, src, out, world=World.array(1, 2), **opts)
    monkeypatch.setattr(ex._Exporter, "write_shard", real_write)
    assert sorted(p.name for p in out.glob("shard-*")) == [ex.shard_name(1)]
    assert ex.read_manifest(out, ex.rank_file(1, 2))["complete"] is False
    kept = (out / ex.shard_name(1)).stat().st_mtime_ns
    # what killed writers leave: rank 1's temp, rank 0's (being written now), a manifest's
    for name in (".shard-00003.safetensors.dead.tmp", ".shard-00002.safetensors.live.tmp",
                 ".manifest.json.live.tmp", ".rank-1-of-2.json.dead.tmp"):  # fmt: skip
        (out / name).write_bytes(b"partial")
    res = ex.export_tokens(model, src, out, world=World.array(1, 2), **opts)
    assert (res.shards_kept, res.shards_written, res.images, res.skipped) == (1, 1, 2, [])
    assert (res.manifest, res.missing) == (False, [0, 2, 4])
    assert (out / ex.shard_name(1)).stat().st_mtime_ns == kept
    temps = sorted(p.name for p in out.glob(".*.tmp"))
    assert temps == [".manifest.json.live.tmp", ".shard-00002.safetensors.live.tmp"]
    # rank 0 with other settings is refused: the folder holds rank 1's export
    with pytest.raises(OutputError, match="other settings"):
        ex.export_tokens(model, src, out, world=World.array(0, 2), shard_size=1, resize=48)
    res = ex.export_tokens(model, src, out, world=World.array(0, 2), **opts)
    assert (res.shards_written, res.images, res.manifest, res.missing) == (3, 2, True, [])
    assert [path for path, _ in res.skipped] == ["broken.jpg"]  # shard 2 is rank 0's
    assert [p.name for p in out.glob(".*.tmp")] == [".manifest.json.live.tmp"]  # rank 0's gone
    merged = ex.merge_export(out)  # one process again: the stale manifest temp goes too
    assert (merged.images, merged.shards_kept, len(merged.skipped)) == (4, 5, 1)
    assert_same_export(out, reference(1), world_size=2)


def test_merge_of_a_folder_without_an_export(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(InputError, match="no such export folder"):
        ex.merge_export(tmp_path / "nothing")
    with pytest.raises(InputError, match="not a gqtok export"):
        ex.merge_export(tmp_path)


@pytest.mark.parametrize(
    ("more", "env", "message"),
    [
        (["--rank", "1"], {}, "--rank and --world-size go together"),
        (["--world-size", "2"], {}, "--rank and --world-size go together"),
        (["--rank", "2", "--world-size", "2"], {}, "--rank 2 must lie in 0..1 (--world-size 2)"),
        (["--rank", "-1", "--world-size", "2"], {}, "--rank -1 must lie in 0..1"),
        (["--rank", "0", "--world-size", "0"], {}, "--world-size must be at least 1"),
        (["--rank", "0", "--world-size", "2"], {"WORLD_SIZE": "2", "RANK": "1"},
         "--rank/--world-size are for job arrays; under torchrun (WORLD_SIZE=2)"),
        (["--merge", "X"], {}, "--merge DIR takes no SOURCE, -o, --rank or --world-size"),
        (["--rank", "0"], {"WORLD_SIZE": "two"}, "RANK, WORLD_SIZE and LOCAL_RANK must be"),
    ],
)  # fmt: skip
def test_option_errors_are_one_line_usage_errors(
    more: list[str], env: dict[str, str], message: str, src: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "tokens"
    res = runner.invoke(app, ["export", str(src), "-o", str(out), *more])
    assert res.exit_code == 2, res.output
    assert one_line_error(res.stderr).startswith(f"error: {message}")
    assert not out.exists()  # refused before the model is loaded or anything is written


def test_source_and_output_are_needed_without_merge(tmp_path: Path) -> None:
    for args in (["export", "-o", str(tmp_path / "t")], ["export", str(tmp_path)]):
        res = runner.invoke(app, args)
        assert res.exit_code == 2
        assert one_line_error(res.stderr) == "error: give SOURCE and -o/--output (or --merge DIR)"
    res = runner.invoke(app, ["export", "--merge", str(tmp_path)], env={"WORLD_SIZE": "2"})
    assert res.exit_code == 2
    assert one_line_error(res.stderr) == "error: --merge runs in one process, not under torchrun"
