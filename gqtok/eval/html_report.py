"""``gqtok compare --html``: one self-contained page to look at the images, not only the numbers.

Numbers say which codec is better on average; artefacts (blocking, ringing, smeared texture,
invented detail) are only seen. The page shows, per image, a before/after slider of the original
against each codec at gqtok's rate and 1:1 crops of the most detailed region, then the RD plot
and the summary table. It is one file with no external resources (images as ``data:`` URIs,
inline CSS and a few lines of JS), so it can be mailed, archived or opened offline as it is.

Every image is lossless PNG, so the page adds no artefacts of its own. Classical codecs have no
rate knob: the image shown is the real decoded file at the bracketing quality whose rate is
nearest gqtok's, labelled with that file's own bpp and metrics (the table's numbers are the ones
interpolated at exactly the matched rate). Images arrive through ``compare``'s
``on_reconstruction`` hook and are turned into PNG text at once, so memory holds the page's
strings, not every reconstruction of every image.
"""

from __future__ import annotations

import base64
import html
import io
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from gqtok.eval.compare import CODECS, CompareReport, Reconstruction, summary_numbers
from gqtok.version import __version__

CROP = 256  # side of the 1:1 crops, native pixels
VIEW_MAX = 1024  # longest side of the slider's full view; larger images are shown downscaled
BLOCK = 8  # the detail search works on 8x8 blocks of gradient energy
STRIP = 512  # rows per step of the detail search (bounds its memory on huge images)


def png_uri(rgb: np.ndarray) -> str:
    """A lossless PNG of ``rgb`` as a ``data:`` URI."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def view_size(width: int, height: int, limit: int = VIEW_MAX) -> tuple[int, int]:
    """Size of the slider's full view: native up to ``limit`` px on the long side."""
    scale = min(1.0, limit / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def full_view(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if (rgb.shape[1], rgb.shape[0]) == size:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))


