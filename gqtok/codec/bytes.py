"""Pictures <-> .gq bytes: the engine's tokens, entropy-coded, with the alpha plane, in a container.

This is the Python API that the CLI wraps. ``encode_pictures`` batches images of equal padded
size through the network (gqtok.codec.engine); every other step works per image. Decoding
verifies that the model, codebook and entropy model named in the file are exactly the ones at
hand before producing pixels, so a mismatch is an error instead of a silently wrong image.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from gqtok.codec import rate as rc
from gqtok.codec.engine import decode_to_array, encode_arrays, tokens_by_model, with_color
from gqtok.codec.tokens import Tokens
from gqtok.errors import FormatError, GqtokError, ModelError
from gqtok.format import container
from gqtok.format import context as ctx
from gqtok.format import entropy as ent
from gqtok.io.images import (  # _pillow_limit: the alpha plane is read under our limit
    DEFAULT_MAX_PIXELS,
    Picture,
    _pillow_limit,
    picture_to_pil,
    read_image,
)
from gqtok.model import Model, select_decoder
from gqtok.quant.codebook import codebook_fingerprint
from gqtok.quant.config import QuantizerConfig


@dataclass
class Encoded:
    """One encoded image: the .gq bytes and what a user wants to know about them."""

    data: bytes
    header: container.Header
    tokens: Tokens
    token_bytes: int
    timings: dict[str, float] = field(default_factory=dict)
    rate: rc.RateSearch | None = None  # how a target bpp was reached (encode with bpp=)

    @property
    def entropy(self) -> str:
        """How the tokens were coded: context (format version 2), frequency or uniform."""
        return self.header.entropy_kind

    @property
    def bits_per_token(self) -> float:
        """Achieved entropy-coded size of the token payload per token."""
        return self.token_bytes * 8 / max(1, self.header.num_tokens)

    @property
    def bpp(self) -> float:
        return len(self.data) * 8 / (self.header.width * self.header.height)


def _alpha_bytes(alpha: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(alpha, mode="L").save(buf, format="PNG", compress_level=9)
    return buf.getvalue()


ENTROPY_CHOICES = ("context", "static")


def _version(model: Model, coder: ctx.ContextCoder | None) -> int:
    """The .gq version of a file coded by ``coder`` (or the model's table when None): 1 for a
    static table, 2 for the context model or the prior, 3 for the context model's a bins alone
    (a codebook too small for its B x B cells)."""
    if coder is not None:
        return container.COARSE_VERSION if coder.coarse else container.CONTEXT_VERSION
    if model.entropy.kind in container.VERSION_KINDS[1]:
        return container.FORMAT_VERSION
    return container.CONTEXT_VERSION


def _header_for(
    model: Model, tok: Tokens, picture: Picture | None, coder: ctx.ContextCoder | None
) -> container.Header:
    q = model.quant
    ng, gh, gw = tok.indices.shape
    width, height = tok.size
    coded = (tok.width, tok.height) if tok.size != (tok.width, tok.height) else (0, 0)
    return container.Header(
        model_id=model.name,
        weights_hash=model.weights_fingerprint,
        dim=q.dim,
        size=q.size,
        seed=q.seed,
        beta=q.beta,
        codebook_fingerprint=codebook_fingerprint(q.dim, q.size, q.seed),
        width=width,
        height=height,
        coded_width=coded[0],
        coded_height=coded[1],
        color=tok.color,
        groups=ng,
        grid_h=gh,
        grid_w=gw,
        entropy_kind="context" if coder else model.entropy.kind,
        entropy_fingerprint=coder.fingerprint if coder else model.entropy.fingerprint,
        version=_version(model, coder),
        layout=model.layout,
        pad_mode=tok.pad_mode,
        has_alpha=picture is not None and picture.alpha is not None,
        grayscale=picture is not None and picture.mode in ("L", "LA"),
    )


def context_coder(model: Model, entropy: str) -> ctx.ContextCoder | None:
    """The coder ``entropy`` asks for: the model's context coder for "context" where it has
    one (else None: the static table, format version 1), None for "static"."""
    if entropy not in ENTROPY_CHOICES:
        raise ValueError(f"entropy must be one of {', '.join(ENTROPY_CHOICES)}, got {entropy!r}")
    return model.context_coder if entropy == "context" else None


def pack_tokens(
    model: Model, tok: Tokens, picture: Picture | None = None, entropy: str = "context"
) -> Encoded:
    """Entropy-code a token grid (and the picture's alpha plane) into .gq bytes: with the
    model's context model (format version 2) unless ``entropy`` is "static" or the model has
    none, else with its static table (version 1, readable by every gqtok)."""
    coder = context_coder(model, entropy)
    header = _header_for(model, tok, picture, coder)
    indices = tok.indices.numpy()
    payload = coder.encode(indices) if coder else model.entropy.encode(indices.reshape(-1))
    alpha = (
        _alpha_bytes(picture.alpha) if picture is not None and picture.alpha is not None else b""
    )
    return Encoded(container.pack(header, payload, alpha), header, tok, len(payload))


def encode_pictures(
    model: Model,
    pictures: Sequence[Picture],
    pad_mode: str = "replicate",
    batch_size: int = 4,
    max_memory: int | str | None = None,
    entropy: str = "context",
    *,
    quality: float | None = None,
    bpp: float | None = None,
    scale: float | None = None,
    color: bool | None = None,
) -> list[Encoded]:
    """Encode decoded input images to .gq bytes (batched through the network); ``entropy``
    as in ``pack_tokens``. ``quality`` (0..100) encodes at that quality's codebook size and
    scale, ``bpp`` searches the setting per image whose file comes closest to that many bits
    per pixel (gqtok.codec.rate; ``Encoded.rate`` says how close), ``scale`` codes the images
    resampled by that factor (0.25..4; format version 4); coded larger, each image also gets
    the colour correction fitted to it (format version 5 or 6); ``color`` True fits one to
    every image (version 6 at the image's own size too: an extra decode each), False to none."""
    context_coder(model, entropy)  # a bad choice fails before the network runs
    if sum(x is not None for x in (quality, bpp, scale)) > 1:
        raise ValueError("give one of a quality, a target bpp or a scale")
    if quality is not None:
        setting = rc.quality_setting(model, quality)
        model, scale = rc.at_size(model, setting.size), setting.scale
    if bpp is not None:
        return [_encode_at_bpp(model, p, bpp, pad_mode, entropy, max_memory, color)
                for p in pictures]  # fmt: skip
    timings: dict[str, float] = {}
    rgbs = [p.rgb for p in pictures]
    toks = encode_arrays(model, rgbs, pad_mode, batch_size, timings, max_memory, scale, color)
    share = 1.0 / max(1, len(pictures))
    out = []
    for pic, tok in zip(pictures, toks, strict=True):
        t0 = time.perf_counter()
        enc = pack_tokens(model, tok, pic, entropy)
        enc.timings = {k: v * share for k, v in timings.items()}
        enc.timings["entropy"] = time.perf_counter() - t0
        out.append(enc)
    return out


def _encode_at_bpp(
    model: Model,
    picture: Picture,
    bpp: float,
    pad_mode: str,
    entropy: str,
    max_memory: int | str | None,
    color: bool | None = None,
) -> Encoded:
    """The picture at the setting whose whole file is closest to ``bpp``: the scale at the
    model's own K, then, below the lowest scale's rate, K at that scale (gqtok.codec.rate);
    with its colour correction as in ``encode_pictures``."""
    rc.check_bpp(bpp)
    t0 = time.perf_counter()
    pixels = picture.rgb.shape[0] * picture.rgb.shape[1]
    own = rc.at_size(model, rc.own_size(model))
    files: dict[tuple[int, float], Encoded] = {}
    networks: dict[float, Callable[[Model], Tokens]] = {}

    def tokens_at(scale: float) -> Callable[[Model], Tokens]:
        if scale not in networks:
            networks[scale] = tokens_by_model(own, picture.rgb, pad_mode, max_memory, scale)
        return networks[scale]

    def trial(m: Model, scale: float) -> float:
        key = (m.quant.size, scale)
        if key not in files:  # the K search starts where the scale search ended: packed once
            files[key] = pack_tokens(m, tokens_at(scale)(m), picture, entropy)
        return len(files[key].data) * 8 / pixels

    def search(extra: int) -> tuple[int, float]:
        """(K, scale) of the file closest to bpp with ``extra`` bytes added to each trial."""
        scale, scales = rc.search_scale(lambda s: trial(own, s) + extra * 8 / pixels, bpp,
                                        rc.S_LOW, rc.S_HIGH)  # fmt: skip
        if scale == rc.S_LOW and scales[scale] > bpp * (1 + rc.TOLERANCE):
            size, _ = rc.search_size(lambda k: trial(rc.at_size(model, k), scale), bpp,
                                     own.quant.size, rc.K_MIN, own.quant.size)  # fmt: skip
            return size, scale
        return own.quant.size, scale

    extra = 0  # bytes of the colour correction, once one has been fitted
    for _ in range(2):
        key = search(extra)
        enc = files[key]
        if color is False:
            break
        # coded larger than the image (or any, color=True): with its colour correction
        chosen = rc.at_size(model, key[0])
        if not with_color(chosen, enc.tokens, picture.rgb, max_memory, bool(color)).color:
            break
        enc = pack_tokens(chosen, enc.tokens, picture, entropy)
        added = len(enc.data) - len(files[key].data)
        if extra or abs(len(enc.data) * 8 / pixels - bpp) <= rc.TOLERANCE * bpp:
            break
        extra = added  # its bytes moved the file off the target: search again with them
    tried = sorted((k, s, len(e.data) * 8 / pixels) for (k, s), e in files.items())
    enc.rate = rc.RateSearch(bpp, key[0], len(enc.data) * 8 / pixels, tried, key[1])
    enc.timings = {"rate_search": time.perf_counter() - t0}
    return enc


def encode_file(
    model: Model,
    source: str | bytes,
    name: str | None = None,
    entropy: str = "context",
    **kw: object,
) -> Encoded:
    """Read an image file (or bytes) and encode it (``entropy`` as in ``pack_tokens``)."""
    pic = read_image(source, name=name, **kw)  # type: ignore[arg-type]
    return encode_pictures(model, [pic], entropy=entropy)[0]


def check_compatible(model: Model, header: container.Header, name: str | None = None) -> None:
    """Refuse to decode a file with a model, codebook or entropy table it was not written with.

    Cheap checks come first and the codebook is rebuilt (K x G values) only once everything
    else agrees, so a crafted header cannot make the decoder build a codebook it does not use.
    """
    if header.weights_hash != model.weights_fingerprint:
        raise ModelError(
            f"file was written with model {header.model_id!r}"
            f" (weights {header.weights_hash.hex()}),"
            f" not with {model.name!r} (weights {model.weights_fingerprint.hex()})",
            name,
        )
    q = model.quant
    if (header.dim, header.size, header.seed) != (
        q.dim,
        q.size,
        q.seed,
    ) or header.beta != np.float32(q.beta):
        raise ModelError(
            f"file codebook (dim {header.dim}, K {header.size}, seed {header.seed}) differs from"
            f" the model's (dim {q.dim}, K {q.size}, seed {q.seed})",
            name,
        )
    if header.layout != model.layout:
        raise ModelError(f"file token layout {header.layout} differs from the model's", name)
    f = model.downsample
    cw, ch = header.coded_size
    want = ((ch + f - 1) // f, (cw + f - 1) // f)
    if (header.grid_h, header.grid_w) != want or header.groups != model.groups:
        raise FormatError(
            f"token grid {header.groups}x{header.grid_h}x{header.grid_w} does not fit a"
            f" {cw}x{ch} image for this model",
            name,
        )
    if header.entropy_kind == "context":
        coder = model.context_coder
        if coder is None:
            raise ModelError(
                "file was coded with a context model, but this model has none for its codebook"
                f" (dim {header.dim}, K {header.size}, seed {header.seed}; a model file from an"
                " older gqtok?)",
                name,
            )
        if coder.fingerprint != header.entropy_fingerprint:
            raise ModelError("file's context model does not match the model's", name)
        if (header.version == container.COARSE_VERSION) != coder.coarse:
            raise FormatError(
                f"a version {header.version} file cannot hold context-coded tokens of K="
                f"{header.size} (version {_version(model, coder)} does, docs/format.md)",
                name,
            )
    else:
        em = model.entropy if header.entropy_kind == model.entropy.kind else None
        if header.entropy_kind == "uniform":
            em = ent.uniform(q.size)
        if em is None or em.fingerprint != header.entropy_fingerprint:
            raise ModelError("file's entropy model does not match the model's entropy table", name)
    if codebook_fingerprint(header.dim, header.size, header.seed) != header.codebook_fingerprint:
        raise FormatError(
            "rebuilt codebook does not match the file's codebook fingerprint"
            " (different torch Sobol implementation?)",
            name,
        )


def _at_header_settings(model: Model, header: container.Header) -> Model:
    """``model`` under the file's quantizer settings when the file names its weights but
    another codebook (rate control writes other K): the same network decodes every K."""
    q = model.quant
    if header.weights_hash != model.weights_fingerprint or (
        (header.dim, header.size, header.seed) == (q.dim, q.size, q.seed)
        and header.beta == np.float32(q.beta)
    ):
        return model
    try:
        return model.requantized(
            QuantizerConfig(header.dim, header.size, header.seed, float(header.beta))
        )
    except ValueError:  # e.g. a G that does not divide the latent: check_compatible says so
        return model


def unpack_tokens(
    model: Model,
    data: bytes,
    name: str | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[container.Header, Tokens, np.ndarray | None]:
    """Parse, verify and entropy-decode a .gq file into its token grid and alpha plane.

    An image over ``max_pixels`` is refused (DecompressionBombError) from its header alone,
    before the model is checked or anything is decoded.
    """
    header, payload, alpha_bytes = container.unpack(data, name)
    container.check_pixels(header, max_pixels, name)
    return _decode_parts(model, header, payload, alpha_bytes, name, max_pixels)


def _decode_parts(
    model: Model,
    header: container.Header,
    payload: bytes,
    alpha_bytes: bytes,
    name: str | None,
    max_pixels: int,
) -> tuple[container.Header, Tokens, np.ndarray | None]:
    model = _at_header_settings(model, header)
    check_compatible(model, header, name)
    shape = (header.groups, header.grid_h, header.grid_w)
    try:
        if header.entropy_kind == "context":
            assert model.context_coder is not None  # check_compatible made sure
            grid = model.context_coder.decode(payload, shape)
        else:
            em = model.entropy if header.entropy_kind == model.entropy.kind else None
            grid = (em or ent.uniform(header.size)).decode(payload, header.num_tokens)
    except ValueError as exc:
        raise FormatError(str(exc), name) from None
    indices = torch.from_numpy(grid).reshape(shape)
    alpha = _alpha_plane(alpha_bytes, header, name, max_pixels) if header.has_alpha else None
    cw, ch = header.coded_size
    to = (header.width, header.height) if header.scaled else None
    return header, Tokens(indices, cw, ch, header.pad_mode, to, header.color), alpha


def _alpha_plane(
    data: bytes, header: container.Header, name: str | None, max_pixels: int
) -> np.ndarray:
    """The alpha payload as an (H, W) array: a PNG of exactly the header's size, mode L.
    Pillow's own bomb limit is ours here (the header already passed it), so a large image
    that was allowed is not refused by Pillow's smaller default."""
    try:
        with _pillow_limit(max(max_pixels, header.pixels)), Image.open(io.BytesIO(data)) as im:
            if im.format != "PNG" or im.mode != "L" or im.size != (header.width, header.height):
                raise FormatError("alpha plane does not match the image", name)
            return np.asarray(im.copy())
    except FormatError:
        raise
    except Exception:
        raise FormatError("alpha plane is corrupt", name) from None


@dataclass
class TokenFile:
    """A verified, entropy-decoded .gq file and the model variant that decodes it: the CPU
    half of decode_bytes. A batch tool runs it for the next files on worker threads while the
    decoder network renders this one (render_token_file)."""

    header: container.Header
    tokens: Tokens
    alpha: np.ndarray | None
    model: Model


def read_token_file(
    data: bytes,
    model: Model | Callable[[container.Header], Model],
    name: str | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    decoder: str | None = None,
    realism: float | None = None,
    grain: float | None = None,
) -> TokenFile:
    """Parse, verify and entropy-decode .gq bytes (no network); arguments as decode_bytes.

    Safe on worker threads when ``model`` is a ready Model, or a callable that serialises its
    own loading: the variant used (decoder, codebook settings) must exist already, with its
    decoder and context coder built, or two threads may build it twice."""
    header, payload, alpha_bytes = container.unpack(data, name)
    container.check_pixels(header, max_pixels, name)
    try:
        if not isinstance(model, Model):
            model = model(header)
        model = _at_header_settings(select_decoder(model, decoder, realism, grain), header)
    except GqtokError as e:  # "model ... not available": say which file needs it
        if e.path is None and name is not None:
            raise type(e)(str(e), name) from None
        raise
    header, tokens, alpha = _decode_parts(model, header, payload, alpha_bytes, name, max_pixels)
    return TokenFile(header, tokens, alpha, model)


def render_token_file(
    tf: TokenFile, max_memory: int | str | None = None
) -> tuple[Image.Image, container.Header]:
    """The decoder network's half of decode_bytes: the image of a read_token_file result in
    its original mode (RGB, L, RGBA or LA)."""
    header, alpha = tf.header, tf.alpha
    rgb = decode_to_array(tf.model, tf.tokens, max_memory)
    mode = (
        ("LA" if alpha is not None else "L")
        if header.grayscale
        else ("RGBA" if alpha is not None else "RGB")
    )
    pic = Picture(rgb=rgb, alpha=alpha, mode=mode, source_format="GQ", bit_depth=8)
    return picture_to_pil(pic), header


def decode_bytes(
    data: bytes,
    model: Model | Callable[[container.Header], Model],
    name: str | None = None,
    max_memory: int | str | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    decoder: str | None = None,
    realism: float | None = None,
    grain: float | None = None,
) -> tuple[Image.Image, container.Header]:
    """Decode .gq bytes to a PIL image in the original mode (RGB, L, RGBA or LA).

    ``model`` may be a callable that picks the model from the header; it is called only
    after the file has been verified and its size checked against ``max_pixels``
    (DecompressionBombError, exit 3, as when encoding). ``decoder`` / ``realism`` choose
    among the model's decoders and ``grain`` adds film grain (Model.with_decoder; left out,
    the model's own choice).
    """
    tf = read_token_file(data, model, name, max_pixels=max_pixels, decoder=decoder,
                         realism=realism, grain=grain)
    return render_token_file(tf, max_memory)
