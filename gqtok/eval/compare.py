"""``gqtok compare``: rate-distortion of gqtok against JPEG, WebP, AVIF, JPEG XL and HEIF (HEVC)
at matched bpp.

Classical codecs have a quality knob, not a rate knob, so for each image and target rate the
quality is searched (rate = the real encoded file's size) for the two adjacent settings whose
rates bracket the target, both are decoded and measured, and the metric is interpolated
linearly in bpp between them. A target outside the codec's reachable range for an image is not
extrapolated: that image is excluded for that codec and rate, and the exclusions are counted.
gqtok is shown at its own rate per model, and the classical codecs are also interpolated at
gqtok's exact per-image rate ("@model" rows), the fairest single comparison; with ``qualities``
each model is coded at each quality of gqtok.codec.rate (one "@model qQ" target each), which
makes gqtok's curve.
Several decoders of one model (``Model.with_decoder``) share its tokens and so its rate: the
image is encoded once, decoded by each, and each is a row (``gqtok:<model>+<decoder>``) of
the same "@model" target.

With ``patch_fid=True``, patch FID/KID (HiFiC protocol, see ``metrics.patches``) is computed per
codec and target over all images: a set metric cannot be interpolated image by image, so the
patch features of the reconstructions at the lower and at the upper bracketing quality are
pooled into two sets, FID/KID is computed for each, and the two values are interpolated linearly
at the set's mean target bpp between the two sets' mean bpps.

Bjøntegaard deltas (``bjontegaard``) summarise whole curves: each curve is its mean-over-images
(bpp, metric) points, a classical codec's at the ``targets``, and every gqtok curve is compared
with every classical codec (and every classical codec with the first one, JPEG by default).
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, features

from gqtok.errors import GqtokError, OutputError
from gqtok.eval.bjontegaard import bd_metric, bd_rate
from gqtok.eval.evaluate import json_safe, preprocess, roundtrip
from gqtok.eval.metrics import MetricUnavailable
from gqtok.eval.metrics import fidelity as px
from gqtok.io.images import DEFAULT_MAX_PIXELS, Picture, read_image
from gqtok.model import Model

if TYPE_CHECKING:
    from gqtok.eval.metrics.inception import InceptionFeatures

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
    """A classical codec as Pillow drives it; qualities are ordered so that rate grows.

    ``seam``: the first quality after a switch of the encoder's mode, below which, on some
    images only, files are larger than at the seam. Per image, the qualities below it are kept
    only while their rate stays below the seam's (``Sweep.qualities``)."""

    name: str
    pil_format: str
    qualities: tuple[int, ...]
    options: tuple[tuple[str, Any], ...] = ()
    seam: int | None = None

    def encode(self, rgb: np.ndarray, quality: int) -> bytes:
        why = load_plugin(self.pil_format)
        if why:
            raise GqtokError(f"{self.name}: {why}")
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, self.pil_format, quality=quality, **dict(self.options))
        return buf.getvalue()

    @staticmethod
    def decode(data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))


# Pillow defaults apart from: optimised Huffman tables for JPEG (what any size-aware encoder
# does), WebP's slowest/best method, and single-threaded AVIF, JPEG XL and HEVC so sizes are
# reproducible (the same bytes as multi-threaded, measured for JPEG XL and HEVC).
# JPEG XL (libjxl, effort 7): quality 100 is refused unless lossless, so the sweep ends at 99;
# below quality 19 libjxl switches mode: on a 768x512 photo the rate goes on smoothly, on the
# small test photos it jumps up (quality 18 costs 10-30 % more than 19, for about the same or
# a lower PSNR), so 19 is a seam (see Codec).
# HEIF (libheif + x265, 4:2:0): quality maps to the quantiser in steps of about 2 (neighbouring
# qualities often give the same file) and 95-100 give one file, so the sweep ends at 95; x265's
# thread pool is one thread.
CODECS = {
    "jpeg": Codec("jpeg", "JPEG", tuple(range(1, 101)), (("optimize", True),)),
    "webp": Codec("webp", "WEBP", tuple(range(0, 101)), (("method", 6),)),
    "avif": Codec("avif", "AVIF", tuple(range(0, 101)), (("max_threads", 1),)),
    "jxl": Codec("jxl", "JXL", tuple(range(0, 100)), (("num_threads", 0),), seam=19),
    "heif": Codec("heif", "HEIF", tuple(range(0, 96)), (("enc_params", {"x265:pools": "1"}),)),
}