def _block_energy(rgb: np.ndarray) -> np.ndarray:
    """Sum of squared luma gradients per BLOCK x BLOCK block, computed a strip at a time."""
    h, w = rgb.shape[:2]
    rows, cols = -(-h // BLOCK), -(-w // BLOCK)
    out = np.zeros((rows, cols))
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    for top in range(0, h, STRIP):
        bottom = min(top + STRIP, h)
        luma = rgb[top : min(bottom + 1, h)].astype(np.float32) @ weights
        e = np.zeros((bottom - top, w), dtype=np.float32)
        e[:, :-1] += np.diff(luma[: bottom - top], axis=1) ** 2
        dy = np.diff(luma, axis=0) ** 2  # one row short at the image's last row
        e[: len(dy)] += dy
        pad = np.zeros((-(-(bottom - top) // BLOCK) * BLOCK, cols * BLOCK), dtype=np.float32)
        pad[: bottom - top, :w] = e
        blocks = pad.reshape(len(pad) // BLOCK, BLOCK, cols, BLOCK).sum(axis=(1, 3))
        out[top // BLOCK : top // BLOCK + len(blocks)] = blocks
    return out


def detail_box(rgb: np.ndarray, size: int = CROP) -> tuple[int, int, int, int]:
    """(x, y, width, height) of the crop with the most gradient energy: where codecs differ
    most visibly (texture, edges, text), unlike a flat sky that every codec gets right."""
    h, w = rgb.shape[:2]
    cw, ch = min(size, w), min(size, h)
    energy = _block_energy(rgb)
    kh, kw = max(1, ch // BLOCK), max(1, cw // BLOCK)
    table = np.zeros((energy.shape[0] + 1, energy.shape[1] + 1))
    table[1:, 1:] = energy.cumsum(0).cumsum(1)
    sums = table[kh:, kw:] - table[:-kh, kw:] - table[kh:, :-kw] + table[:-kh, :-kw]
    by, bx = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return min(int(bx) * BLOCK, w - cw), min(int(by) * BLOCK, h - ch), cw, ch


def _num(v: float | None, digits: int) -> str:
    if v is None:
        return "—"
    if math.isinf(v):
        return "∞"
    return f"{v:.{digits}f}"


def metrics_text(m: dict[str, Any]) -> str:
    return (
        f"PSNR {_num(m.get('psnr'), 2)} dB · MS-SSIM {_num(m.get('msssim'), 4)}"
        f" · ST-LPIPS {_num(m.get('stlpips_alex'), 4)}"
    )


@dataclass
class Shown:
    """One reconstruction as the page shows it: its labels and its two PNGs (as text)."""

    codec: str
    quality: int | None
    bpp: float
    label: str  # the selector's entry
    caption: str  # the line under the slider: codec, real bpp, metrics
    metrics: dict[str, float | None]
    view: str
    crop: str
    order: int


@dataclass
class Section:
    """One image's part of the page, already encoded."""

    image: str
    size: tuple[int, int]
    view_size: tuple[int, int]
    box: tuple[int, int, int, int]
    view: str
    crop: str
    rates: dict[str, float] = field(default_factory=dict)  # "@model" -> gqtok's bpp
    shown: list[Shown] = field(default_factory=list)


class HtmlReport:
    """Collects ``compare``'s reconstructions (pass ``add`` as ``on_reconstruction``) and
    renders the page with ``render(report)``."""

    def __init__(self, crop: int = CROP, view_max: int = VIEW_MAX) -> None:
        self.crop, self.view_max = crop, view_max
        self.sections: list[Section] = []

    def add(self, rec: Reconstruction) -> None:
        if not self.sections or self.sections[-1].image != rec.image:
            h, w = rec.original.shape[:2]
            size = view_size(w, h, self.view_max)
            box = detail_box(rec.original, self.crop)
            self.sections.append(
                Section(rec.image, (w, h), size, box, png_uri(full_view(rec.original, size)),
                        png_uri(_cut(rec.original, box)))
            )  # fmt: skip
        sec = self.sections[-1]
        if any(s.codec == rec.codec and s.quality == rec.quality for s in sec.shown):
            return  # e.g. two models with the same rate: the same JPEG file twice
        if rec.quality is None:
            sec.rates.setdefault(rec.target, rec.bpp)
            label = rec.codec
            how = f"{rec.bpp:.4f} bpp"
        else:
            label = f"{rec.codec} q{rec.quality}"
            matched = sec.rates.get(rec.target)
            how = f"{rec.bpp:.4f} bpp" + (
                "" if matched is None else f" (quality nearest gqtok's {matched:.4f} bpp)"
            )
        caption = f"{label}: {how}, {metrics_text(rec.metrics)}"
        view, crop = png_uri(full_view(rec.rgb, sec.view_size)), png_uri(_cut(rec.rgb, sec.box))
        sec.shown.append(
            Shown(rec.codec, rec.quality, rec.bpp, label=label, caption=caption,
                  metrics=rec.metrics, view=view, crop=crop, order=len(sec.shown))
        )  # fmt: skip

    def render(self, report: CompareReport, plot_png: bytes | None = None) -> str:
        """The whole page; sections of images that failed are left out, and the RD plot is
        drawn from the report's summary unless given."""
        failed = {path for path, _ in report.failures}
        sections = [s for s in self.sections if s.image not in failed]
        if plot_png is None:
            plot_png = rd_plot_png(report.summary)
        plot = "data:image/png;base64," + base64.b64encode(plot_png).decode("ascii")
        e = _esc
        parts = [
            HEAD,
            "<h1>gqtok compare</h1>",
            f"<p class=meta>{len(sections)} image(s); models: "
            f"{e(', '.join(report.models) or 'none')}; codecs: {e(', '.join(report.codecs))};"
            f" gqtok {e(__version__)}.</p>",
            HOWTO,
        ]
        if sections:
            parts.append("<nav><ul>")
            parts += [f"<li><a href='#img-{i}'>{e(s.image)}</a>" for i, s in enumerate(sections)]
            parts.append("</ul></nav>")
        parts += [_section(i, s) for i, s in enumerate(sections)]
        parts += [
            "<section id=rd><h2>Rate–distortion</h2>",
            f"<img class=rdplot src='{plot}' alt='rate-distortion plot'>",
            _table(report.summary),
            _bd_table(report.bd),
        ]
        if report.notes:
            parts.append("<ul class=notes>")
            parts += [f"<li>{e(n)}" for n in report.notes]
            parts.append("</ul>")
        if report.failures:
            parts.append("<h3>Failed images</h3><ul class=failures>")
            parts += [f"<li>{e(msg)}" for _, msg in report.failures]
            parts.append("</ul>")
        parts += ["</section>", SCRIPT, "</main></body></html>\n"]
        return "\n".join(parts)


def rd_plot_png(summary: list[dict[str, Any]]) -> bytes:
    """compare's rd_plot.png as bytes (the plotter picks its format from a file name)."""
    from gqtok.eval.rdplot import plot_rd

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rd_plot.png"
        plot_rd(summary, path)
        return path.read_bytes()


def _cut(rgb: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    x, y, w, h = box
    return rgb[y : y + h, x : x + w]


def _esc(text: object) -> str:
    """HTML-escape anything shown, quotes included: file and model names are untrusted."""
    return html.escape(str(text), quote=True)


def _sort_key(s: Shown) -> tuple[Any, ...]:
    order = list(CODECS)
    if s.quality is None:  # gqtok rows first, in the order of the models
        return (0, 0, s.order)
    return (1, order.index(s.codec) if s.codec in order else len(order), s.bpp)


def _section(i: int, s: Section) -> str:
    e = _esc
    (w, h), (vw, vh), (cx, cy, cw, ch) = s.size, s.view_size, s.box
    shown = sorted(s.shown, key=_sort_key)
    scale = "" if (w, h) == (vw, vh) else f"; full view downscaled to {vw}×{vh}"
    options = "".join(
        f"<option value={j} data-src='{r.view}' data-tag='{e(r.label)} · {r.bpp:.4f} bpp'"
        f" data-caption='{e(r.caption)}'>"
        f"{e(r.label)} ({r.bpp:.4f} bpp)</option>"
        for j, r in enumerate(shown)
    )
    crops = "".join(
        f"<figure data-pick={j}><img src='{r.crop}' width={cw} height={ch} alt='{e(r.label)}'>"
        f"<figcaption>{e(r.label)}<br>{r.bpp:.4f} bpp</figcaption></figure>"
        for j, r in enumerate(shown)
    )
    rows = "".join(
        f"<tr><td>{e(r.label)}</td><td>{r.bpp:.4f}</td><td>{_num(r.metrics.get('psnr'), 2)}</td>"
        f"<td>{_num(r.metrics.get('msssim'), 4)}</td>"
        f"<td>{_num(r.metrics.get('stlpips_alex'), 4)}</td></tr>"
        for r in shown
    )
    return f"""<section class=image id=img-{i} data-image='{e(s.image)}'>
<h2>{e(s.image)}</h2>
<p class=dims>{w}×{h} px{scale}; crops {cw}×{ch} at ({cx}, {cy}), 1:1.</p>
<label>right side: <select class=pick>{options}</select></label>
<div class=cmp style='width:{vw}px'>
<img class=orig src='{s.view}' width={vw} height={vh} alt='original'>
<img class=rec width={vw} height={vh} alt='reconstruction'>
<div class=divider></div><span class='tag left'>original</span><span class='tag right'></span>
</div>
<input class=split type=range min=0 max=100 step=0.1 value=50 style='width:{vw}px'
 aria-label='split: original on the left, reconstruction on the right'>
<p class=caption></p>
<table class=shown><caption>the images shown: real files, their own rate and metrics</caption>
<thead><tr><th>codec</th><th>bpp</th><th>PSNR (dB)</th><th>MS-SSIM</th><th>ST-LPIPS</th></tr>
</thead><tbody>{rows}</tbody></table>
<h3>1:1 crops of the most detailed region</h3>
<div class=crops><figure><img src='{s.crop}' width={cw} height={ch} alt='original'>
<figcaption>original<br>&nbsp;</figcaption></figure>{crops}</div>
</section>"""


def _table(summary: list[dict[str, Any]]) -> str:
    patches = any("patch_fid" in row for row in summary)
    head = ["target", "codec", "images", "bpp", "PSNR (dB)", "MS-SSIM", "ST-LPIPS"]
    if patches:
        head += ["patch FID", "patch KID ×1000", "patches"]
    rows = []
    for r in summary:
        cells = [
            _esc(r["target"]),
            _esc(r["codec"]),
            f"{r['images']}/{r['images'] + r['excluded']}",
            *(_num(v, digits) for v, digits in summary_numbers(r, patches)),
        ]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return (
        "<table class=summary><caption>metrics interpolated at matched bpp, mean over images"
        "</caption><thead><tr>" + "".join(f"<th>{c}</th>" for c in head) + "</tr></thead>"
        "<tbody>" + "".join(rows) + "</tbody></table>"
    )


def _bd_table(rows: list[dict[str, Any]]) -> str:
    """compare's Bjøntegaard deltas; nothing when all are null (no curve has 2 points)."""
    if all(v is None for r in rows for k, v in r.items() if k.startswith("bd_")):
        return ""
    head = ["curve", "reference", "points", "BD-rate PSNR (%)", "BD-rate MS-SSIM (%)",
            "BD-PSNR (dB)"]  # fmt: skip
    body = "".join(
        f"<tr><td>{_esc(r['curve'])}</td><td>{_esc(r['reference'])}</td>"
        f"<td>{r['points']}/{r['reference_points']}</td><td>{_num(r['bd_rate_psnr'], 1)}</td>"
        f"<td>{_num(r['bd_rate_msssim'], 1)}</td><td>{_num(r['bd_psnr'], 2)}</td></tr>"
        for r in rows
    )
    return (
        "<table class=bd><caption>Bjøntegaard deltas of each curve against the reference"
        " (mean-over-images points; BD-rate &lt; 0 or BD-PSNR &gt; 0: the curve does better)"
        "</caption><thead><tr>" + "".join(f"<th>{c}</th>" for c in head) + "</tr></thead>"
        "<tbody>" + body + "</tbody></table>"
    )


HEAD = """<!doctype html>
<html lang=en><head><meta charset=utf-8>
<meta name=viewport content='width=device-width, initial-scale=1'>
<title>gqtok compare</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#fafafa;color:#222}
main{max-width:1100px;margin:0 auto;padding:12px 16px}
section{margin:0 0 32px}
h2{font-size:18px;overflow-wrap:anywhere}
.meta,.dims{color:#555}
.cmp{position:relative;max-width:100%;line-height:0;background:#ddd;margin-top:6px}
.tag{position:absolute;top:6px;line-height:1.3;font-size:12px;padding:2px 6px;color:#fff;
 background:rgba(0,0,0,.6);border-radius:3px;pointer-events:none;white-space:nowrap;
 max-width:40%;overflow:hidden;text-overflow:ellipsis}
.tag.left{left:6px}
.tag.right{right:6px}
.caption{margin:2px 0 8px}
.cmp img{display:block;max-width:100%;height:auto}
.cmp img.rec{position:absolute;top:0;left:0;width:100%;height:100%;clip-path:inset(0 0 0 50%)}
.divider{position:absolute;top:0;bottom:0;left:50%;width:0;border-left:1px solid #fff;
 pointer-events:none}
input.split{display:block;max-width:100%;margin:4px 0 0}
.crops{display:flex;flex-wrap:wrap;gap:8px;overflow-x:auto}
.crops figure{margin:0;padding:3px;border:2px solid transparent}
.crops figure.chosen{border-color:#1f77b4}
.crops img{display:block;image-rendering:pixelated}
figcaption{font-size:12px}
img.rdplot{max-width:100%}
table{border-collapse:collapse;margin:12px 0}
caption{text-align:left;color:#555;padding:2px 0}
td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}
td:nth-child(-n+2),th:nth-child(-n+2){text-align:left;overflow-wrap:anywhere}
</style></head><body><main>"""

HOWTO = """<p>Per image: drag the slider (or focus it and use the arrow keys): left of the line is
the original, right of it the codec chosen in the list. gqtok is shown as decoded from its .gq
file. The classical codecs cannot hit a rate exactly, so each shows the real decoded file at the
quality whose rate is nearest gqtok's on that image, with that file's own bpp and metrics. All
images are lossless PNG; the crops are at native pixels. The table's numbers are interpolated
at exactly the matched rate.</p>"""

SCRIPT = """<script>
for (const s of document.querySelectorAll("section.image")) {
  const rec = s.querySelector("img.rec"), split = s.querySelector("input.split");
  const pick = s.querySelector("select.pick"), tag = s.querySelector(".tag.right");
  const caption = s.querySelector(".caption");
  const line = s.querySelector(".divider"), figs = s.querySelectorAll(".crops figure");
  const place = () => {
    rec.style.clipPath = "inset(0 0 0 " + split.value + "%)";
    line.style.left = split.value + "%";
  };
  const choose = () => {
    const o = pick.selectedOptions[0];
    rec.src = o.dataset.src;
    rec.alt = caption.textContent = o.dataset.caption;
    tag.textContent = o.dataset.tag;
    for (const f of figs) f.classList.toggle("chosen", f.dataset.pick === o.value);
  };
  split.addEventListener("input", place);
  pick.addEventListener("change", choose);
  place();
  choose();
}
</script>"""
