"""gqtok eval / gqtok compare on a few small real-photo crops with the real default model."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

import gqtok
from gqtok.cli.eval import _rates, register
from gqtok.errors import EXIT_PARTIAL, GqtokError
from gqtok.eval.compare import (
    CODECS,
    CSV_COLUMNS,
    REPORT_FILES,
    Codec,
    Sweep,
    compare,
    write_outputs,
)
from gqtok.eval.evaluate import collect_images, evaluate, preprocess
from gqtok.eval.metrics import fidelity as px
from gqtok.eval.rdplot import nice_ticks, plot_rd
from gqtok.io.images import read_image

DATA = Path(__file__).parent / "data"
PIXEL = ["psnr", "ssim", "msssim"]


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    """Two small real crops and one truncated JPEG."""
    with Image.open(DATA / "photo_c.jpg") as im:
        im.convert("RGB").crop((64, 32, 160, 128)).save(tmp_path / "a.png")
    with Image.open(DATA / "photo_a.jpg") as im:
        im.convert("RGB").crop((100, 50, 196, 130)).save(tmp_path / "b.png")
    (tmp_path / "broken.jpg").write_bytes((DATA / "photo_a.jpg").read_bytes()[:400])
    return tmp_path


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """Test app holding only the eval commands."""

    register(app)
    return app


def test_preprocess_follows_resize_then_centre_crop() -> None:
    rgb = read_image(DATA / "photo_a.jpg").rgb  # 317 x 211
    resized = preprocess(rgb, 256, None)
    assert resized.shape == (256, int(256 * 317 / 211), 3)
    assert preprocess(rgb, 256, 256).shape == (256, 256, 3)
    assert preprocess(rgb, None, 200).shape == (200, 200, 3)
    with pytest.raises(gqtok.InputError):
        preprocess(rgb, None, 300)


def test_eval_reports_corrupt_image_and_carries_on(model: gqtok.Model, folder: Path) -> None:
    seen: list[tuple[str, str | None]] = []
    rep = evaluate(
        model, collect_images([folder]), PIXEL, on_image=lambda p, e: seen.append((p, e))
    )
    assert [Path(r.path).name for r in rep.rows] == ["a.png", "b.png"]
    assert len(rep.failures) == 1 and "broken.jpg" in rep.failures[0][1]
    assert len(seen) == 3
    for row in rep.rows:
        pic = read_image(row.path)
        data = gqtok.encode_pictures(model, [pic])[0].data
        assert row.bytes == len(data)  # the rate is the real .gq file, header included
        assert row.bpp == pytest.approx(len(data) * 8 / (row.width * row.height))
        assert 5 < row.psnr < 60 and 0 < row.ssim <= 1 and 0 < row.msssim <= 1
    assert [r.msssim_scales for r in rep.rows] == [4, 3]  # 96 px: 96 // 8 >= 11; 80 px: not
    assert rep.summary["psnr"].n == 2
    assert rep.usage is not None and 0 < rep.usage.used <= rep.usage.tokens
    assert 0 < rep.usage.entropy_bits <= rep.usage.max_entropy_bits
    d = rep.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["fid"] is None and d["per_image"][0]["lpips"] is None


def test_eval_lpips_unavailable_is_null(
    model: gqtok.Model, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    monkeypatch.setenv("TORCH_HOME", str(folder / "empty-torch-home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    rep = evaluate(model, [folder / "a.png"], ["psnr", "lpips"])
    assert "not available offline" in rep.unavailable["lpips"]
    d = rep.to_dict()
    assert d["summary"]["lpips"] == {"mean": None, "std": None, "n": 0}
    assert d["per_image"][0]["lpips"] is None


def test_cli_eval_json_and_exit_code(folder: Path, tmp_path: Path) -> None:
    per_image = tmp_path / "rows.csv"
    res = CliRunner().invoke(
        _app(),
        ["eval", str(folder), "--metrics", "psnr,ssim", "--json", "-", "--per-image",
         str(per_image), "--threads", "1"],
    )  # fmt: skip
    assert res.exit_code == EXIT_PARTIAL, res.output
    lines = [ln for ln in res.stderr.splitlines() if "broken.jpg" in ln]
    assert len(lines) == 1 and lines[0].startswith("error:")
    report = json.loads(res.stdout)
    assert report["images"] == 2 and report["failed"][0]["path"].endswith("broken.jpg")
    assert set(report["summary"]) == {"bpp", "psnr", "ssim"}
    with per_image.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and float(rows[0]["bpp"]) > 0


def test_cli_eval_table(folder: Path) -> None:
    res = CliRunner().invoke(_app(), ["eval", str(folder / "a.png"), "--metrics", "psnr"])
    assert res.exit_code == 0, res.output
    assert "PSNR (dB)" in res.stdout and "bpp (.gq file)" in res.stdout


def test_rates_accept_space_and_comma_lists(folder: Path) -> None:
    assert _rates(["0.25"], [str(folder), "0.5", "1.0"]) == ([0.25, 0.5, 1.0], [str(folder)])
    assert _rates(["0.5,1"], [str(folder)]) == ([0.5, 1.0], [str(folder)])
    assert _rates(None, [str(folder)]) == ([0.25, 0.5, 1.0], [str(folder)])


def test_compare_writes_points_table_and_plot(
    model: gqtok.Model, folder: Path, tmp_path: Path
) -> None:
    paths = [folder / "a.png", folder / "b.png"]
    rep = compare(paths, [0.01, 1.0, 2.0], [model], codecs=["jpeg", "webp"])
    files = write_outputs(rep, tmp_path / "rd")
    with files["csv"].open() as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
        rows = list(reader)
    # per image: 1 gqtok point + 2 codecs x (3 targets + gqtok's own rate)
    assert len(rows) == 2 * (1 + 2 * 4)
    low = [r for r in rows if r["target"] == "0.01"]
    assert low and all(r["status"] == "below_range" for r in low)  # not extrapolated
    ok = [r for r in rows if r["status"] == "ok" and r["codec"] in ("jpeg", "webp")]
    for r in ok:
        assert float(r["bpp_lo"]) <= float(r["target_bpp"]) <= float(r["bpp_hi"])
        assert int(r["quality_lo"]) < int(r["quality_hi"])
    summary = {(s["target"], s["codec"]): s for s in rep.summary}
    assert summary[("0.01", "jpeg")]["excluded"] == 2
    assert summary[("2", "jpeg")]["psnr"] > summary[("1", "jpeg")]["psnr"]
    data = json.loads(files["json"].read_text())
    assert {"targets", "codecs", "models", "points", "summary", "notes", "bd"} <= set(data)
    with Image.open(files["png"]) as im:
        assert im.format == "PNG" and im.width > 600
    for metric in ("psnr", "msssim", "stlpips_alex"):  # one plot per metric too
        with Image.open(files[f"png_{metric}"]) as im:
            assert im.format == "PNG"
    # Bjøntegaard: gqtok (one point) against each codec, WebP against JPEG (targets 1 and 2)
    bd = {(r["curve"], r["reference"]): r for r in data["bd"]}
    gq = f"gqtok:{model.label}"
    assert set(bd) == {(gq, "jpeg"), (gq, "webp"), ("webp", "jpeg")}
    assert bd[(gq, "jpeg")]["bd_psnr"] is None and bd[(gq, "jpeg")]["points"] == 1
    assert any(n.startswith(f"bd: under 2 points on the curve of {gq} ") for n in data["notes"])
    assert bd[("webp", "jpeg")]["points"] == 2 and bd[("webp", "jpeg")]["bd_psnr"] is not None


def test_pillow_plot_fallback(tmp_path: Path) -> None:
    summary = [
        {"codec": "jpeg", "target": t, "images": 2, "excluded": 0, "bpp": b, "psnr": p,
         "msssim": m, "stlpips_alex": s}
        for t, b, p, m, s in (("0.5", 0.5, 26.0, 0.93, 0.1), ("1", 1.0, 30.0, 0.97, 0.03))
    ] + [{"codec": "gqtok:m", "target": "@m", "images": 2, "excluded": 0, "bpp": 0.3,
          "psnr": 25.0, "msssim": 0.92, "stlpips_alex": None}]  # fmt: skip
    assert plot_rd(summary, tmp_path / "p.png", backend="pillow") == "pillow"
    with Image.open(tmp_path / "p.png") as im:
        arr = np.asarray(im.convert("RGB"))
    assert arr.shape[1] == 1500 and (arr < 250).any()
    plot_rd(summary, tmp_path / "one", backend="pillow", metrics=["msssim"])  # no suffix: PNG
    with Image.open(tmp_path / "one") as im:
        assert im.format == "PNG" and im.width == 500
    assert nice_ticks(0.0, 1.05) == [0.0, 0.25, 0.5, 0.75, 1.0, 1.25]


def test_any_failure_of_one_image_is_recorded_and_the_run_goes_on(
    model: gqtok.Model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not only gqtok's own errors: an exception of any type in one image's round trip is that
    image's failure line, and the other images are measured."""
    import gqtok.eval.evaluate as ev

    real = ev.roundtrip
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    Image.open(DATA / "photo_a.jpg").crop((0, 0, 64, 48)).save(a)
    Image.open(DATA / "photo_a.jpg").crop((0, 0, 48, 64)).save(b)

    def failing(m, pic, **rate):  # noqa: ANN001, ANN003, ANN202
        if pic.rgb.shape[1] == 64:
            raise ZeroDivisionError("simulated")
        return real(m, pic, **rate)

    monkeypatch.setattr(ev, "roundtrip", failing)
    rep = evaluate(model, [a, b], metrics=("psnr",))
    assert [name for name, _ in rep.failures] == [str(a)]
    assert rep.failures[0][1] == f"{a}: ZeroDivisionError: simulated"
    assert [row.path for row in rep.rows] == [str(b)]


