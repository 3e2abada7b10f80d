"""``gqtok eval``: quality of gqtok's real round trip (image -> .gq bytes -> image) over a set.

Every number comes from the path a user gets: the image is encoded to a complete .gq file, the
rate is that file's size (header and alpha plane included) over the pixel count, and the
metrics compare the original with the image decoded from those bytes. Metrics whose weights
are not installed are reported as unavailable (None), never approximated by something else.

The work is split in three steps so that one process and torchrun's N processes run the same
code: ``measure_image`` (one image -> a ``Measured`` record), ``measure`` (a process's share of
the list -> a ``Share``) and ``combine`` (all shares, put back in source order -> the report).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import numpy as np
from PIL import Image

from gqtok.dist import World
from gqtok.errors import GqtokError, InputError
from gqtok.eval.metrics import ALL_METRICS, MetricUnavailable
from gqtok.eval.metrics import fidelity as fid_px
from gqtok.eval.metrics.usage import TokenCounter, UsageSummary
from gqtok.io.files import IMAGE_EXTS
from gqtok.io.images import DEFAULT_MAX_PIXELS, Picture, read_image
from gqtok.model import Model

if TYPE_CHECKING:
    from gqtok.eval.metrics.inception import InceptionFeatures
    from gqtok.eval.metrics.patches import PatchFID

PER_IMAGE = ("psnr", "ssim", "msssim", "stlpips_alex", "stlpips_vgg", "lpips")
PERCEPTUAL = ("stlpips_alex", "stlpips_vgg", "lpips")
INCEPTION = ("fid", "kid", "patch_fid", "patch_kid")


@dataclass
class ImageRow:
    """Per-image result; a metric is None when not requested, unavailable or undefined."""

    path: str
    width: int
    height: int
    bytes: int
    bpp: float
    psnr: float | None = None
    ssim: float | None = None
    msssim: float | None = None
    msssim_scales: int | None = None
    stlpips_alex: float | None = None
    stlpips_vgg: float | None = None
    lpips: float | None = None


@dataclass
class Stat:
    mean: float | None
    std: float | None
    n: int


@dataclass
class EvalReport:
    model: str
    metrics: list[str]
    protocol: dict[str, Any]
    rows: list[ImageRow] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    summary: dict[str, Stat] = field(default_factory=dict)
    bpp_aggregate: float | None = None  # total bits / total pixels
    fid: float | None = None
    kid: dict[str, float | int] | None = None
    feature_images: int = 0  # images behind FID/KID
    patch_fid: float | None = None
    patch_kid: dict[str, float | int] | None = None
    patches: int = 0  # 256 px patches behind patch FID/KID (HiFiC protocol)
    usage: UsageSummary | None = None
    unavailable: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    decoder: str = "fidelity"  # which of the model's decoders made the images
    realism: float | None = None
    grain: float = 0.0  # synthetic film grain on the decoded pixels (8-bit levels)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (non-finite floats become None)."""
        out = {
            "model": self.model,
            "decoder": self.decoder,
            "realism": self.realism,
            "grain": self.grain,
            "metrics": self.metrics,
            "protocol": self.protocol,
            "images": len(self.rows),
            "failed": [{"path": p, "error": e} for p, e in self.failures],
            "summary": {k: asdict(v) for k, v in self.summary.items()},
            "bpp_aggregate": self.bpp_aggregate,
            "fid": self.fid,
            "kid": self.kid,
            "fid_kid_images": self.feature_images,
            "patch_fid": self.patch_fid,
            "patch_kid": self.patch_kid,
            "patch_fid_patches": self.patches,
            "codebook": self.usage.to_dict() if self.usage else None,
            "unavailable": self.unavailable,
            "notes": self.notes,
            "per_image": [asdict(r) for r in self.rows],
        }
        return json_safe(out)


