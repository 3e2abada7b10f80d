"""The CLI as a user runs it: files, folders, pipes, JSON, exit codes, no lost data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from gqtok.cli.app import app
from tests.conftest import DATA, REPO

runner = CliRunner()


def gq(
    *args: str,
    input: bytes | None = None,  # noqa: A002
    env: dict[str, str] | None = None,
    text: bool = False,
) -> subprocess.CompletedProcess:
    """``python -m gqtok ARGS`` in the repository, with extra environment variables."""
    return subprocess.run(
        [sys.executable, "-m", "gqtok", *args],
        input=input,
        capture_output=True,
        cwd=REPO,
        timeout=300,
        env={**os.environ, **(env or {})},
        text=text,
    )


@pytest.fixture()
def photos(tmp_path: Path) -> Path:
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    shutil.copy(DATA / "photo_a.jpg", src / "a.jpg")
    shutil.copy(DATA / "photo_b.png", src / "sub" / "b.png")
    return src


def test_no_command_gives_one_flag_two_meanings(tmp_path: Path) -> None:
    """Each option name (long or short) of a command means one thing: ``encode -q 90`` once
    parsed as --quiet plus an input named 90."""
    from typer.main import get_command

    for name, command in get_command(app).commands.items():
        seen: dict[str, str] = {}
        for param in command.params:
            for flag in (*param.opts, *param.secondary_opts):
                assert flag not in seen, f"gqtok {name}: {flag} is {seen[flag]} and {param.name}"
                seen[flag] = param.name or ""
    out = tmp_path / "a.gq"
    r = runner.invoke(app, ["encode", str(DATA / "photo_a.jpg"), "-o", str(out), "--quality",
                            "80", "-q"])  # fmt: skip
    assert r.exit_code == 0 and r.output == "" and out.is_file()  # -q: quiet, --quality: 80


def test_encode_decode_single_file_and_info(tmp_path: Path) -> None:
    img = tmp_path / "a.jpg"
    shutil.copy(DATA / "photo_a.jpg", img)
    r = runner.invoke(app, ["encode", str(img), "--json"])
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout.strip().splitlines()[-1])
    out = tmp_path / "a.gq"
    assert rec["output"] == str(out) and rec["bytes"] == out.stat().st_size
    assert rec["tokens"] == 40 * 27 and 0 < rec["bpp"] < 0.35
    r = runner.invoke(app, ["info", str(out), "--json"])
    assert r.exit_code == 0
    info = json.loads(r.stdout)
    assert info["width"] == 317 and info["height"] == 211 and info["version"] == 2
    assert info["entropy_kind"] == "context" and info["model_entropy"] == "context"
    assert info["header_bytes"] + info["token_bytes"] == info["bytes"]
    r = runner.invoke(app, ["decode", str(out)])
    assert r.exit_code == 0, r.output
    dec = Image.open(tmp_path / "a.png")
    assert dec.size == (317, 211) and dec.format == "PNG"
    r = runner.invoke(app, ["decode", str(out), "-o", str(tmp_path / "x.webp")])
    assert r.exit_code == 0 and Image.open(tmp_path / "x.webp").format == "WEBP"


def test_never_overwrites_without_flag(tmp_path: Path) -> None:
    img = tmp_path / "a.jpg"
    shutil.copy(DATA / "photo_a.jpg", img)
    assert runner.invoke(app, ["encode", str(img)]).exit_code == 0
    gqf = tmp_path / "a.gq"
    before = gqf.read_bytes()
    gqf.write_bytes(b"user data")
    r = runner.invoke(app, ["encode", str(img)])
    assert r.exit_code == 6 and "exists" in r.output
    assert gqf.read_bytes() == b"user data"
    assert runner.invoke(app, ["encode", str(img), "--overwrite"]).exit_code == 0
    assert gqf.read_bytes() == before
    r = runner.invoke(app, ["encode", str(img), "-o", str(img), "--overwrite"])
    assert r.exit_code == 6 and "input" in r.output
    assert img.read_bytes() == (DATA / "photo_a.jpg").read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_batch_folder_mirrors_structure_and_survives_a_corrupt_file(
    photos: Path, tmp_path: Path
) -> None:
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    out = tmp_path / "out"
    r = runner.invoke(
        app, ["encode", str(photos), "-r", "-o", str(out), "--json", "--batch-size", "2"]
    )
    assert r.exit_code == 1
    assert "broken.png" in r.output
    assert (out / "a.gq").exists() and (out / "sub" / "b.gq").exists()
    assert not (out / "broken.gq").exists()
    recs = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert len(recs) == 2
    (out / "junk.gq").write_bytes(b"GQTK\x01garbage")
    dec = tmp_path / "dec"
    r = runner.invoke(app, ["decode", str(out), "-r", "-o", str(dec)])
    assert r.exit_code == 1 and "junk.gq" in r.output
    assert Image.open(dec / "sub" / "b.png").size == Image.open(DATA / "photo_b.png").size
    assert Image.open(dec / "a.png").size == (317, 211)


def test_batch_decode_keeps_order_and_existing_outputs(photos: Path, tmp_path: Path) -> None:
    shutil.copy(DATA / "photo_b.png", photos / "c.png")
    gqs = tmp_path / "gq"
    assert runner.invoke(app, ["encode", str(photos), "-r", "-o", str(gqs)]).exit_code == 0
    dec = tmp_path / "dec"
    dec.mkdir()
    (dec / "a.png").write_bytes(b"keep me")  # exists: that file fails, the others decode
    r = runner.invoke(app, ["decode", str(gqs), "-r", "-o", str(dec), "--json"])
    assert r.exit_code == 1 and "a.png" in r.output and "exists" in r.output
    assert (dec / "a.png").read_bytes() == b"keep me"
    recs = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert [Path(x["output"]).name for x in recs] == ["c.png", "b.png"]
    for x in recs:
        with Image.open(x["output"]) as im:
            assert im.size == (x["width"], x["height"])
    assert not list(dec.rglob("*.tmp")) and not list(dec.rglob(".*"))


def test_pipes_stdin_to_stdout() -> None:
    png = (DATA / "photo_b.png").read_bytes()
    enc = gq("encode", "-", "-o", "-", input=png)
    assert enc.returncode == 0, enc.stderr.decode()
    assert enc.stdout[:4] == b"GQTK"
    dec = gq("decode", "-", "-o", "-", input=enc.stdout)
    assert dec.returncode == 0, dec.stderr.decode()
    img = Image.open(__import__("io").BytesIO(dec.stdout))
    assert img.size == Image.open(DATA / "photo_b.png").size
    assert dec.stderr == b""  # quiet in pipes


def test_exit_codes_for_bad_inputs(tmp_path: Path) -> None:
    r = gq("decode", str(tmp_path / "missing.gq"))
    assert r.returncode == 3 and b"missing.gq" in r.stderr
    assert len(r.stderr.decode().strip().splitlines()) == 1 and b"Traceback" not in r.stderr
    bad = tmp_path / "bad.gq"
    bad.write_bytes(b"GQTK" + os.urandom(100))
    r = gq("decode", str(bad))
    assert r.returncode == 4 and b"bad.gq" in r.stderr and b"Traceback" not in r.stderr
    notimg = tmp_path / "x.png"
    notimg.write_text("hello")
    r = gq("encode", str(notimg))
    assert r.returncode == 3 and b"x.png" in r.stderr
    r = gq("encode", str(DATA / "photo_a.jpg"), "--model", str(tmp_path / "nope.safetensors"))
    assert r.returncode == 5
    r = gq(
        "encode", str(DATA / "photo_a.jpg"), "--max-pixels", "1000", "-o", str(tmp_path / "o.gq")
    )
    assert r.returncode == 3 and b"1000" in r.stderr
    assert gq("encode", "--bogus").returncode == 2


def test_models_lists_default() -> None:
    r = runner.invoke(app, ["models", "--json"])
    assert r.exit_code == 0
    rows = json.loads(r.stdout)["models"]
    default = [m for m in rows if m["file"] == "default"]
    assert default and default[0]["available"] and default[0]["downsample"] == 8


def test_models_shows_the_measured_rate_of_a_model_with_a_fitted_context_model(
    tmp_path: Path,
) -> None:
    """The bpp column: held-out bits a token of the card's context fit per 8x8 block, close to
    what a real file of a photo costs; the nominal log2 K figure for a model without a fit."""
    from gqtok.format.card import read_card

    rows = {m["file"]: m for m in json.loads(runner.invoke(app, ["models", "--json"]).stdout)
            ["models"]}
    card = read_card(REPO / "weights" / "default.safetensors")
    fitted = card["entropy"]["context"]["fitted"]
    row = rows["default"]
    assert row["bpp_heldout"] == round(fitted["val_context_bits"] / 64, 4)
    assert row["heldout_photos"] == fitted["val_photos"] >= 20
    assert row["bpp_heldout"] < row["bpp_nominal"] == 0.25
    assert rows["gqtok-f8c16-cpu-v1"]["bpp_heldout"] is None  # static table, no context fit
    out = tmp_path / "s.gq"
    r = runner.invoke(app, ["encode", str(REPO / "examples" / "sample.jpg"), "-o", str(out)])
    assert r.exit_code == 0, r.output
    bpp = out.stat().st_size * 8 / (768 * 512)
    assert abs(bpp - row["bpp_heldout"]) < 0.15 * row["bpp_heldout"]
    table = runner.invoke(app, ["models"], env={"COLUMNS": "80"}).output
    line = next(ln for ln in table.splitlines() if "gqtok-f8c16-cpu-v3 " in ln)
    assert f"{row['bpp_heldout']:.3f}" in line
    assert "measured on held-out photos" in table


def test_decoded_pixels_match_api(tmp_path: Path) -> None:
    from gqtok import load_model
    from gqtok.codec import decode_bytes

    img = tmp_path / "b.png"
    shutil.copy(DATA / "photo_b.png", img)
    assert runner.invoke(app, ["encode", str(img), "-o", str(tmp_path / "b.gq")]).exit_code == 0
    assert (
        runner.invoke(
            app, ["decode", str(tmp_path / "b.gq"), "-o", str(tmp_path / "c.png")]
        ).exit_code
        == 0
    )
    api, _ = decode_bytes((tmp_path / "b.gq").read_bytes(), load_model())
    assert np.array_equal(np.asarray(api), np.asarray(Image.open(tmp_path / "c.png")))


def test_memory_budget_option_tiles_and_keeps_the_file_format(tmp_path: Path) -> None:
    src = tmp_path / "a.jpg"
    shutil.copy(DATA / "photo_a.jpg", src)  # 317x211: a whole-image pass needs ~440 MB
    whole, tiled = tmp_path / "whole.gq", tmp_path / "tiled.gq"
    assert runner.invoke(app, ["encode", str(src), "-o", str(whole), "-q"]).exit_code == 0
    r = runner.invoke(app, ["encode", str(src), "-o", str(tiled), "-q", "--memory-budget", "430MB"])
    assert r.exit_code == 0, r.output
    # Same header fields (model, codebook, grid); tokens may differ slightly where windows meet.
    keys = ("model_id", "weights_hash", "codebook_fingerprint", "width", "height", "grid_h")
    infos = [
        json.loads(runner.invoke(app, ["info", str(f), "--json"]).stdout) for f in (whole, tiled)
    ]
    assert [{k: i[k] for k in keys} for i in infos] == [{k: infos[0][k] for k in keys}] * 2
    out = tmp_path / "t.png"
    r = runner.invoke(app, ["decode", str(tiled), "-o", str(out), "--memory-budget", "430MB"])
    assert r.exit_code == 0, r.output
    a = np.asarray(Image.open(src).convert("RGB"), dtype=np.float64)
    b = np.asarray(Image.open(out).convert("RGB"), dtype=np.float64)
    assert a.shape == b.shape
    assert 10 * np.log10(255**2 / ((a - b) ** 2).mean()) > 20
    bad_args = ["encode", str(src), "-o", str(tmp_path / "x.gq"), "--memory-budget", "lots"]
    bad = runner.invoke(app, bad_args)
    assert bad.exit_code == 2
