"""``gqtok compare``: rate-distortion of gqtok against JPEG, WebP and AVIF at matched bpp.

Classical codecs have a quality knob, not a rate knob, so for each image and target rate the
quality is searched (rate = the real encoded file's size) for the two adjacent settings whose
rates bracket the target, both are decoded and measured, and the metric is interpolated
linearly in bpp between them. A target outside the codec's reachable range for an image is not
extrapolated: that image is excluded for that codec and rate, and the exclusions are counted.
gqtok has no rate knob: each model is shown at its own rate, and the classical codecs are also
interpolated at gqtok's exact per-image rate ("@model" rows), the fairest single comparison.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, features

from gqtok.errors import GqtokError, OutputError
from gqtok.eval.evaluate import json_safe, preprocess, roundtrip
from gqtok.eval.metrics import MetricUnavailable
from gqtok.eval.metrics import fidelity as px
from gqtok.io.images import DEFAULT_MAX_PIXELS, Picture, read_image
from gqtok.model import Model

METRICS = ("psnr", "msssim", "stlpips_alex")
CSV_COLUMNS = (
    "image",
    "codec",
    "target",
    "target_bpp",
    "bpp",
    "quality_lo",
    "quality_hi",
    "bpp_lo",
    "bpp_hi",
    *METRICS,
    "status",
)


@dataclass(frozen=True)
class Codec:
    """A classical codec as Pillow drives it; qualities are ordered so that rate grows."""

    name: str
    pil_format: str
    qualities: tuple[int, ...]
    options: tuple[tuple[str, Any], ...] = ()

    def encode(self, rgb: np.ndarray, quality: int) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, self.pil_format, quality=quality, **dict(self.options))
        return buf.getvalue()

    @staticmethod
    def decode(data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))


# Pillow defaults apart from: optimised Huffman tables for JPEG (what any size-aware encoder
# does), WebP's slowest/best method, and single-threaded AVIF so sizes are reproducible.
CODECS = {
    "jpeg": Codec("jpeg", "JPEG", tuple(range(1, 101)), (("optimize", True),)),
    "webp": Codec("webp", "WEBP", tuple(range(0, 101)), (("method", 6),)),
    "avif": Codec("avif", "AVIF", tuple(range(0, 101)), (("max_threads", 1),)),
}


def available_codecs() -> tuple[list[str], dict[str, str]]:
    """(codec names this Pillow can write, {skipped name: reason})."""
    names, skipped = [], {}
    for name in CODECS:
        if name == "avif" and not features.check("avif"):
            skipped[name] = "this Pillow build has no AVIF support (features.check('avif'))"
        elif name == "webp" and not features.check("webp"):
            skipped[name] = "this Pillow build has no WebP support"
        else:
            names.append(name)
    return names, skipped


Measure = Callable[[np.ndarray, np.ndarray], dict[str, float | None]]


def make_measure(stlpips: Callable[[np.ndarray, np.ndarray], float] | None) -> Measure:
    def measure(a: np.ndarray, b: np.ndarray) -> dict[str, float | None]:
        return {
            "psnr": px.psnr(a, b),
            "msssim": px.ms_ssim(a, b)[0],
            "stlpips_alex": stlpips(a, b) if stlpips else None,
        }

    return measure


class Sweep:
    """One image under one codec: file sizes and metrics per quality, computed on demand."""

    def __init__(self, codec: Codec, rgb: np.ndarray, measure: Measure) -> None:
        self.codec, self.rgb, self.measure = codec, rgb, measure
        self.pixels = rgb.shape[0] * rgb.shape[1]
        self._data: dict[int, bytes] = {}
        self._metrics: dict[int, dict[str, float | None]] = {}

    def bpp(self, q: int) -> float:
        if q not in self._data:
            self._data[q] = self.codec.encode(self.rgb, q)
        return len(self._data[q]) * 8 / self.pixels

    def metrics(self, q: int) -> dict[str, float | None]:
        if q not in self._metrics:
            self.bpp(q)
            self._metrics[q] = self.measure(self.rgb, self.codec.decode(self._data[q]))
        return self._metrics[q]

    def bracket(self, target: float) -> tuple[int, int] | str:
        """Adjacent qualities (lo, hi) with bpp(lo) <= target <= bpp(hi), or why there are none.

        Binary search assumes rate grows with quality; where it does not, a linear scan finds
        the first adjacent pair that brackets the target.
        """
        qs = self.codec.qualities
        if self.bpp(qs[0]) > target:
            return "below_range"
        if self.bpp(qs[-1]) < target:
            return "above_range"
        lo, hi = 0, len(qs) - 1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.bpp(qs[mid]) <= target:
                lo = mid
            else:
                hi = mid
        if self.bpp(qs[lo]) <= target <= self.bpp(qs[hi]):
            return qs[lo], qs[hi]
        for a, b in zip(qs, qs[1:], strict=False):
            if self.bpp(a) <= target <= self.bpp(b):
                return a, b
        return "above_range"

    def at(self, target: float) -> dict[str, Any]:
        """Metrics interpolated linearly in bpp at ``target`` (or the exclusion status)."""
        found = self.bracket(target)
        if isinstance(found, str):
            return {"status": found}
        qlo, qhi = found
        blo, bhi = self.bpp(qlo), self.bpp(qhi)
        w = 0.0 if bhi == blo else (target - blo) / (bhi - blo)
        mlo, mhi = self.metrics(qlo), self.metrics(qhi)
        out: dict[str, Any] = {
            "status": "ok",
            "bpp": target,
            "quality_lo": qlo,
            "quality_hi": qhi,
            "bpp_lo": blo,
            "bpp_hi": bhi,
        }
        for k in METRICS:
            a, b = mlo.get(k), mhi.get(k)
            out[k] = None if a is None or b is None else a + w * (b - a)
        return out


@dataclass
class CompareReport:
    targets: list[float]
    codecs: list[str]
    models: list[str]
    points: list[dict[str, Any]] = field(default_factory=list)
    summary: list[dict[str, Any]] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["failures"] = [{"path": p, "error": e} for p, e in self.failures]
        return json_safe(d)


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def _summarise(report: CompareReport) -> None:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for p in report.points:
        groups.setdefault((p["target"], p["codec"]), []).append(p)
    order = {c: i for i, c in enumerate(CODECS)}

    def key(item: tuple[tuple[str, str], list[dict[str, Any]]]) -> tuple[Any, ...]:
        (target, codec), pts = item
        numeric = not target.startswith("@")
        return (not numeric, pts[0]["target_bpp"] if numeric else target, order.get(codec, -1))

    for (target, codec), pts in sorted(groups.items(), key=key):
        ok = [p for p in pts if p["status"] == "ok"]
        row: dict[str, Any] = {
            "target": target,
            "codec": codec,
            "images": len(ok),
            "excluded": len(pts) - len(ok),
            "bpp": _mean([p["bpp"] for p in ok]),
        }
        for k in METRICS:
            row[k] = _mean([p.get(k) for p in ok])
        report.summary.append(row)
        if len(ok) < len(pts):
            report.notes.append(
                f"{codec} @ {target}: {len(pts) - len(ok)} of {len(pts)} image(s) excluded"
                " (target bpp outside the codec's reachable range); not plotted"
            )


def _image_points(
    name: str,
    targets: Sequence[float],
    models: Sequence[Model],
    codecs: Sequence[str],
    measure: Measure,
    resize: int | None,
    center_crop: int | None,
    max_pixels: int,
) -> list[dict[str, Any]]:
    """All RD points of one image; any failure drops the image as a whole."""
    rgb = preprocess(read_image(name, max_pixels=max_pixels, name=name).rgb, resize, center_crop)
    points = []
    own = []
    for model in models:
        rec, nbytes, _ = roundtrip(model, Picture(rgb, None, "RGB", "PNG", 8))
        bpp = nbytes * 8 / (rgb.shape[0] * rgb.shape[1])
        own.append((model.name, bpp))
        point = {"image": name, "codec": f"gqtok:{model.name}", "target": f"@{model.name}"}
        point.update(target_bpp=bpp, bpp=bpp, status="ok", **measure(rgb, rec))
        points.append(point)
    rates = [(f"{t:g}", float(t)) for t in targets] + [(f"@{m}", b) for m, b in own]
    for codec in codecs:
        sweep = Sweep(CODECS[codec], rgb, measure)
        for label, bpp in rates:
            point = {"image": name, "codec": codec, "target": label, "target_bpp": bpp}
            points.append({**point, **sweep.at(bpp)})
    return points


def compare(
    paths: Sequence[str | Path],
    targets: Sequence[float],
    models: Sequence[Model] = (),
    codecs: Sequence[str] | None = None,
    resize: int | None = None,
    center_crop: int | None = None,
    device: str = "cpu",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    on_image: Callable[[str, str | None], None] | None = None,
) -> CompareReport:
    """RD points of gqtok models and classical codecs on the given images."""
    names, skipped = available_codecs()
    if codecs is not None:
        names = [c for c in names if c in codecs]
    report = CompareReport([float(t) for t in targets], names, [m.name for m in models])
    report.notes += [f"{c}: skipped, {why}" for c, why in skipped.items()]
    try:
        from gqtok.eval.metrics.lpips import load_distance

        stlpips = load_distance("stlpips_alex", device)
    except MetricUnavailable as e:
        stlpips = None
        report.notes.append(f"stlpips_alex: not available offline ({e})")
    measure = make_measure(stlpips)
    for path in paths:
        name = str(path)
        try:
            points = _image_points(name, targets, models, names, measure, resize, center_crop,
                                   max_pixels)  # fmt: skip
        except Exception as e:  # noqa: BLE001 - one bad image never ends the run
            msg = str(e) if isinstance(e, GqtokError) and e.path else f"{name}: {e}"
            report.failures.append((name, msg))
            if on_image:
                on_image(name, msg)
            continue
        report.points += points
        if on_image:
            on_image(name, None)
    _summarise(report)
    return report


def write_outputs(report: CompareReport, outdir: Path) -> dict[str, Path]:
    """rd_points.csv, rd.json and rd_plot.png in ``outdir``; returns their paths."""
    from gqtok.eval.rdplot import plot_rd

    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create folder ({e.strerror or e})", str(outdir)) from None
    paths = {
        "csv": outdir / "rd_points.csv",
        "json": outdir / "rd.json",
        "png": outdir / "rd_plot.png",
    }
    with paths["csv"].open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for p in report.points:
            w.writerow({k: ("" if p.get(k) is None else p.get(k)) for k in CSV_COLUMNS})
    paths["json"].write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    plot_rd(report.summary, paths["png"])
    return paths