def json_safe(x: Any) -> Any:
    """Replace non-finite floats (JSON has no inf/NaN) by None, recursively."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [json_safe(v) for v in x]
    return x


def collect_images(inputs: Iterable[str | Path], recursive: bool = False) -> list[Path]:
    """Files as given, plus the images inside folders (sorted; hidden files skipped)."""
    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            it = p.rglob("*") if recursive else p.glob("*")
            found.extend(
                sorted(
                    f
                    for f in it
                    if f.is_file() and f.suffix.lower() in IMAGE_EXTS and not f.name.startswith(".")
                )
            )
        else:
            found.append(p)
    return found


def preprocess(rgb: np.ndarray, resize: int | None, center_crop: int | None) -> np.ndarray:
    """The paper's protocol: shorter side to ``resize`` (Pillow bilinear, antialiased when
    shrinking, long side truncated like torchvision's Resize), then a centred square crop."""
    h, w = rgb.shape[:2]
    if resize:
        if h <= w:
            size = (int(resize * w / h), resize)
        else:
            size = (resize, int(resize * h / w))
        if size != (w, h):
            rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))
        h, w = rgb.shape[:2]
    if center_crop:
        if h < center_crop or w < center_crop:
            raise InputError(f"{w}x{h} is smaller than the {center_crop} px centre crop")
        top = int(round((h - center_crop) / 2.0))
        left = int(round((w - center_crop) / 2.0))
        rgb = rgb[top : top + center_crop, left : left + center_crop]
    return np.ascontiguousarray(rgb)


def roundtrip(
    model: Model,
    pic: Picture,
    coded: dict[tuple[Any, ...], Any] | None = None,
    quality: float | None = None,
    bpp: float | None = None,
    color: bool | None = None,
) -> tuple[np.ndarray, int, np.ndarray]:
    """(decoded RGB, .gq file size in bytes, token indices) through the real byte path, at
    ``quality`` or the setting whose file comes closest to ``bpp`` (gqtok.codec.rate) when
    given; ``color`` as in ``gqtok.codec.encode_pictures``.

    ``coded`` keeps the encodings of one picture: the tokens do not depend on the decoder, so
    the decoders of one model (Model.with_decoder) decode bytes encoded once.
    """
    from gqtok.codec import decode_bytes, encode_pictures
    from gqtok.codec.rate import at_size, quality_setting

    scale = None
    if quality is not None:  # the model that codes this quality decodes it (its coarse member)
        setting = quality_setting(model, quality)
        model, scale = at_size(model, setting.size), setting.scale
    key = (model.name, model.weights_sha256, model.quant, scale, bpp, color)
    enc = coded.get(key) if coded is not None else None
    if enc is None:
        rate = {"scale": scale} if bpp is None else {"bpp": bpp}
        enc = encode_pictures(model, [pic], **rate, color=color)[0]
        if coded is not None:
            coded[key] = enc
    if enc.rate is not None:  # the codebook size the search chose decodes (maybe coarse)
        model = at_size(model, enc.rate.size)
    image, _ = decode_bytes(enc.data, model)
    return np.asarray(image.convert("RGB")), len(enc.data), enc.tokens.indices.numpy()


def pixel_metrics(a: np.ndarray, b: np.ndarray, wanted: Sequence[str]) -> dict[str, Any]:
    """PSNR / SSIM / MS-SSIM values for the names in ``wanted``."""
    out: dict[str, Any] = {}
    if "psnr" in wanted:
        out["psnr"] = fid_px.psnr(a, b)
    if "ssim" in wanted:
        out["ssim"] = fid_px.ssim(a, b)
    if "msssim" in wanted:
        out["msssim"], out["msssim_scales"] = fid_px.ms_ssim(a, b)
    return out


def load_perceptual(
    names: Sequence[str], device: str, unavailable: dict[str, str]
) -> dict[str, Callable[[np.ndarray, np.ndarray], float]]:
    """The requested perceptual distances that can run here; the others go to ``unavailable``.

    Weight files that exist but fail their hash check raise (WeightsMismatch): a tampered
    network must stop the evaluation, not quietly drop a column.
    """
    from gqtok.eval.metrics.lpips import load_distance

    nets = {}
    for name in names:
        if name not in PERCEPTUAL:
            continue
        try:
            nets[name] = load_distance(name, device)
        except MetricUnavailable as e:
            unavailable[name] = f"not available offline ({e})"
    return nets


def _stat(values: list[float]) -> Stat:
    if not values:
        return Stat(None, None, 0)
    a = np.asarray(values, dtype=np.float64)
    return Stat(float(a.mean()), float(a.std()), len(values))


@dataclass
class Measured:
    """One image's results, as its process hands them on to the summary.

    ``index`` is the image's place in the whole list: rank 0 puts every rank's images back in
    source order, so means, FID and KID see the features in the order one process would.
    Features are float32, the Inception network's own precision (nothing is lost; half the
    memory of float64): ``features`` (2, 2048) for the whole original and reconstruction,
    ``patches`` (2, n, 2048) for their n patches (None without patches).
    """

    index: int
    path: str
    row: ImageRow | None = None
    error: str | None = None
    features: np.ndarray | None = None
    patches: np.ndarray | None = None