def _register_jxl() -> None:
    import pillow_jxl  # noqa: F401 - importing it registers the "JXL" format with Pillow


def _register_heif() -> None:
    from pillow_heif import register_heif_opener

    register_heif_opener()


# Formats that come from a Pillow plugin on PyPI (in the ``metrics`` extra): package, registration.
PLUGINS: dict[str, tuple[str, Callable[[], None]]] = {
    "JXL": ("pillow-jxl-plugin", _register_jxl),
    "HEIF": ("pillow-heif", _register_heif),
}


def load_plugin(pil_format: str) -> str | None:
    """Register the plugin that gives Pillow ``pil_format``, if it needs one and is not yet
    registered; None when done or not needed, otherwise why it cannot be."""
    entry = PLUGINS.get(pil_format)
    if entry is None or pil_format in Image.SAVE:
        return None
    package, register = entry
    try:
        register()
    except (ImportError, OSError) as e:
        return f"the Pillow plugin {package} is not installed ({e}; pip install {package})"
    return None if pil_format in Image.SAVE else f"{package} registered no {pil_format} writer"


def available_codecs() -> tuple[list[str], dict[str, str]]:
    """(codec names this Pillow can write, {skipped name: reason})."""
    names, skipped = [], {}
    for name, codec in CODECS.items():
        why = load_plugin(codec.pil_format)
        if why:
            skipped[name] = why
        elif name == "avif" and not features.check("avif"):
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

    def decoded(self, q: int) -> np.ndarray:
        self.bpp(q)
        return self.codec.decode(self._data[q])

    def metrics(self, q: int) -> dict[str, float | None]:
        if q not in self._metrics:
            self.bpp(q)
            self._metrics[q] = self.measure(self.rgb, self.codec.decode(self._data[q]))
        return self._metrics[q]

    @functools.cached_property
    def qualities(self) -> tuple[int, ...]:
        """The codec's qualities for this image: at a seam, those below it whose rate is not
        below the seam's are left out (costs up to 6 encodings), so that rate grows along the
        list and the search does not bracket a target with the costlier branch."""
        qs, seam = self.codec.qualities, self.codec.seam
        if seam is None:
            return qs
        i = qs.index(seam)
        cut, lo, hi = self.bpp(seam), 0, i  # rate grows within the lower branch
        while lo < hi:
            mid = (lo + hi) // 2
            if self.bpp(qs[mid]) < cut:
                lo = mid + 1
            else:
                hi = mid
        return qs[:lo] + qs[i:]

    def bracket(self, target: float) -> tuple[int, int] | str:
        """Adjacent qualities (lo, hi) with bpp(lo) <= target <= bpp(hi), or why there are none.

        Binary search assumes rate grows with quality; where it does not, a linear scan finds
        the first adjacent pair that brackets the target.
        """
        qs = self.qualities
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
class PatchGroup:
    """Patch features of one (target, codec) over the images: originals, reconstructions at the
    lower and upper bracketing quality (gqtok: its one reconstruction in both), and the rates."""

    orig: list[np.ndarray] = field(default_factory=list)
    lo: list[np.ndarray] = field(default_factory=list)
    hi: list[np.ndarray] = field(default_factory=list)
    bpp_lo: list[float] = field(default_factory=list)
    bpp_hi: list[float] = field(default_factory=list)
    target: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        from gqtok.eval.metrics.inception import frechet_distance, kernel_inception_distance

        a = np.concatenate(self.orig)
        n = len(a)
        out: dict[str, Any] = {"patch_fid": None, "patch_kid": None, "patch_fid_patches": n}
        lo, hi = np.concatenate(self.lo), np.concatenate(self.hi)
        blo, bhi = float(np.mean(self.bpp_lo)), float(np.mean(self.bpp_hi))
        w = 0.0 if bhi == blo else (float(np.mean(self.target)) - blo) / (bhi - blo)
        same = all(x is y for x, y in zip(self.lo, self.hi, strict=True))
        if n >= 2:
            flo = frechet_distance(a, lo)
            out["patch_fid"] = flo if same else flo + w * (frechet_distance(a, hi) - flo)
        if n >= 4:
            klo = kernel_inception_distance(a, lo).mean
            khi = klo if same else kernel_inception_distance(a, hi).mean
            out["patch_kid"] = klo + w * (khi - klo)
        return out


