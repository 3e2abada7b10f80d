"""End to end through the Python API with the embedded default model and real photos."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import gqtok
from gqtok.codec import decode_bytes, encode_file, encode_pictures, unpack_tokens
from gqtok.errors import FormatError, ModelError
from gqtok.format import container
from gqtok.io.images import read_image
from tests.conftest import DATA, REPO


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / mse))


def test_default_model_loads_from_weights(model) -> None:  # noqa: ANN001
    assert model.downsample == 8 and model.quant.dim == 16 and model.quant.size == 65536
    assert model.entropy.kind == "frequency"
    card = json.loads((REPO / "weights" / "default.json").read_text())
    assert card["weights_sha256"] == model.weights_sha256


@pytest.mark.parametrize("name", ["photo_a.jpg", "photo_b.png"])
def test_photo_round_trip_odd_size(model, name: str) -> None:  # noqa: ANN001
    path = DATA / name
    enc = encode_file(model, str(path))
    src = Image.open(path).convert("RGB")
    assert (enc.header.width, enc.header.height) == src.size
    assert enc.header.grid_h == -(-src.size[1] // 8) and enc.header.grid_w == -(-src.size[0] // 8)
    # the file is the real rate: header + entropy-coded tokens, at most the uncoded 16 bits/token
    header_bytes = len(enc.data) - enc.token_bytes
    assert header_bytes == 82 + len(model.name)
    assert 0 < enc.bits_per_token <= 16 + 64 / enc.header.num_tokens
    assert enc.bpp == len(enc.data) * 8 / (src.size[0] * src.size[1])
    img, header = decode_bytes(enc.data, model)
    assert img.size == src.size and img.mode == "RGB"
    assert psnr(np.asarray(img), np.asarray(src)) > 18


def test_model_level_api_tokens_round_trip(model) -> None:  # noqa: ANN001
    img = Image.open(DATA / "photo_b.png")
    tokens = gqtok.encode(model, img)
    assert tokens.indices.shape == (1, -(-img.height // 8), -(-img.width // 8))
    out = gqtok.decode(model, tokens)
    assert out.size == img.size
    x = torch.rand(2, 3, 16, 24) * 2 - 1
    idx, zhat = model.quantize(model.moments(x))
    assert idx.shape == (2, 1, 2, 3)
    assert model.decode_indices(idx).shape == (2, 3, 16, 24)


def test_grayscale_and_rgba_modes_are_restored(model, tmp_path) -> None:  # noqa: ANN001
    base = Image.open(DATA / "photo_b.png").convert("RGB")
    gray = base.convert("L")
    enc = encode_pictures(model, [read_image(_png(gray))])[0]
    img, _ = decode_bytes(enc.data, model)
    assert img.mode == "L" and img.size == gray.size
    rgba = base.copy()
    alpha = Image.linear_gradient("L").resize(base.size)
    rgba.putalpha(alpha)
    enc = encode_pictures(model, [read_image(_png(rgba))])[0]
    assert enc.header.has_alpha
    img, _ = decode_bytes(enc.data, model)
    assert img.mode == "RGBA"
    assert np.array_equal(np.asarray(img)[..., 3], np.asarray(alpha))  # alpha is lossless


def test_sixteen_bit_and_exif_rotated_inputs(model) -> None:  # noqa: ANN001
    g16 = np.asarray(Image.open(DATA / "photo_b.png").convert("L"), dtype=np.uint16) * 257
    im16 = Image.fromarray(g16.astype(np.uint16))
    assert im16.mode == "I;16"
    enc = encode_pictures(model, [read_image(_png(im16))])[0]
    img, _ = decode_bytes(enc.data, model)
    assert img.mode == "L" and img.size == (g16.shape[1], g16.shape[0])
    assert psnr(np.asarray(img), (g16 // 257).astype(np.uint8)) > 16
    src = Image.open(DATA / "photo_a.jpg").convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    buf = io.BytesIO()
    src.save(buf, format="JPEG", quality=95, exif=exif)
    enc = encode_pictures(model, [read_image(buf.getvalue())])[0]
    assert (enc.header.width, enc.header.height) == (src.height, src.width)


def test_mismatched_model_and_codebook_are_refused(model, tmp_path) -> None:  # noqa: ANN001
    enc = encode_file(model, str(DATA / "photo_b.png"))
    other = _fixture_model(tmp_path)
    with pytest.raises(ModelError, match="written with model"):
        decode_bytes(enc.data, other)
    header, tok, alpha = container.unpack(enc.data)
    forged = container.pack(
        container.Header(**{**header.__dict__, "codebook_fingerprint": b"\x00" * 8}), tok, alpha
    )
    with pytest.raises(FormatError, match="codebook"):
        decode_bytes(forged, model)
    # another seed: the model is taken to that codebook (as the CLI does from a header), which
    # its context model was not fitted for
    reseeded = container.pack(container.Header(**{**header.__dict__, "seed": 7}), tok, alpha)
    with pytest.raises(ModelError, match="context model, but this model has none for its codebook"):
        decode_bytes(reseeded, model)
    static = encode_file(model, str(DATA / "photo_b.png"), entropy="static").data
    header, tok, alpha = container.unpack(static)
    reseeded = container.pack(container.Header(**{**header.__dict__, "seed": 7}), tok, alpha)
    with pytest.raises(ModelError, match="entropy model does not match"):
        decode_bytes(reseeded, model)


def test_header_tampering_with_valid_crc_is_caught(model) -> None:  # noqa: ANN001
    enc = encode_file(model, str(DATA / "photo_b.png"))
    header, tok, alpha = container.unpack(enc.data)
    bad_grid = container.pack(
        container.Header(**{**header.__dict__, "grid_w": header.grid_w + 1}), tok, alpha
    )
    with pytest.raises(FormatError, match="grid"):
        decode_bytes(bad_grid, model)
    data = bytearray(enc.data)
    n = data[8]
    struct.pack_into("<I", data, 43 + n, 1)  # width 1: grid no longer fits
    data[-4:] = struct.pack("<I", zlib.crc32(bytes(data[:-4])))
    with pytest.raises(FormatError):
        decode_bytes(bytes(data), model)


def test_fresh_process_decodes_identical_tokens(model, tmp_path) -> None:  # noqa: ANN001
    enc = encode_file(model, str(DATA / "photo_a.jpg"))
    f = tmp_path / "a.gq"
    f.write_bytes(enc.data)
    code = (
        "import sys, json; from gqtok import load_model; from gqtok.codec import unpack_tokens;"
        "m = load_model(); h, t, a = unpack_tokens(m, open(sys.argv[1], 'rb').read());"
        "print(json.dumps(t.indices.reshape(-1).tolist()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(f)], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert json.loads(out.stdout) == enc.tokens.indices.reshape(-1).tolist()
    _, toks, _ = unpack_tokens(model, enc.data)
    assert torch.equal(toks.indices, enc.tokens.indices)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _fixture_model(tmp_path):  # noqa: ANN001, ANN202
    """The golden small UNet as a gqtok model: a different, real set of weights."""
    from safetensors.torch import load_file

    from gqtok.model import build_from_state
    from tests.conftest import FIXTURES

    state = {
        k: v
        for k, v in load_file(str(FIXTURES / "unet_small.safetensors")).items()
        if not k.startswith("io.")
    }
    cfg = json.loads((FIXTURES / "unet_small.json").read_text())["config"]
    return build_from_state(state, {"name": "unet-small", "network": cfg})