@dataclass
class Share:
    """What one process measured: its images, the token histogram of their tokens as used
    entries and counts (integer sums, so the shares can be added in any order), and the
    metrics it could not load."""

    images: list[Measured]
    tokens: tuple[np.ndarray, np.ndarray]
    unavailable: dict[str, str]


class Meters:
    """The networks of the requested metrics, loaded once per process; the ones that cannot
    load here are in ``unavailable`` (and so unavailable for the whole set)."""

    def __init__(self, wanted: Sequence[str], device: str) -> None:
        self.unavailable: dict[str, str] = {}
        self.nets = load_perceptual(wanted, device, self.unavailable)
        self.inception: InceptionFeatures | None = None
        self.whole = self.patches = False
        if any(m in wanted for m in INCEPTION):
            from gqtok.eval.metrics.inception import InceptionFeatures

            try:
                self.inception = InceptionFeatures(device=device)
            except MetricUnavailable as e:
                for m in INCEPTION:
                    if m in wanted:
                        self.unavailable[m] = f"not available offline ({e})"
            else:
                self.whole = "fid" in wanted or "kid" in wanted
                self.patches = "patch_fid" in wanted or "patch_kid" in wanted


def check_metrics(metrics: Sequence[str]) -> list[str]:
    """The requested metrics in ALL_METRICS order; ValueError for an unknown name."""
    unknown = sorted(set(metrics) - set(ALL_METRICS))
    if unknown:
        raise ValueError(f"unknown metrics {unknown} (choose from {list(ALL_METRICS)})")
    return [m for m in ALL_METRICS if m in metrics]


def measure_image(
    model: Model,
    index: int,
    path: str | Path,
    meters: Meters,
    wanted: Sequence[str],
    resize: int | None = None,
    center_crop: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    *,
    quality: float | None = None,
    bpp: float | None = None,
    color: bool | None = None,
) -> tuple[Measured, np.ndarray | None]:
    """One image through .gq bytes (at ``quality`` / ``bpp`` as in ``roundtrip``) and the
    metrics: its record and its token indices (None when it failed). Any exception of the
    image is its failure, never the run's."""
    name = str(path)
    try:
        pic = read_image(path, max_pixels=max_pixels, name=name)
        if resize or center_crop:
            rgb = preprocess(pic.rgb, resize, center_crop)
            pic = Picture(rgb, None, "RGB", pic.source_format, 8)
        rec, nbytes, indices = roundtrip(model, pic, quality=quality, bpp=bpp, color=color)
    except Exception as e:  # noqa: BLE001 - one bad image never ends the run
        if isinstance(e, GqtokError):
            msg = str(e) if e.path else f"{name}: {e}"
        else:
            msg = f"{name}: {type(e).__name__}: {e}"
        return Measured(index, name, error=msg), None
    h, w = pic.rgb.shape[:2]
    row = ImageRow(name, w, h, nbytes, nbytes * 8 / (w * h))
    for key, value in pixel_metrics(pic.rgb, rec, wanted).items():
        setattr(row, key, value)
    for key, dist in meters.nets.items():
        setattr(row, key, dist(pic.rgb, rec))
    out = Measured(index, name, row)
    net = meters.inception
    if net is not None and meters.whole:
        out.features = np.concatenate([net([pic.rgb]), net([rec])]).astype(np.float32)
    if net is not None and meters.patches:
        from gqtok.eval.metrics.patches import patch_features

        a = patch_features(net, pic.rgb)
        if len(a):
            out.patches = np.stack([a, patch_features(net, rec)]).astype(np.float32)
    return out, indices


def measure(
    model: Model,
    items: Iterable[tuple[int, str | Path]],
    wanted: Sequence[str],
    resize: int | None = None,
    center_crop: int | None = None,
    device: str = "cpu",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    on_image: Callable[[str, str | None], None] | None = None,
    *,
    quality: float | None = None,
    bpp: float | None = None,
    color: bool | None = None,
) -> Share:
    """This process's share: the (index, path) pairs it was given, measured in that order.

    ``on_image(path, error)`` is called after each image (error None on success).
    """
    meters = Meters(wanted, device)
    counter = TokenCounter(model.quant.size)
    images = []
    for index, path in items:
        record, indices = measure_image(
            model, index, path, meters, wanted, resize, center_crop, max_pixels,
            quality=quality, bpp=bpp, color=color,
        )  # fmt: skip
        if indices is not None:
            counter.add(indices)
        images.append(record)
        if on_image:
            on_image(record.path, record.error)
    used = np.flatnonzero(counter.counts)
    return Share(images, (used, counter.counts[used]), meters.unavailable)


