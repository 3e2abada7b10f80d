"""docs/compare_html.png: a screenshot of a real ``gqtok compare --html`` page in headless Chromium.

Needs chromium, chromedriver (Debian: apt-get install chromium chromium-driver) and selenium
(in the ``test`` extra). The page is made first, e.g.:

    gqtok compare examples/sample.jpg --bpp 0.3 --out /tmp/rd --html /tmp/page
    python scripts/screenshot_html.py /tmp/page/index.html --split 45 --pick webp

``--split`` puts the slider where a reader sees both sides, ``--pick`` chooses the codec on the
right (the first entry whose label starts with it); the window is a fixed size at device scale 1,
so the same page gives the same picture.
"""

from __future__ import annotations

import argparse
import io
import shutil
from pathlib import Path

from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.select import Select

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def browser(width: int, height: int) -> webdriver.Chrome:
    """Headless Chromium at device scale 1 (one CSS pixel = one screenshot pixel)."""
    driver_path = shutil.which("chromedriver")
    binary = next((b for b in map(shutil.which, BROWSERS) if b), None)
    if driver_path is None or binary is None:
        raise SystemExit("needs chromium and chromedriver on PATH")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                "--force-device-scale-factor=1", f"--window-size={width},{height}"):  # fmt: skip
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(driver_path), options=opts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("page", type=Path, help="index.html written by gqtok compare --html")
    ap.add_argument("-o", "--output", type=Path, default=Path("docs/compare_html.png"))
    ap.add_argument("--width", type=int, default=1200)
    ap.add_argument("--height", type=int, default=1560)
    ap.add_argument("--split", type=float, default=45.0, help="slider position, 0-100")
    ap.add_argument("--pick", default="", help="codec label prefix for the right side")
    args = ap.parse_args()
    driver = browser(args.width, args.height)
    try:
        driver.get(args.page.resolve().as_uri())
        section = driver.find_element(By.CSS_SELECTOR, "section.image")
        if args.pick:
            select = Select(section.find_element(By.CSS_SELECTOR, "select.pick"))
            labels = [o.text for o in select.options]
            match = next((i for i, t in enumerate(labels) if t.startswith(args.pick)), None)
            if match is None:
                raise SystemExit(f"no codec starts with {args.pick!r}; the page has {labels}")
            select.select_by_index(match)
        split = section.find_element(By.CSS_SELECTOR, "input.split")
        driver.execute_script(
            "arguments[0].value = arguments[1];"
            "arguments[0].dispatchEvent(new Event('input', {bubbles: true}));",
            split,
            str(args.split),
        )
        args.output.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(io.BytesIO(driver.get_screenshot_as_png())) as shot:
            shot.convert("RGB").save(args.output, optimize=True)  # smaller file, same pixels
    finally:
        driver.quit()
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
