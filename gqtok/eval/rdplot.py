"""Rate-distortion plots (PSNR, MS-SSIM, ST-LPIPS against bpp) for ``gqtok compare``: the three
panels side by side, or any subset (one metric per file).

matplotlib draws it when installed (it is in the ``metrics`` extra); otherwise a plain Pillow
drawing with the same content (axes, ticks, legend) keeps the command working on the base
install, where pulling in a plotting stack just for one PNG would be out of proportion.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from PIL import Image, ImageDraw, ImageFont

PANELS = (
    ("psnr", "PSNR (dB), higher is better"),
    ("msssim", "MS-SSIM, higher is better"),
    ("stlpips_alex", "ST-LPIPS (AlexNet), lower is better"),
)
COLORS = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)
Panels = Sequence[tuple[str, str]]

Series = dict[str, list[tuple[float, dict[str, float | None]]]]


def series_from_summary(summary: list[dict[str, Any]]) -> Series:
    """Codec -> [(mean bpp, metrics)] sorted by bpp, from compare's summary rows.

    Rows where some images were out of the codec's range are left out: their mean is over a
    different subset of images, and a line through it would zig-zag for no real reason.
    """
    out: Series = {}
    for row in summary:
        if row.get("bpp") is not None and row.get("images") and not row.get("excluded"):
            out.setdefault(row["codec"], []).append((row["bpp"], row))
    return {k: sorted(v, key=lambda p: p[0]) for k, v in sorted(out.items())}


def plot_rd(
    summary: list[dict[str, Any]],
    path: Path | IO[bytes],
    backend: str | None = None,
    metrics: Sequence[str] | None = None,
) -> str:
    """Write the plot as PNG (whatever the file name): one panel per metric of ``metrics``
    (default: all of ``PANELS``); returns the backend used ("matplotlib" or "pillow")."""
    series = series_from_summary(summary)
    panels = [p for p in PANELS if metrics is None or p[0] in metrics]
    if backend is None:
        try:
            backend = "matplotlib" if importlib.util.find_spec("matplotlib") else "pillow"
        except (ImportError, ValueError):
            backend = "pillow"
    if backend == "matplotlib":
        _plot_matplotlib(series, path, panels)
    else:
        _plot_pillow(series, path, panels)
    return backend


def _is_model(codec: str) -> bool:
    return codec.startswith("gqtok")


def _plot_matplotlib(series: Series, path: Path | IO[bytes], panels: Panels) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    single = len(panels) == 1
    size = (8, 5.5) if single else (5 * len(panels), 4.6)
    fig, grid = plt.subplots(1, len(panels), figsize=size, squeeze=False)
    axes = grid[0]
    for ax, (key, title) in zip(axes, panels, strict=True):
        for i, (codec, pts) in enumerate(series.items()):
            xy = [(b, m[key]) for b, m in pts if m.get(key) is not None]
            if not xy:
                continue
            xs, ys = zip(*xy, strict=True)
            color = tuple(c / 255 for c in COLORS[i % len(COLORS)])
            if _is_model(codec):
                ax.plot(xs, ys, "*", color=color, markersize=14, label=codec)
            else:
                ax.plot(xs, ys, "-o", color=color, markersize=4, label=codec)
        ax.set_title(title)
        ax.set_xlabel("bits per pixel")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    ncol = max(1, min(len(labels), 3 if single else 7))
    rows = -(-len(labels) // ncol)
    fig.legend(handles, labels, loc="lower center", ncol=ncol, frameon=False)
    fig.tight_layout(rect=(0, (22 * rows + 12) / (100 * size[1]), 1, 1))  # legend: ~22 px a row
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2, 2.5, 5 x 10^k steps) from at or below lo to at or above hi."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step + 1e-9) * step
    n = int(math.ceil((hi - first) / step - 1e-9)) + 1
    return [round(first + i * step, 10) for i in range(n)]


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size)
    except TypeError:  # Pillow without FreeType ignores sizes
        return ImageFont.load_default()


def _legend_rows(labels: list[str], font: Any, width: float) -> list[list[tuple[float, str]]]:
    """Legend entries as rows of (x, label) that fit in ``width`` px (a swatch, then the text)."""
    rows: list[list[tuple[float, str]]] = [[]]
    x = 20.0
    for label in labels:
        step = 40 + font.getlength(label)
        if rows[-1] and x + step > width:
            rows.append([])
            x = 20.0
        rows[-1].append((x, label))
        x += step
    return rows


def _plot_pillow(series: Series, path: Path | IO[bytes], panels: Panels) -> None:
    pw, ph, left, right, top, bottom = 500, 460, 70, 20, 40, 55
    font, small = _font(14), _font(12)
    legend = _legend_rows(list(series), small, pw * len(panels))
    img = Image.new("RGB", (pw * len(panels), ph + 10 + 20 * len(legend)), "white")
    draw = ImageDraw.Draw(img)
    for p, (key, title) in enumerate(panels):
        x0, x1, y0, y1 = p * pw + left, (p + 1) * pw - right, top, ph - bottom
        pts = {c: [(b, m[key]) for b, m in s if m.get(key) is not None] for c, s in series.items()}
        xs = [b for v in pts.values() for b, _ in v]
        ys = [y for v in pts.values() for _, y in v]
        draw.text((p * pw + pw / 2, 12), title, fill="black", font=font, anchor="mt")
        draw.rectangle((x0, y0, x1, y1), outline="black")
        draw.text(((x0 + x1) / 2, ph - 12), "bits per pixel", fill="black", font=small, anchor="mb")
        if not xs:
            mid = ((x0 + x1) / 2, (y0 + y1) / 2)
            draw.text(mid, "no data", fill="gray", font=font, anchor="mm")
            continue
        xt = nice_ticks(0.0, max(xs) * 1.05)
        pad = (max(ys) - min(ys)) * 0.08 or abs(max(ys)) * 0.05 or 1.0
        low = min(ys) - pad
        yt = nice_ticks(max(0.0, low) if min(ys) >= 0 else low, max(ys) + pad)
        xlo, xhi, ylo, yhi = xt[0], xt[-1], yt[0], yt[-1]

        def sx(v: float, xlo: float = xlo, xhi: float = xhi, x0: int = x0, x1: int = x1) -> float:
            return x0 + (v - xlo) / ((xhi - xlo) or 1.0) * (x1 - x0)

        def sy(v: float, ylo: float = ylo, yhi: float = yhi, y0: int = y0, y1: int = y1) -> float:
            return y1 - (v - ylo) / ((yhi - ylo) or 1.0) * (y1 - y0)

        for t in xt:
            draw.line((sx(t), y1, sx(t), y1 + 5), fill="black")
            draw.line((sx(t), y0, sx(t), y1), fill=(230, 230, 230))
            draw.text((sx(t), y1 + 8), f"{t:g}", fill="black", font=small, anchor="mt")
        for t in yt:
            draw.line((x0 - 5, sy(t), x0, sy(t)), fill="black")
            draw.line((x0, sy(t), x1, sy(t)), fill=(230, 230, 230))
            draw.text((x0 - 8, sy(t)), f"{t:g}", fill="black", font=small, anchor="rm")
        draw.rectangle((x0, y0, x1, y1), outline="black")
        for i, (codec, v) in enumerate(pts.items()):
            color = COLORS[i % len(COLORS)]
            xy = [(sx(b), sy(y)) for b, y in v]
            if len(xy) > 1 and not _is_model(codec):
                draw.line(xy, fill=color, width=2)
            r = 7 if _is_model(codec) else 3
            for cx, cy in xy:
                draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=color)
    color = {codec: COLORS[i % len(COLORS)] for i, codec in enumerate(series)}
    for r, row in enumerate(legend):  # legend strip under the panels
        y = ph + 10 + 20 * r
        for x, codec in row:
            draw.rectangle((x, y, x + 10, y + 10), fill=color[codec])
            draw.text((x + 16, y + 5), codec, fill="black", font=small, anchor="lm")
    img.save(path, "PNG")
