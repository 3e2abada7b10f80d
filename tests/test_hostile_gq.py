"""Hostile .gq files against the decoder: crafted headers (CRC recomputed), payloads that do not
hold the tokens their header claims, and the decoder's pixel limit. Each case is an attack the
decoder once failed (traceback, abort in the entropy coder, or a silently wrong image)."""

from __future__ import annotations

import base64
import resource

import numpy as np
import pytest
from PIL import Image

from gqtok import load_model
from gqtok.codec import decode_bytes, encode_file, encode_pictures, pack_tokens, unpack_tokens
from gqtok.errors import DecompressionBombError, FormatError, ModelError
from gqtok.format import container
from gqtok.io.images import DEFAULT_MAX_PIXELS, read_image
from gqtok.quant.config import QuantizerConfig
from gqtok.zoo.load import model_for_header
from tests import gqedit
from tests.conftest import DATA

MODEL = load_model()
# Format version 1 (static table); tests/test_context.py has the version 2 rules.
B = encode_file(MODEL, str(DATA / "photo_b.png"), entropy="static").data  # 150x97, 13x19 tokens
A = encode_file(MODEL, str(DATA / "photo_a.jpg"), entropy="static").data  # 317x211

# tests/data/photo_b.png as written by gqtok at commit c43ad5d (before these checks existed).
GOLDEN_B = base64.b64decode(
    "R1FUSwEAAAASZ3F0b2stZjhjMTYtY3B1LXYzBNhaYwmmPOQQAAAAAQAqAAAAAAAAAAAAgD/v+7UHI/99k5YAAABh"
    "AAAAAQANAAAAEwAAAAGsD11AWfKxauABAAAAAAAAaugqy3EiSGxSjRV2LwNR71rIILR8SCtpa8872WKVcNhhEB9j"
    "ZbZSEQ4aoKDqnnTNuGNI/tElK2JwxaIxI4j3cQ0wIZHh6muxz0zB/jXINlMRUyN3u7xMYoP60OXSR2PWAZ0T5SI4"
    "m89/0jFr6GW3LzwoNFqnZeBj4YfltMH4NSneG/rryUSMl43EVwqt1TFS8/Q9ZD6uOPAxEm4clu15ISb5Ojtiv6fp"
    "9zJZ1rWesyggFMOVc9mOVmEmqDzBmxC7qIAo82XOol5Olycabt9jVb/al/NCwkqz4Y6+ylUw4SnEcjpluoeuqSWs"
    "fPbV0mq+bQyzq/aqNSJFytFZkl8QvbAbPcGeeDxH97d3T9jyOqIJxhahn5z6NF02r/h8L9wpHOeSAGyN1YG4jT3+"
    "dMvPtuEHnVCNb6jSS7IM+F1+Km/+B3C7TXYdPyneJVNfJKprspFB5JKC0XSBl2lTg+P8zpLaq5SxfPuMRU7q/w/h"
    "F3sakqTzGtfWcLJ4tQGtL54g2ynHhotiGjkG2aW0OBQUFx313SzqL/ZbLiwvc2RtRt955xKD5Ncycv07d32bU700"
    "GcjhFRV63kP7Tve47BdxrfXua51q9gENb7lTw/7HF66K6XkZMilRlpWPPkOtAAAAAiNFxw=="
)


class Resolver:
    """What the CLI hands decode_bytes: the model named in the header under its quantizer
    settings (here without reloading the file), counting how often it was asked."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, header: container.Header):  # noqa: ANN204
        self.calls += 1
        if header.model_id != MODEL.name:
            raise ModelError(f"model {header.model_id!r} named in the file is not available")
        quant = QuantizerConfig(header.dim, header.size, header.seed, MODEL.quant.beta)
        return MODEL.requantized(quant)


def _refused(data: bytes, error: type, match: str, **kw: object) -> Resolver:
    resolve = Resolver()
    with pytest.raises(error, match=match) as info:
        decode_bytes(data, resolve, "bad.gq", **kw)
    assert "\n" not in str(info.value) and str(info.value).startswith("bad.gq: ")
    return resolve


def test_a_file_of_the_previous_release_decodes_and_re_encodes_to_the_same_bytes() -> None:
    # found by the id and weights in its header, as gqtok decode does: once v3 is no longer
    # the default it must stay resolvable (weights/retired/), or this fails
    model = model_for_header(container.unpack(GOLDEN_B)[0])
    header, tokens, alpha = unpack_tokens(model, GOLDEN_B)
    assert pack_tokens(model, tokens, entropy="static").data == GOLDEN_B and alpha is None
    image, _ = decode_bytes(GOLDEN_B, model)
    assert image.size == (150, 97)
    # the pixels gqtok-f8c16-cpu-v3 decoded it to when this check was added (another CPU may
    # round a float differently: a few levels at most, never another image)
    with Image.open(DATA / "golden_b_v3.png") as ref:
        diff = np.abs(np.asarray(image, np.int16) - np.asarray(ref, np.int16))
    assert diff.max() <= 3 and diff.mean() < 0.05


def test_codebook_beyond_the_supported_range_is_a_format_error() -> None:
    """Was a ValueError traceback (exit 1) from the codebook builder."""
    for size in (2**24 + 5, 2**31, 1):
        resolve = _refused(gqedit.edit(B, size=size), FormatError, "codebook size K=")
        assert resolve.calls == 0  # refused from the header, before any model is looked up


def test_a_codebook_of_tens_of_gb_is_refused_before_building_it() -> None:
    """dim 65535 x K 2^24-2 would be 4 TB; dim 16 x K 2^24-2 1 GB: both beyond 2^24 values."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for dim, size in ((65535, 2**24 - 2), (16, 2**24 - 2), (1024, 2**16)):
        _refused(gqedit.edit(B, dim=dim, size=size), FormatError, "codebook")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 * 1024