@dataclass(frozen=True)
class Reconstruction:
    """One decoded image shown at gqtok's matched rate, for reports that show pixels (the HTML
    page): a real file's decoding with that file's own rate and metrics, not interpolated ones."""

    image: str
    codec: str  # "gqtok:<model>" or a classical codec name
    target: str  # "@<model>": the gqtok rate this image is matched to
    original: np.ndarray  # the image the metrics compare against (after resize/crop)
    rgb: np.ndarray
    bpp: float  # the real file's rate
    quality: int | None  # classical codecs: the quality setting; None for gqtok
    metrics: dict[str, float | None]


OnReconstruction = Callable[[Reconstruction], None]


def closest_quality(point: dict[str, Any]) -> int:
    """Of an ok point's two bracketing qualities, the one whose real rate is nearer the target
    (ties go to the lower rate, so the image shown never costs more than gqtok's when equal)."""
    lo = abs(point["target_bpp"] - point["bpp_lo"])
    hi = abs(point["bpp_hi"] - point["target_bpp"])
    return point["quality_lo"] if lo <= hi else point["quality_hi"]


PatchPending = list[tuple[tuple[str, str], np.ndarray, np.ndarray, np.ndarray, float, float, float]]


@dataclass
class CompareReport:
    targets: list[float]
    codecs: list[str]
    models: list[str]
    points: list[dict[str, Any]] = field(default_factory=list)
    summary: list[dict[str, Any]] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    bd: list[dict[str, Any]] = field(default_factory=list)  # Bjøntegaard deltas, see bd_rows
    color: bool | None = None  # gqtok's colour correction: None as gqtok encode, True every file

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["failures"] = [{"path": p, "error": e} for p, e in self.failures]
        return json_safe(d)


def summary_numbers(row: dict[str, Any], patches: bool) -> list[tuple[float | None, int]]:
    """The numeric cells of a summary row as (value, decimals), in the order the table and the
    HTML page show them: bpp, PSNR, MS-SSIM, ST-LPIPS, then patch FID, KID x 1000 and the
    patch count when the report has patch metrics."""
    cells: list[tuple[float | None, int]] = [
        (row["bpp"], 4), (row["psnr"], 2), (row["msssim"], 4), (row["stlpips_alex"], 4)]
    if patches:
        kid = row.get("patch_kid")
        cells += [(row.get("patch_fid"), 2), (None if kid is None else kid * 1000, 3),
                  (row.get("patch_fid_patches", 0), 0)]
    return cells


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def _summarise(report: CompareReport, patches: dict[tuple[str, str], PatchGroup] | None) -> None:
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
        if patches is not None:
            group = patches.get((target, codec))
            if group is None:
                row.update(patch_fid=None, patch_kid=None, patch_fid_patches=0)
            else:
                row.update(group.summary())
        report.summary.append(row)
        if len(ok) < len(pts):
            report.notes.append(
                f"{codec} @ {target}: {len(pts) - len(ok)} of {len(pts)} image(s) excluded"
                " (target bpp outside the codec's reachable range); not plotted"
            )


