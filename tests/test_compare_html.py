"""``gqtok compare --html``: the page is built from a real run and driven in headless Chromium.

The browser test checks what a reader sees: one section per image, every codec in the list, the
slider really revealing the reconstruction (screenshot pixels against the page's own images),
and that the images and labels are the real files (re-encoded here and compared).
"""

from __future__ import annotations

import base64
import csv
import io
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from gqtok.eval.compare import CODECS, CompareReport, Reconstruction, closest_quality
from gqtok.eval.evaluate import preprocess
from gqtok.eval.html_report import HtmlReport, detail_box
from gqtok.eval.metrics.fidelity import psnr
from gqtok.io.images import read_image

ROOT = Path(__file__).parent.parent
SAMPLE = ROOT / "examples" / "sample.jpg"  # 768x512
PHOTO = ROOT / "tests" / "data" / "photo_a.jpg"  # 317x211
HOSTILE = "a<b>&\"q'.jpg"  # a file name that is also markup
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
TAGS = 32  # rows under the codec labels drawn over the top of the slider view


def _app() -> Any:
    from tests.test_eval import _app

    return _app()


def test_detail_box_finds_texture_and_fits_small_images() -> None:
    rng = np.random.default_rng(0)
    flat = np.full((400, 600, 3), 128, np.uint8)
    flat[200:300, 350:450] = rng.integers(0, 256, (100, 100, 3), dtype=np.uint8)
    x, y, w, h = detail_box(flat, 128)
    assert (w, h) == (128, 128)
    assert x <= 350 and x + w >= 450 and y <= 200 and y + h >= 300
    assert detail_box(flat[:100, :90], 256) == (0, 0, 90, 100)  # smaller than a crop: all of it


def test_closest_quality_is_the_nearer_bracket() -> None:
    point = {"target_bpp": 0.30, "quality_lo": 20, "quality_hi": 21, "bpp_lo": 0.29}
    assert closest_quality({**point, "bpp_hi": 0.32}) == 20
    assert closest_quality({**point, "bpp_hi": 0.305}) == 21


def test_large_image_view_is_downscaled_crops_stay_native() -> None:
    rng = np.random.default_rng(1)
    big = rng.integers(0, 256, (900, 1500, 3), dtype=np.uint8)
    rec = np.clip(big.astype(np.int16) + 9, 0, 255).astype(np.uint8)
    metrics: dict[str, float | None] = {"psnr": 30.0, "msssim": 0.9, "stlpips_alex": None}
    page = HtmlReport()
    for codec, quality in (("gqtok:m", None), ("jpeg", 10), ("jpeg", 10), ("webp", 3)):
        page.add(Reconstruction("big.png", codec, "@m", big, rec, 0.2, quality, metrics))
    page.add(Reconstruction("gone.png", "gqtok:m", "@m", big[:64, :64], rec[:64, :64], 0.2,
                            None, metrics))  # fmt: skip
    (sec, gone) = page.sections
    assert sec.view_size == (1024, 614) and sec.box[2:] == (256, 256)
    assert [s.label for s in sec.shown] == ["gqtok:m", "jpeg q10", "webp q3"]  # one file once
    x, y, w, h = sec.box
    with Image.open(io.BytesIO(base64.b64decode(sec.shown[0].crop.split(",")[1]))) as im:
        assert np.array_equal(np.asarray(im), rec[y : y + h, x : x + w])
    report = CompareReport([0.2], ["jpeg", "webp"], ["m"], failures=[("gone.png", "gone: bad")])
    text = page.render(report, plot_png=b"png")
    assert "big.png" in text and "<h2>gone.png" not in text and "gone: bad" in text
    assert "full view downscaled to 1024×614" in text