def combine(
    model: Model,
    wanted: Sequence[str],
    shares: Iterable[Share],
    resize: int | None = None,
    center_crop: int | None = None,
    *,
    quality: float | None = None,
    bpp: float | None = None,
    color: bool | None = None,
) -> EvalReport:
    """One report from the shares of all processes, images in source order: the same report
    whichever process measured which image."""
    protocol: dict[str, Any] = {"resize": resize, "center_crop": center_crop, "color": "RGB"}
    if quality is not None:
        protocol["quality"] = quality
    if bpp is not None:
        protocol["target_bpp"] = bpp
    if color is not None:  # the colour correction fitted to every image (True) or none
        protocol["color_correction"] = color
    report = EvalReport(model.label, list(wanted), protocol)
    report.decoder, report.realism, report.grain = model.decoder_name, model.realism, model.grain
    size = model.quant.size
    if quality is not None:  # usage over the codebook this quality codes with
        from gqtok.codec.rate import quality_setting

        size = quality_setting(model, quality).size
    elif bpp is not None:
        report.notes.append(
            f"codebook usage: the --bpp search picks K per image; counted over K = {size}"
        )
    counter = TokenCounter(size)
    images: list[Measured] = []
    for share in shares:
        for name, why in share.unavailable.items():
            report.unavailable.setdefault(name, why)
        np.add.at(counter.counts, share.tokens[0], share.tokens[1])
        images.extend(share.images)
    images.sort(key=lambda m: m.index)
    for m in images:
        if m.row is None:
            report.failures.append((m.path, m.error or "failed"))
            continue
        for name in report.unavailable:  # a metric one rank lacks is missing for all images
            if name in PER_IMAGE:
                setattr(m.row, name, None)
        report.rows.append(m.row)
    done = [m for m in images if m.row is not None]
    whole = patches = None
    if not {"fid", "kid"} & set(report.unavailable):
        whole = [m.features for m in done if m.features is not None]
    if not {"patch_fid", "patch_kid"} & set(report.unavailable):
        patches = [m.patches for m in done if m.patches is not None]
    _summarise(report, list(wanted), _pairs(whole), counter)
    if patches is not None and ("patch_fid" in wanted or "patch_kid" in wanted):
        from gqtok.eval.metrics.patches import PatchFID

        acc = PatchFID()
        for pair in patches:
            acc.add_features(pair[0], pair[1])
        _summarise_patches(report, list(wanted), acc)
    return report