def test_a_2kb_file_claiming_a_2_20_grid_is_refused_without_allocating() -> None:
    """Was SIGABRT in the entropy decoder ("memory allocation of 68719476736 bytes failed")."""
    side = 2**20
    grid = side // 8  # consistent with the model: f = 8, one token group
    data = gqedit.edit(B, width=side, height=side, grid_h=grid, grid_w=grid)
    assert len(data) < 2048
    resolve = _refused(data, DecompressionBombError, "over the limit of 200000000")
    assert resolve.calls == 0
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _refused(data, FormatError, r"cannot hold 17179869184 tokens", max_pixels=side * side)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 * 1024


def test_max_pixels_applies_to_decoding_like_encoding() -> None:
    assert DecompressionBombError.exit_code == 3
    _refused(B, DecompressionBombError, "14550 pixels, over the limit of 14549", max_pixels=14549)
    image, _ = decode_bytes(B, MODEL, max_pixels=14550)
    assert image.size == (150, 97)
    with pytest.raises(DecompressionBombError, match="raise it with --max-pixels"):
        unpack_tokens(MODEL, B, "b.gq", max_pixels=100)
    with pytest.raises(ValueError):
        decode_bytes(B, MODEL, max_pixels=0)


def test_payloads_shorter_than_the_token_count_are_refused() -> None:
    """Were silently wrong images (the ANS decoder yields index 0 once its words run out)."""
    _refused(gqedit.edit(B, tokens=b""), FormatError, "cannot hold 247 tokens")
    a = gqedit.fields(A)
    big = gqedit.edit(A, width=2048, height=1536, grid_h=192, grid_w=256)
    _refused(big, FormatError, "cannot hold 49152 tokens")
    # A payload of the right order of size that still runs dry: photo_a's tokens claimed for
    # a grid with two more rows.
    taller = gqedit.edit(A, height=a["height"] + 16, grid_h=a["grid_h"] + 2)
    _refused(taller, FormatError, "ran out 80 tokens before the end")
    # The other way round: more words than the tokens need.
    _refused(gqedit.edit(B, height=89, grid_h=12), FormatError, "trailing data")


def test_grids_ending_in_index_0_within_the_free_tail_round_trip() -> None:
    enc = encode_pictures(MODEL, [read_image(str(DATA / "photo_b.png"))])[0]
    idx = enc.tokens.indices.clone()
    flat = idx.view(-1)
    flat[-MODEL.entropy.free_tail :] = 0
    flat[-MODEL.entropy.free_tail - 1] = 1
    tok = type(enc.tokens)(idx, enc.tokens.width, enc.tokens.height, enc.tokens.pad_mode)
    data = pack_tokens(MODEL, tok, entropy="static").data
    _, back, _ = unpack_tokens(MODEL, data)
    assert np.array_equal(back.indices.numpy(), idx.numpy())
    flat[-MODEL.entropy.free_tail - 1] = 0
    with pytest.raises(FormatError, match="index-0 tokens"):
        pack_tokens(MODEL, tok, entropy="static")
    # version 2 has no free tail (an end marker closes every stream): the same grid is fine
    data = pack_tokens(MODEL, tok).data
    assert np.array_equal(unpack_tokens(MODEL, data)[1].indices.numpy(), idx.numpy())


def test_alpha_is_read_under_the_decoders_pixel_limit(monkeypatch) -> None:  # noqa: ANN001
    """Pillow's own limit (89 M pixels by default) must not refuse an alpha plane that the
    decoder's max_pixels allows, and a plane the header does not describe is refused."""
    rgba = Image.open(DATA / "photo_b.png").convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))
    import io

    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    data = encode_pictures(MODEL, [read_image(buf.getvalue())])[0].data
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # as if the image were huge
    image, _ = decode_bytes(data, MODEL)
    assert image.mode == "RGBA" and np.asarray(image)[..., 3].std() > 10
    monkeypatch.undo()
    f = gqedit.fields(data)
    other = io.BytesIO()
    Image.new("L", (150, 96)).save(other, format="PNG")
    _refused(gqedit.edit(data, alpha=other.getvalue()), FormatError, "alpha plane does not match")
    half = f["alpha"][: len(f["alpha"]) // 2]
    _refused(gqedit.edit(data, alpha=half), FormatError, "alpha plane is corrupt")


def test_mismatches_are_found_before_the_codebook_is_rebuilt(monkeypatch) -> None:  # noqa: ANN001
    """A grid or groups that do not fit the model are refused before K x G values are built."""
    import gqtok.codec.bytes as cb

    def boom(*a: object) -> bytes:
        raise AssertionError("codebook rebuilt for a file that does not fit the model")

    monkeypatch.setattr(cb, "codebook_fingerprint", boom)
    f = gqedit.fields(B)
    with pytest.raises(FormatError, match="does not fit"):
        decode_bytes(gqedit.edit(B, groups=2), MODEL)
    with pytest.raises(FormatError, match="does not fit"):  # f = 4 instead of 8
        decode_bytes(gqedit.edit(B, grid_h=25, grid_w=38, tokens=f["tokens"] * 4), MODEL)


def test_default_max_pixels_is_the_encoders() -> None:
    import inspect

    for fn in (decode_bytes, unpack_tokens):
        assert inspect.signature(fn).parameters["max_pixels"].default == DEFAULT_MAX_PIXELS