# Bjøntegaard deltas in the report: (field, metric, function, the range both curves must share).
BD_FIELDS = (
    ("bd_rate_psnr", "psnr", bd_rate, "PSNR"),
    ("bd_rate_msssim", "msssim", bd_rate, "MS-SSIM"),
    ("bd_psnr", "psnr", bd_metric, "bpp"),
)


def rd_curves(summary: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Curve name -> its summary rows by rate: a classical codec's rows at the numeric targets
    (its "@model" rows are points at gqtok's per-image rates, not targets), a gqtok row
    label's rows. Rows with excluded images are left out, as in the plot: their mean is over
    another subset of images than the curve's other points."""
    curves: dict[str, list[dict[str, Any]]] = {}
    for row in summary:
        if row.get("bpp") is None or not row.get("images") or row.get("excluded"):
            continue
        if row["codec"] in CODECS and row["target"].startswith("@"):
            continue
        curves.setdefault(row["codec"], []).append(row)
    return {k: sorted(v, key=lambda r: r["bpp"]) for k, v in curves.items()}


def bd_rows(summary: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Bjøntegaard deltas of every gqtok curve against every classical codec, and of every
    classical codec against the first one of the run (JPEG by default), on the mean-over-images
    curves of ``rd_curves``; and notes on the deltas that are null and why.

    Each row: ``curve``, ``reference``, their point counts, ``bd_rate_psnr`` and
    ``bd_rate_msssim`` (% rate of the curve against the reference at equal PSNR / MS-SSIM;
    negative: the curve needs fewer bits) and ``bd_psnr`` (dB at equal rate; positive: the
    curve is better)."""
    curves = rd_curves(summary)
    classical = [c for c in CODECS if c in curves]
    pairs = [(c, ref) for c in curves if c not in CODECS for ref in classical]
    pairs += [(c, classical[0]) for c in classical[1:]]
    rows, notes = [], []
    short = [c for c in curves if len(curves[c]) < 2 and any(c in pair for pair in pairs)]
    if short:
        notes.append(f"bd: under 2 points on the curve of {', '.join(short)} (gqtok: one per"
                     " model; classical codecs: one per --bpp target), so their Bjøntegaard"
                     " deltas are null")  # fmt: skip
    for curve, ref in pairs:
        a, b = curves[ref], curves[curve]
        row: dict[str, Any] = {"curve": curve, "reference": ref, "points": len(b),
                               "reference_points": len(a)}  # fmt: skip
        for name, metric, delta, shared in BD_FIELDS:
            row[name] = delta([r["bpp"] for r in a], [r[metric] for r in a],
                              [r["bpp"] for r in b], [r[metric] for r in b])  # fmt: skip
            if row[name] is None and curve not in short and ref not in short:
                notes.append(f"bd: {curve} against {ref}: no {name} (no shared {shared} range,"
                             " or under 2 points with a value; not extrapolated)")  # fmt: skip
        rows.append(row)
    return rows, notes


def _image_points(
    name: str,
    targets: Sequence[float],
    models: Sequence[Model],
    codecs: Sequence[str],
    measure: Measure,
    resize: int | None,
    center_crop: int | None,
    max_pixels: int,
    inception: InceptionFeatures | None = None,
    on_reconstruction: OnReconstruction | None = None,
    qualities: Sequence[float] = (),
    color: bool | None = None,
) -> tuple[list[dict[str, Any]], PatchPending]:
    """All RD points of one image, and its patch features per (target, codec) when
    ``inception`` is given; any failure drops the image as a whole. ``on_reconstruction`` gets
    each gqtok reconstruction and, per classical codec and "@model" rate, the decoded file at
    the bracketing quality nearest that rate. With ``qualities``, each model is coded at each
    (gqtok.codec.rate), one "@model qQ" target each: gqtok's curve. ``color`` as in
    ``gqtok.codec.encode_pictures``."""
    from gqtok.eval.metrics.patches import patch_features

    rgb = preprocess(read_image(name, max_pixels=max_pixels, name=name).rgb, resize, center_crop)
    points = []
    own = []
    pending: PatchPending = []
    orig = None
    if inception is not None:
        orig = patch_features(inception, rgb)
        if not len(orig):
            inception = None  # smaller than a patch: no patch features for this image
    coded: dict[tuple[Any, ...], Any] = {}
    # (model, quality): at a low quality a model may code with its coarse-codebook model
    # (gqtok.codec.rate.at_size), still one curve under its own name
    runs = [(m, None) for m in models] if not qualities else [
        (m, q) for m in models for q in qualities
    ]  # fmt: skip
    for named, q in runs:
        rec, nbytes, _ = roundtrip(named, Picture(rgb, None, "RGB", "PNG", 8), coded, q,
                                  color=color)  # fmt: skip
        bpp = nbytes * 8 / (rgb.shape[0] * rgb.shape[1])
        target = f"@{named.name}" if q is None else f"@{named.name} q{q:g}"
        if (target, bpp) not in own:
            own.append((target, bpp))
        point = {"image": name, "codec": f"gqtok:{named.label}", "target": target}
        point.update(target_bpp=bpp, bpp=bpp, status="ok", **measure(rgb, rec))
        points.append(point)
        if on_reconstruction:
            metrics = {k: point[k] for k in METRICS}
            on_reconstruction(Reconstruction(name, point["codec"], point["target"], rgb, rec,
                                             bpp, None, metrics))  # fmt: skip
        if inception is not None and orig is not None:
            f = patch_features(inception, rec)
            pending.append(((point["target"], point["codec"]), orig, f, f, bpp, bpp, bpp))
    rates = [(f"{t:g}", float(t)) for t in targets] + own
    for codec in codecs:
        sweep = Sweep(CODECS[codec], rgb, measure)
        for label, bpp in rates:
            point = {"image": name, "codec": codec, "target": label, "target_bpp": bpp}
            point.update(sweep.at(bpp))
            points.append(point)
            if on_reconstruction and label.startswith("@") and point["status"] == "ok":
                q = closest_quality(point)
                on_reconstruction(Reconstruction(name, codec, label, rgb, sweep.decoded(q),
                                                 sweep.bpp(q), q, sweep.metrics(q)))  # fmt: skip
            if inception is not None and orig is not None and point["status"] == "ok":
                lo = patch_features(inception, sweep.decoded(point["quality_lo"]))
                hi = patch_features(inception, sweep.decoded(point["quality_hi"]))
                blo, bhi = point["bpp_lo"], point["bpp_hi"]
                pending.append(((label, codec), orig, lo, hi, blo, bhi, bpp))
    return points, pending


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
    patch_fid: bool = False,
    on_reconstruction: OnReconstruction | None = None,
    qualities: Sequence[float] = (),
    color: bool | None = None,
) -> CompareReport:
    """RD points of gqtok models and classical codecs on the given images (and patch FID/KID
    per codec and target with ``patch_fid``: slow, 2 Inception passes per patch and rate).
    ``on_reconstruction`` receives the images at gqtok's rate as they are made (see
    ``_image_points``), so a caller can keep what it shows without holding every image.
    ``color``: gqtok's files with the colour correction where gqtok encode fits it (None),
    on every file (True, gqtok encode --color) or on none (False)."""
    names, skipped = available_codecs()
    if codecs is not None:
        names = [c for c in names if c in codecs]
    report = CompareReport([float(t) for t in targets], names, [m.label for m in models],
                           color=color)  # fmt: skip
    report.notes += [f"{c}: skipped, {why}" for c, why in skipped.items()]
    if color is not None:
        report.notes.append("gqtok: colour correction and restoration filter fitted to "
                            + ("every file (--color)" if color else "no file (--no-color)"))
    try:
        from gqtok.eval.metrics.lpips import load_distance

        stlpips = load_distance("stlpips_alex", device)
    except MetricUnavailable as e:
        stlpips = None
        report.notes.append(f"stlpips_alex: not available offline ({e})")
    measure = make_measure(stlpips)
    inception = None
    groups: dict[tuple[str, str], PatchGroup] | None = None
    if patch_fid:
        from gqtok.eval.metrics.inception import InceptionFeatures

        try:
            inception = InceptionFeatures(device=device)
            groups = {}
        except MetricUnavailable as e:
            report.notes.append(f"patch_fid: not available offline ({e})")
    for path in paths:
        name = str(path)
        try:
            points, pending = _image_points(name, targets, models, names, measure, resize,
                                            center_crop, max_pixels, inception,
                                            on_reconstruction, qualities, color)  # fmt: skip
        except Exception as e:  # noqa: BLE001 - one bad image never ends the run
            msg = str(e) if isinstance(e, GqtokError) and e.path else f"{name}: {e}"
            report.failures.append((name, msg))
            if on_image:
                on_image(name, msg)
            continue
        report.points += points
        for key, orig, lo, hi, blo, bhi, target in pending if groups is not None else []:
            g = groups.setdefault(key, PatchGroup())
            g.orig.append(orig)
            g.lo.append(lo)
            g.hi.append(hi)
            g.bpp_lo.append(blo)
            g.bpp_hi.append(bhi)
            g.target.append(target)
        if on_image:
            on_image(name, None)
    _summarise(report, groups)
    if groups is not None:
        _patch_notes(report)
    report.bd, notes = bd_rows(report.summary)
    report.notes += notes
    return report


def _patch_notes(report: CompareReport) -> None:
    from gqtok.eval.metrics.patches import FID_MIN_PATCHES, PATCH

    counts = sorted({row["patch_fid_patches"] for row in report.summary})
    if not counts or counts[-1] < 2:
        report.notes.append(
            f"patch_fid: no image gave 2 or more {PATCH} px patches; patch FID/KID undefined"
        )
    elif counts[0] < FID_MIN_PATCHES:
        report.notes.append(
            f"patch_fid: based on {counts[0]}-{counts[-1]} patches per codec and target; FID is"
            f" biased below ~{FID_MIN_PATCHES} (HiFiC used ~28k): compare patch KID"
        )


# One plot per metric, besides rd_plot.png with the three side by side.
PLOT_FILES = {"psnr": "rd_psnr.png", "msssim": "rd_msssim.png", "stlpips_alex": "rd_stlpips.png"}
REPORT_FILES = ("rd_points.csv", "rd.json", "rd_plot.png", *PLOT_FILES.values())


def report_files(report: CompareReport) -> dict[str, Callable[[Path], None]]:
    """Each report file's name (``REPORT_FILES``) -> a callback that writes it at a given path
    (any name: the plots are PNG whatever the suffix)."""
    from gqtok.eval.rdplot import plot_rd

    def points(path: Path) -> None:
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
            w.writeheader()
            for p in report.points:
                w.writerow({k: ("" if p.get(k) is None else p.get(k)) for k in CSV_COLUMNS})

    def rd_json(path: Path) -> None:
        path.write_text(json.dumps(report.to_dict(), indent=2) + "\n")

    def plot(metrics: Sequence[str]) -> Callable[[Path], None]:
        def fill(path: Path) -> None:
            plot_rd(report.summary, path, metrics=metrics)

        return fill

    fills = [points, rd_json, plot(METRICS), *(plot([m]) for m in PLOT_FILES)]
    return dict(zip(REPORT_FILES, fills, strict=True))


def write_outputs(report: CompareReport, outdir: Path) -> dict[str, Path]:
    """The ``REPORT_FILES`` in ``outdir``; returns their paths: "csv", "json", "png" (the three
    panels) and "png_<metric>" (one plot each)."""
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create folder ({e.strerror or e})", str(outdir)) from None
    keys = ("csv", "json", "png", *(f"png_{m}" for m in PLOT_FILES))
    paths = {}
    for key, (name, fill) in zip(keys, report_files(report).items(), strict=True):
        paths[key] = outdir / name
        fill(paths[key])
    return paths
