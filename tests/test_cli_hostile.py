"""Hostile input on the command line: crafted files, names with markup or control characters,
option values no file can hold, outputs that would clobber inputs, noisy libraries.

Each test reproduces one attack; the rule under test is: one line per failed file
(``error: <file>: <problem>``), the batch goes on, the documented exit code, no traceback.
"""

from __future__ import annotations

import dataclasses
import http.server
import io
import json
import os
import random
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from gqtok.cli.app import app
from gqtok.format import container
from tests import gqedit
from tests.conftest import DATA, REPO
from tests.test_cli import gq as run_gq

runner = CliRunner()


def gq(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return run_gq(*args, env=env, text=True)


def lines_naming(stderr: str, name: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if name in ln]


def craft(data: bytes, payload: bytes | None = None, **fields: object) -> bytes:
    """A .gq file with other header fields and/or token payload, CRC recomputed (so it passes
    the checksum and reaches the parser's and the codec's later checks)."""
    header, tokens, alpha = container.unpack(data)
    return container.pack(dataclasses.replace(header, **fields), payload or tokens, alpha)


# ------------------------------------------------------------------------------------------
# 4. one bad file must not stop a batch


def test_crafted_gq_in_a_folder_fails_alone(good_gq: bytes, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.gq").write_bytes(good_gq)
    (src / "f.gq").write_bytes(good_gq)
    _, tokens, _ = container.unpack(good_gq)
    garbage = random.Random(0).randbytes(len(tokens))
    bad = {
        "b_garbage.gq": craft(good_gq, payload=garbage),
        "c_truncated.gq": good_gq[: len(good_gq) // 2],
        "d_codebook.gq": craft(good_gq, size=2**25),  # codebook sizes no model has
        "e_model.gq": craft(good_gq, model_id="nobody"),
    }
    for name, data in bad.items():
        (src / name).write_bytes(data)
    out = tmp_path / "out"
    r = gq("decode", str(src), "-o", str(out))
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "f.png"]
    for name in bad:
        found = lines_naming(r.stderr, name)
        assert len(found) == 1 and found[0].startswith("error: "), r.stderr
    assert r.stderr.splitlines()[-1] == "4 of 6 file(s) failed"
    with Image.open(out / "a.png") as im:
        assert im.size == Image.open(DATA / "photo_b.png").size


def test_library_exceptions_of_any_type_are_one_line_per_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Read, network and write steps raising what libraries raise (not GqtokError)."""
    import gqtok.codec
    import gqtok.io.images

    src = tmp_path / "in"
    src.mkdir()
    for name in ("a", "b", "c"):
        shutil.copy(DATA / "photo_b.png", src / f"{name}.png")
    shutil.copy(DATA / "photo_a.jpg", src / "d.jpg")
    real_read, real_encode = gqtok.io.images.read_image, gqtok.codec.encode_pictures

    def read(source, *a, name=None, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        if name and name.endswith("b.png"):
            raise ZeroDivisionError("division by zero")
        return real_read(source, *a, name=name, **kw)

    def encode(model, pics, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        if any(p.width == 317 for p in pics):  # d.jpg fails the network, in or out of a batch
            raise RuntimeError("CUDA error: an illegal memory access\nsecond line")
        return real_encode(model, pics, *a, **kw)

    monkeypatch.setattr(gqtok.io.images, "read_image", read)
    monkeypatch.setattr(gqtok.codec, "encode_pictures", encode)
    out = tmp_path / "gq"
    r = runner.invoke(app, ["encode", str(src), "-o", str(out), "--batch-size", "4"])
    assert r.exit_code == 1, r.output
    assert sorted(p.name for p in out.iterdir()) == ["a.gq", "c.gq"]  # c shared d's batch
    assert lines_naming(r.stderr, "b.png") == [
        f"error: {src / 'b.png'}: cannot read (ZeroDivisionError: division by zero)"
    ]
    assert lines_naming(r.stderr, "d.jpg") == [
        f"error: {src / 'd.jpg'}: cannot encode (RuntimeError: CUDA error: an illegal memory"
        " access)"
    ]
    real_decode, real_save = gqtok.codec.read_token_file, gqtok.io.images.encode_image_bytes
    (out / "x.gq").write_bytes((out / "a.gq").read_bytes())

    def decode(data, model, name=None, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        if name and name.endswith("a.gq"):
            raise MemoryError()
        return real_decode(data, model, name, *a, **kw)

    def save(image, fmt, quality=None):  # noqa: ANN001, ANN202
        if quality == 77:
            raise ValueError("encoder error -2")
        return real_save(image, fmt, quality)

    monkeypatch.setattr(gqtok.codec, "read_token_file", decode)  # decode's first half
    monkeypatch.setattr(gqtok.io.images, "encode_image_bytes", save)
    dec = tmp_path / "dec"
    r = runner.invoke(app, ["decode", str(out), "-o", str(dec)])
    assert r.exit_code == 1, r.output
    assert sorted(p.name for p in dec.iterdir()) == ["c.png", "x.png"]
    assert lines_naming(r.stderr, "a.gq") == [
        f"error: {out / 'a.gq'}: cannot decode (out of memory)"
    ]
    r = runner.invoke(app, ["decode", str(out / "c.gq"), "-o", str(dec / "q.jpg"),
                            "--quality", "77"])  # fmt: skip
    assert r.exit_code == 6 and not (dec / "q.jpg").exists()
    assert r.stderr == f"error: {dec / 'q.jpg'}: cannot write (ValueError: encoder error -2)\n"


def test_import_goes_on_after_a_damaged_shard(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(DATA / "photo_b.png", src / "a.png")
    shutil.copy(DATA / "photo_c.jpg", src / "b.jpg")
    tokens = tmp_path / "tokens"
    args = ["export", str(src), "-o", str(tokens), "--resize", "32", "--center-crop", "32"]
    assert runner.invoke(app, [*args, "--shard-size", "1", "-q"]).exit_code == 0
    shard = tokens / "shard-00000.safetensors"
    shard.write_bytes(shard.read_bytes()[:100])
    out = tmp_path / "out"
    r = runner.invoke(app, ["import", str(tokens), "-o", str(out)])
    assert r.exit_code == 1, r.output
    assert [p.name for p in out.iterdir()] == ["000001_b.png"]
    assert len(lines_naming(r.stderr, "shard-00000")) == 1 and "Traceback" not in r.output


# ------------------------------------------------------------------------------------------
# 5. markup and control characters in names from files and paths


def test_markup_and_control_characters_in_a_model_id(good_gq: bytes, tmp_path: Path) -> None:
    """Markup in a model id is shown as text; control characters (a newline, ANSI escapes)
    make the header invalid (docs/format.md), refused in one line that does not echo them."""
    (tmp_path / "markup.gq").write_bytes(craft(good_gq, model_id="[/]"))
    (tmp_path / "ansi.gq").write_bytes(gqedit.edit(good_gq, model_id="x\n\x1b[31mred[bold]"))
    r = gq("info", str(tmp_path / "markup.gq"))
    assert r.returncode == 0, r.stderr
    assert "model_id              [/]" in r.stdout
    r = gq("info", str(tmp_path / "ansi.gq"))
    assert r.returncode == 4 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "\x1b" not in r.stderr and "control character" in r.stderr
    r = gq("decode", str(tmp_path), "-o", str(tmp_path / "out"))
    assert r.returncode == 1 and "\x1b" not in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.splitlines()) == 3  # one line each, then the count


def test_markup_in_folder_and_file_names(tmp_path: Path) -> None:
    empty = tmp_path / "emp[" / "]"  # the folder emp[/] of the report
    empty.mkdir(parents=True)
    r = gq("encode", str(empty))
    assert r.returncode == 0
    assert r.stderr == f"warning: {tmp_path}/emp[/]: no matching files (try --recursive)\n"
    odd = tmp_path / "x[" / "]y[bold]"
    odd.mkdir(parents=True)
    (odd / "bad\x1b[31m[red].png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    shutil.copy(DATA / "photo_b.png", odd / "ok.png")
    r = gq("encode", str(odd))
    assert r.returncode == 1 and "Traceback" not in r.stderr and "\x1b" not in r.stderr
    assert r.stderr.splitlines()[0].startswith(f"error: {odd}/bad\\x1b[31m[red].png: ")
    assert r.stderr.splitlines()[1].startswith("encoded 1 file(s): ")
    assert r.stderr.splitlines()[2:] == ["1 of 2 file(s) failed"]
    assert (odd / "ok.gq").exists()


def test_markup_and_escapes_in_a_local_model_card(tmp_path: Path) -> None:
    """A card name with markup is listed as text; one with control characters is not a valid
    card: the file is skipped with one warning line that does not echo them."""
    card = json.loads((REPO / "weights" / "default.json").read_text())
    for file, name in (("markup", "ev[/]il[bold]"), ("evil", "ev[/]il\n\x1b[31mred")):
        header = json.dumps({"__metadata__": {"gqtok.card": json.dumps({**card, "name": name})}})
        raw = header.encode()
        (tmp_path / f"{file}.safetensors").write_bytes(len(raw).to_bytes(8, "little") + raw)
    r = gq("models", env={"GQTOK_WEIGHTS": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stdout + r.stderr and "ev[/]il[bold]" in r.stdout
    assert r.stderr.startswith(f"warning: skipped {tmp_path / 'evil.safetensors'}: ")
    assert r.stderr.count("\n") == 1 and "control character" in r.stderr
    r = gq("models", "--json", env={"GQTOK_WEIGHTS": str(tmp_path)})
    names = [m["name"] for m in json.loads(r.stdout)["models"]]
    assert "ev[/]il[bold]" in names and not any("red" in n for n in names)


# ------------------------------------------------------------------------------------------
# 8. outputs: never an input, never an existing file without --overwrite, atomic


def test_import_refuses_to_replace_its_input(model, tmp_path: Path) -> None:  # noqa: ANN001
    from gqtok.codec import encode_arrays
    from gqtok.io.images import read_image

    tok = encode_arrays(model, [read_image(DATA / "photo_b.png").rgb])[0]
    grid = tmp_path / "x.npy"
    np.save(grid, tok.indices.numpy().astype(np.uint16))
    before = grid.read_bytes()
    os.link(grid, tmp_path / "link.npy")
    for dst in ("x.npy", "link.npy"):
        r = runner.invoke(app, ["import", str(grid), "-o", str(tmp_path / dst), "--overwrite"])
        assert r.exit_code == 6 and "would overwrite the input" in r.stderr, r.output
    assert grid.read_bytes() == before
    r = runner.invoke(app, ["import", str(grid), "-o", str(tmp_path / "x.png")])
    assert r.exit_code == 0 and (tmp_path / "x.png").exists()
    assert runner.invoke(app, ["import", str(grid), "-o", str(tmp_path / "x.png")]).exit_code == 6


def test_eval_reports_follow_the_output_rules(tmp_path: Path) -> None:
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    shutil.copy(DATA / "photo_b.png", imgs / "b.png")
    original = (imgs / "b.png").read_bytes()
    kept = tmp_path / "kept.json"
    kept.write_text("user data")
    base = ["eval", str(imgs), "--metrics", "psnr", "-q"]
    r = runner.invoke(app, [*base, "--json", str(kept)])
    assert r.exit_code == 6 and "exists (use --overwrite)" in r.stderr
    r = runner.invoke(app, [*base, "--per-image", str(imgs / "b.png"), "--overwrite"])
    assert r.exit_code == 6 and "would overwrite the input" in r.stderr
    assert kept.read_text() == "user data" and (imgs / "b.png").read_bytes() == original
    r = runner.invoke(app, [*base, "--json", str(kept), "--per-image", str(tmp_path / "r.csv"),
                            "--overwrite"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert json.loads(kept.read_text())["images"] == 1
    assert (tmp_path / "r.csv").read_text().startswith("path,")
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def _writable(folder: str) -> bool:
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


@pytest.mark.skipif(_writable("/sys"), reason="needs a folder even root cannot write in (sysfs)")
def test_compare_and_eval_into_an_unwritable_folder_fail_up_front() -> None:
    img = str(DATA / "photo_b.png")
    r = gq("compare", img, "--out", "/sys", "--bpp", "1", "--codecs", "jpeg")
    assert r.returncode == 6 and "Traceback" not in r.stderr
    assert r.stderr == "error: /sys/rd_points.csv: cannot write in '/sys' (Permission denied)\n"
    r = gq("eval", img, "--json", "/sys/eval.json")
    assert r.returncode == 6 and r.stderr.startswith("error: /sys/eval.json: cannot write")


def test_compare_refuses_existing_reports(tmp_path: Path) -> None:
    out = tmp_path / "rd"
    out.mkdir()
    (out / "rd.json").write_text("earlier run")
    args = ["compare", str(DATA / "photo_b.png"), "--out", str(out), "--bpp", "1"]
    r = runner.invoke(app, args)
    assert r.exit_code == 6 and "rd.json: exists (use --overwrite)" in r.stderr
    assert (out / "rd.json").read_text() == "earlier run"


# ------------------------------------------------------------------------------------------
# 10. option values are checked while parsing (exit 2), before any work


@pytest.mark.parametrize(
    "extra",
    [
        ["--seed", "-1"],
        ["--seed", str(2**70)],
        ["--codebook-size", "99999999999"],
        ["--codebook-size", "1"],
        ["--group", "0"],
        ["--group", "3"],  # does not divide the default model's 16 latent channels
        ["--group", "100000"],
        ["--beta", "nan"],
        ["--beta", "inf"],
        ["--beta", "-0.5"],
        ["--beta", "1e39"],  # not a float32
        ["--threads", "0"],
        ["--threads", str(10**12)],
        ["--max-pixels", str(2**41)],
        ["--memory-budget", "0"],
        ["--memory-budget", "-1GB"],
        ["--batch-size", "0"],
    ],
)
def test_encode_rejects_impossible_option_values(extra: list[str], tmp_path: Path) -> None:
    out = tmp_path / "x.gq"
    r = runner.invoke(app, ["encode", str(DATA / "photo_b.png"), "-o", str(out), *extra])
    assert r.exit_code == 2, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)
    assert not out.exists()


@pytest.mark.parametrize(
    "args",
    [
        ["compare", str(DATA / "photo_b.png"), "--bpp", "nan"],
        ["compare", str(DATA / "photo_b.png"), "--bpp", "inf"],
        ["eval", str(DATA / "photo_b.png"), "--resize", "0"],
        ["eval", str(DATA / "photo_b.png"), "--center-crop", str(2**21)],
        ["decode", "x.gq", "--quality", "101"],
        ["import", "x.npy", "-o", "y.png", "--size", "0x5"],
        ["import", "x.npy", "-o", "y.png", "--index", "-1"],
        ["convert", "x.ckpt", "-o", "y.safetensors", "--seed", str(2**64)],
    ],
)
def test_other_commands_reject_impossible_option_values(args: list[str]) -> None:
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output


def test_largest_header_seed_round_trips(tmp_path: Path) -> None:
    gqf, png = tmp_path / "s.gq", tmp_path / "s.png"
    seed = str(2**64 - 1)
    r = runner.invoke(app, ["encode", str(DATA / "photo_b.png"), "-o", str(gqf), "--seed", seed])
    assert r.exit_code == 0, r.output
    assert runner.invoke(app, ["decode", str(gqf), "-o", str(png)]).exit_code == 0
    assert json.loads(runner.invoke(app, ["info", str(gqf), "--json"]).stdout)["seed"] == 2**64 - 1


# ------------------------------------------------------------------------------------------
# 12. one line per failure, naming the file; no library noise


def test_errors_raised_without_a_path_name_the_file(good_gq: bytes, tmp_path: Path) -> None:
    img = tmp_path / "b.png"
    shutil.copy(DATA / "photo_b.png", img)
    r = runner.invoke(app, ["encode", str(img), "--memory-budget", "1MB"])
    assert r.exit_code == 3
    assert r.stderr.startswith(f"error: {img}: a memory budget of 1 MB is too small")
    (tmp_path / "b.gq").write_bytes(good_gq)
    r = runner.invoke(app, ["decode", str(tmp_path / "b.gq"), "-o", "-", "--memory-budget", "1MB"])
    assert r.exit_code == 3 and r.stderr.startswith(f"error: {tmp_path / 'b.gq'}: a memory")
    (tmp_path / "src").mkdir()
    shutil.copy(DATA / "photo_b.png", tmp_path / "src" / "small.png")
    args = ["export", str(tmp_path / "src"), "-o", str(tmp_path / "t"), "--center-crop", "500"]
    r = runner.invoke(app, args)
    assert r.exit_code == 1
    assert lines_naming(r.stderr, "centre crop") == [
        "error: small.png: 150x97 is smaller than the 500 px centre crop"
    ]


def test_decompression_bomb_warning_does_not_leak(model, tmp_path: Path) -> None:  # noqa: ANN001
    """A 10000x10000 alpha plane (Pillow warns above 89 MP) in a 2 MB file."""
    import torch

    from gqtok.codec import Tokens
    from gqtok.codec.bytes import pack_tokens

    side = 10_000
    g = -(-side // model.downsample)
    common = int(model.entropy.probabilities.argmax())  # the cheapest token: a small payload
    grid = torch.full((model.groups, g, g), common, dtype=torch.int64)
    enc = pack_tokens(model, Tokens(grid, side, side))
    alpha = io.BytesIO()
    Image.new("L", (side, side), 255).save(alpha, format="PNG", compress_level=1)
    _, payload, _ = container.unpack(enc.data)
    bomb = tmp_path / "bomb.gq"
    header = dataclasses.replace(enc.header, has_alpha=True)
    bomb.write_bytes(container.pack(header, payload, alpha.getvalue()))
    r = gq("decode", str(bomb), "-o", str(tmp_path / "x.png"), "--memory-budget", "1MB")
    assert r.returncode == 3
    assert len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.startswith(f"error: {bomb}: a memory budget of 1 MB is too small for a 10000x")


class _RateLimited(http.server.BaseHTTPRequestHandler):
    def _answer(self) -> None:
        self.send_response(429)
        self.send_header("Retry-After", "0")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD = _answer

    def log_message(self, *args: object) -> None:
        pass


def test_hub_retry_logs_do_not_leak(tmp_path: Path) -> None:
    """huggingface-hub logs two lines per retry (5 retries against a rate-limited mirror)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RateLimited)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {
        "HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}",
        "HF_HOME": str(tmp_path / "hf"),
        "GQTOK_CACHE": str(tmp_path / "cache"),
        "HF_HUB_OFFLINE": "0",
    }
    try:
        r = gq("encode", str(DATA / "photo_b.png"), "-o", str(tmp_path / "x.gq"),
               "--model", "sd3unet_gq_0.25", env=env)  # fmt: skip
    finally:
        server.shutdown()
    assert r.returncode == 5, r.stderr
    assert len(r.stderr.splitlines()) == 1 and "is not available" in r.stderr, r.stderr