def test_codec_without_its_plugin_is_skipped_with_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import gqtok.eval.compare as cmp

    def missing() -> None:
        raise ImportError("No module named 'pillow_jxl'")

    monkeypatch.setitem(cmp.PLUGINS, "JXL", ("pillow-jxl-plugin", missing))
    monkeypatch.delitem(Image.SAVE, "JXL", raising=False)
    names, skipped = cmp.available_codecs()
    assert "jxl" not in names and "heif" in names
    assert "pillow-jxl-plugin is not installed" in skipped["jxl"]
    with pytest.raises(GqtokError, match="jxl: the Pillow plugin pillow-jxl-plugin"):
        CODECS["jxl"].encode(np.zeros((8, 8, 3), np.uint8), 50)
    res = CliRunner().invoke(_app(), ["compare", "--help"])
    assert all(name in res.stdout for name in CODECS)


def test_compare_jxl_and_heif_with_bd_table(folder: Path, tmp_path: Path) -> None:
    """JPEG XL and HEIF through the CLI: real, reproducible files at the bracketing qualities,
    the Bjøntegaard table and one plot per metric (one image: each measurement costs an
    ST-LPIPS pass)."""
    out = tmp_path / "rd"
    res = CliRunner().invoke(
        _app(),
        ["compare", str(folder / "a.png"), "--bpp", "0.6,1.0", "--codecs", "jxl,heif", "--out",
         str(out), "--threads", "2"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "Bjøntegaard deltas" in res.stdout and "BD-PSNR" in res.stdout
    for name in REPORT_FILES:
        assert (out / name).stat().st_size > 0
    data = json.loads((out / "rd.json").read_text())
    assert data["codecs"] == ["jxl", "heif"]
    targets = [p for p in data["points"] if p["codec"] in CODECS and p["target"] in ("0.6", "1")]
    assert len(targets) == 2 * 2 and all(p["status"] == "ok" for p in targets)
    for p in targets:
        codec = CODECS[p["codec"]]
        assert p["quality_lo"] in codec.qualities and p["quality_hi"] in codec.qualities
        assert p["bpp_lo"] <= p["target_bpp"] <= p["bpp_hi"]
        rgb = read_image(p["image"]).rgb
        data_lo = codec.encode(rgb, p["quality_lo"])  # the same file again
        assert len(data_lo) * 8 / (rgb.shape[0] * rgb.shape[1]) == p["bpp_lo"]
        assert 15 < px.psnr(rgb, codec.decode(data_lo)) < 60
    # HEIF against JPEG XL: two points each at the same two rates, so each PSNR curve is a line
    # in log-rate and BD-PSNR is the mean of the PSNR gaps at the two ends
    (row,) = [r for r in data["bd"] if r["curve"] == "heif"]
    assert row["reference"] == "jxl" and row["points"] == row["reference_points"] == 2
    rows = {(r["codec"], r["target"]): r for r in data["summary"]}
    gaps = [rows[("heif", t)]["psnr"] - rows[("jxl", t)]["psnr"] for t in ("0.6", "1")]
    assert row["bd_psnr"] == pytest.approx(sum(gaps) / 2, abs=1e-9)
    assert row["bd_rate_msssim"] is not None


@dataclass(frozen=True)
class _Sized(Codec):
    """A codec whose file at quality q has sizes[q] bytes (rate = size on a 1x8 image)."""

    sizes: tuple[int, ...] = ()

    def encode(self, rgb: np.ndarray, quality: int) -> bytes:
        return bytes(self.sizes[quality])


def test_qualities_below_a_seam_costlier_than_it_are_left_out() -> None:
    rgb = np.zeros((1, 8, 3), np.uint8)
    codec = _Sized("fake", "PNG", tuple(range(9)), seam=5, sizes=(1, 2, 3, 4, 5, 3, 4, 6, 8))
    sweep = Sweep(codec, rgb, lambda a, b: {})
    assert sweep.qualities == (0, 1, 5, 6, 7, 8)  # 2, 3, 4 cost as much as 5 or more
    assert sweep.bracket(3.5) == (5, 6)  # not (2, 3) of the costlier branch
    smooth = _Sized("fake", "PNG", tuple(range(9)), seam=5, sizes=(1, 2, 3, 4, 5, 6, 7, 8, 9))
    assert Sweep(smooth, rgb, lambda a, b: {}).qualities == tuple(range(9))
    # the real JPEG XL on a small photo, whatever libjxl's switch does there
    real = Sweep(CODECS["jxl"], read_image(DATA / "photo_a.jpg").rgb, lambda a, b: {})
    low = [q for q in real.qualities if q < 19]
    assert low == list(range(len(low))) and real.bpp(low[-1]) < real.bpp(19)
    assert len(low) == 19 or real.bpp(len(low)) >= real.bpp(19)
    found = real.bracket(real.bpp(19) + 0.001)
    assert isinstance(found, tuple) and found[0] >= 19