def _pairs(feats: list[np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
    """Original and reconstruction features of whole images, one row per image in image
    order, in float64 as FID and KID compute (float32 to float64 is exact)."""
    from gqtok.eval.metrics.inception import FEATURES

    if not feats:
        return np.zeros((0, FEATURES)), np.zeros((0, FEATURES))
    a, b = ([f[i].reshape(-1, FEATURES) for f in feats] for i in (0, 1))
    return np.concatenate(a).astype(np.float64), np.concatenate(b).astype(np.float64)


@overload
def evaluate(
    model: Model,
    paths: Sequence[str | Path],
    metrics: Sequence[str] = ...,
    resize: int | None = ...,
    center_crop: int | None = ...,
    device: str = ...,
    max_pixels: int = ...,
    on_image: Callable[[str, str | None], None] | None = ...,
    world: None = ...,
    *,
    quality: float | None = ...,
    bpp: float | None = ...,
    color: bool | None = ...,
) -> EvalReport: ...
@overload
def evaluate(
    model: Model,
    paths: Sequence[str | Path],
    metrics: Sequence[str] = ...,
    resize: int | None = ...,
    center_crop: int | None = ...,
    device: str = ...,
    max_pixels: int = ...,
    on_image: Callable[[str, str | None], None] | None = ...,
    world: World = ...,
    *,
    quality: float | None = ...,
    bpp: float | None = ...,
    color: bool | None = ...,
) -> EvalReport | None: ...
def evaluate(
    model: Model,
    paths: Sequence[str | Path],
    metrics: Sequence[str] = ALL_METRICS,
    resize: int | None = None,
    center_crop: int | None = None,
    device: str = "cpu",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    on_image: Callable[[str, str | None], None] | None = None,
    world: World | None = None,
    *,
    quality: float | None = None,
    bpp: float | None = None,
    color: bool | None = None,
) -> EvalReport | None:
    """Round-trip every image through .gq bytes and measure it; failures are recorded, not fatal.
    ``quality`` (0..100) or a target ``bpp`` codes each image as ``gqtok encode --quality`` /
    ``--bpp`` would (one at most); by default at the model's own setting. ``color`` as
    ``gqtok encode --color`` (True) / ``--no-color`` (False).

    ``on_image(path, error)`` is called after each of this process's images (error None on
    success). With a ``world`` of several ranks (torchrun), every rank measures its
    ``world.part`` of ``paths`` (the same list on every rank) and rank 0 gathers the records
    and returns the report, the one a single process would give; the other ranks return None.
    A job array's rank (no process group) gets the report of its own share alone.
    """
    wanted = check_metrics(metrics)
    world = world or World()
    mine = world.part(list(enumerate(paths)))
    if quality is not None and bpp is not None:
        raise ValueError("give a quality or a target bpp, not both")
    from gqtok.codec.rate import check_bpp, check_quality

    if quality is not None:  # a bad setting is the caller's error, not every image's
        check_quality(quality)
    if bpp is not None:
        check_bpp(bpp)
    rate = {"quality": quality, "bpp": bpp, "color": color}
    share = measure(model, mine, wanted, resize, center_crop, device, max_pixels, on_image, **rate)
    shares = world.gather(share)
    if shares is None:
        return None
    return combine(model, wanted, shares, resize, center_crop, **rate)


def _summarise_patches(report: EvalReport, wanted: list[str], acc: PatchFID) -> None:
    from gqtok.eval.metrics.patches import FID_MIN_PATCHES, PATCH

    n = report.patches = acc.patches
    if "patch_fid" in wanted:
        report.patch_fid = acc.fid()
        if report.patch_fid is None:
            report.notes.append(
                f"patch_fid: needs at least 2 patches of {PATCH} px (got {n}; images smaller"
                f" than {PATCH} px in a side give none)"
            )
        elif n < FID_MIN_PATCHES:
            report.notes.append(
                f"patch_fid: based on only {n} patches; FID is biased below ~{FID_MIN_PATCHES}"
                " (HiFiC used ~28k patches): compare patch KID or use more/larger photos"
            )
    if "patch_kid" in wanted:
        kid = acc.kid()
        if kid is None:
            report.notes.append(f"patch_kid: needs at least 4 patches of {PATCH} px (got {n})")
        else:
            report.patch_kid = asdict(kid)


def _summarise(
    report: EvalReport,
    wanted: list[str],
    feats: tuple[np.ndarray, np.ndarray],
    counter: TokenCounter,
) -> None:
    from gqtok.eval.metrics import inception as inc

    rows = report.rows
    report.summary["bpp"] = _stat([r.bpp for r in rows])
    pixels = sum(r.width * r.height for r in rows)
    report.bpp_aggregate = sum(r.bytes * 8 for r in rows) / pixels if pixels else None
    for m in PER_IMAGE:
        if m in report.unavailable:
            report.summary[m] = Stat(None, None, 0)  # shown as null, never as a number
        elif m in wanted:
            vals = [getattr(r, m) for r in rows if getattr(r, m) is not None]
            report.summary[m] = _stat(vals)
            if len(vals) < len(rows):
                report.notes.append(
                    f"{m}: undefined for {len(rows) - len(vals)} image(s) smaller than 11 px"
                )
    if "psnr" in report.summary and any(r.psnr == math.inf for r in rows):
        report.notes.append("psnr: some reconstructions are exact (inf dB); the mean is inf")
    partial = [r.path for r in rows if r.msssim_scales is not None and 0 < r.msssim_scales < 5]
    if partial:
        report.notes.append(
            f"msssim: {len(partial)} image(s) under 176 px use fewer than 5 scales (renormalised)"
        )
    if rows:
        report.usage = counter.summary()
    a, b = feats
    n = report.feature_images = len(a)
    if n:  # features exist only when the Inception network loaded
        if "fid" in wanted:
            if n >= 2:
                report.fid = inc.frechet_distance(a, b)
            else:
                report.notes.append("fid: needs at least 2 images")
            if n < inc.FID_MIN_IMAGES:
                report.notes.append(
                    f"fid: based on only {n} images; FID is biased and unstable below"
                    f" ~{inc.FID_MIN_IMAGES} (the paper uses ~50k): compare KID instead"
                )
        if "kid" in wanted:
            if n >= 4:
                report.kid = asdict(inc.kernel_inception_distance(a, b))
            else:
                report.notes.append("kid: needs at least 4 images")