def test_html_refuses_existing_page_without_overwrite(tmp_path: Path) -> None:
    (tmp_path / "page").mkdir()
    (tmp_path / "page" / "index.html").write_text("mine")
    res = CliRunner().invoke(
        _app(),
        ["compare", str(SAMPLE), "--out", str(tmp_path / "rd"), "--html", str(tmp_path / "page")],
    )
    assert res.exit_code == 6, res.output
    assert "index.html: exists (use --overwrite)" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert (tmp_path / "page" / "index.html").read_text() == "mine"


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real ``gqtok compare --html`` run: the sample photo under a markup-like name and a
    second photo, both resized and cropped to 160 px squares (fast), against JPEG and WebP.
    gqtok's rate on both is ~0.27 bpp, so ``--bpp 0.27`` mostly reuses the same measured
    qualities (a speed matter only)."""
    tmp = tmp_path_factory.mktemp("html")
    shutil.copy(SAMPLE, tmp / HOSTILE)
    shutil.copy(PHOTO, tmp / "photo_a.jpg")
    res = CliRunner().invoke(
        _app(),
        ["compare", str(tmp / HOSTILE), str(tmp / "photo_a.jpg"), "--bpp", "0.27", "--codecs",
         "jpeg,webp", "--resize", "192", "--center-crop", "160", "--threads", "2", "--out",
         str(tmp / "rd"), "--html", str(tmp / "page"), "--quiet"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    return tmp


def test_page_is_self_contained_and_escaped(page: Path) -> None:
    text = (page / "page" / "index.html").read_text()
    assert HOSTILE not in text and "a&lt;b&gt;&amp;&quot;q&#x27;.jpg" in text
    assert not re.search(r"(src|href)=(?!['\"]?(data:|#))", text)  # only data: URIs, anchors
    assert "http://" not in text and "https://" not in text


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium at device scale 1, so a screenshot pixel is an image pixel."""
    chromedriver = shutil.which("chromedriver")
    binary = next((b for b in map(shutil.which, BROWSERS) if b), None)
    if chromedriver is None or binary is None:
        pytest.skip("needs chromium and chromedriver (Debian: apt-get install chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                "--force-device-scale-factor=1", "--window-size=1200,1600"):  # fmt: skip
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(chromedriver), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def _pixels(uri: str) -> np.ndarray:
    assert uri.startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def _shot(element: Any) -> np.ndarray:
    with Image.open(io.BytesIO(element.screenshot_as_png)) as im:
        return np.asarray(im.convert("RGB")).astype(np.int16)


def _diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def test_page_in_chromium(browser: Any, page: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.select import Select

    browser.get((page / "page" / "index.html").as_uri())
    sections = browser.find_elements(By.CSS_SELECTOR, "section.image")
    assert [s.find_element(By.TAG_NAME, "h2").text for s in sections] == [
        str(page / HOSTILE),
        str(page / "photo_a.jpg"),
    ]
    assert not browser.find_elements(By.CSS_SELECTOR, "main b")  # the name stayed text
    for s in sections:
        assert len(s.find_elements(By.CSS_SELECTOR, "input[type=range].split")) == 1
        labels = [o.text for o in Select(s.find_element(By.CSS_SELECTOR, "select.pick")).options]
        assert labels[0].startswith("gqtok:gqtok-") and len(labels) == 3
        assert {lb.split()[0] for lb in labels[1:]} == {"jpeg", "webp"}
        assert len(s.find_elements(By.CSS_SELECTOR, ".crops img")) == 1 + len(labels)
    widths = browser.execute_script(
        "return [...document.images].map(i => i.complete ? i.naturalWidth : 0)"
    )
    assert all(w > 0 for w in widths)  # the RD plot, the views and every crop decoded
    plot = browser.find_element(By.CSS_SELECTOR, "img.rdplot")
    assert browser.execute_script("return arguments[0].naturalWidth", plot) > 0
    assert len(browser.find_elements(By.CSS_SELECTOR, "table.summary tbody tr")) == 5

    # the page shows the true original (the evaluated, resized image) and true reconstructions
    sec = sections[0]
    orig = preprocess(read_image(page / HOSTILE).rgb, 192, 160)
    view = sec.find_element(By.CSS_SELECTOR, ".cmp")
    rec_img = sec.find_element(By.CSS_SELECTOR, "img.rec")
    shown = sec.find_element(By.CSS_SELECTOR, "img.orig").get_attribute("src")
    assert np.array_equal(_pixels(shown), orig)
    gq = _pixels(rec_img.get_attribute("src"))
    tag = sec.find_element(By.CSS_SELECTOR, ".tag.right")
    assert tag.text.startswith("gqtok:")
    caption = sec.find_element(By.CSS_SELECTOR, ".caption").text
    assert f"PSNR {psnr(orig, gq):.2f} dB" in caption

    # the slider: End = all original, Home = all reconstruction, middle = half and half
    split = sec.find_element(By.CSS_SELECTOR, "input.split")
    h, w = orig.shape[:2]
    inner = (slice(TAGS, h), slice(3, w - 3))  # off the labels and the divider at either end
    split.send_keys(Keys.END)
    shot = _shot(view)
    assert shot.shape[:2] == (h, w)
    assert _diff(shot[inner], orig[inner]) < 0.5 < _diff(shot[inner], gq[inner])
    split.send_keys(Keys.HOME)
    shot = _shot(view)
    assert _diff(shot[inner], gq[inner]) < 0.5 < _diff(shot[inner], orig[inner])
    browser.execute_script(
        "arguments[0].value = 50; arguments[0].dispatchEvent(new Event('input'))", split
    )
    shot = _shot(view)
    left, right = slice(0, w // 2 - 3), slice(w // 2 + 3, w)
    assert _diff(shot[TAGS:, left], orig[TAGS:, left]) < 0.5
    assert _diff(shot[TAGS:, right], gq[TAGS:, right]) < 0.5

    # another codec: the image on the right is the real JPEG file at the quality nearest gqtok
    pick = Select(sec.find_element(By.CSS_SELECTOR, "select.pick"))
    jpeg_label = next(o.text for o in pick.options if o.text.startswith("jpeg"))
    before = rec_img.get_attribute("src")
    pick.select_by_visible_text(jpeg_label)
    after = rec_img.get_attribute("src")
    assert after != before and tag.text.startswith("jpeg q")
    quality, bpp = re.fullmatch(r"jpeg q(\d+) \((\S+) bpp\)", jpeg_label).groups()
    data = CODECS["jpeg"].encode(orig, int(quality))
    assert f"{len(data) * 8 / (h * w):.4f}" == bpp
    jpeg = _pixels(after)
    assert np.array_equal(jpeg, CODECS["jpeg"].decode(data))
    shot = _shot(view)
    assert _diff(shot[TAGS:, right], jpeg[TAGS:, right]) < 0.5
    chosen = sec.find_elements(By.CSS_SELECTOR, ".crops figure.chosen figcaption")
    assert len(chosen) == 1 and chosen[0].text.startswith(jpeg_label.split(" (")[0])
    with (page / "rd" / "rd_points.csv").open() as f:
        rows = list(csv.DictReader(f))
    mine = [r for r in rows if r["image"] == str(page / HOSTILE) and r["codec"] == "jpeg"]
    point = next(r for r in mine if r["target"].startswith("@"))
    numbers = {k: float(point[k]) for k in ("target_bpp", "bpp_lo", "bpp_hi")}
    qs = {k: int(point[k]) for k in ("quality_lo", "quality_hi")}
    assert int(quality) == closest_quality({**numbers, **qs})
