"""The one-call Python API: PIL images, arrays, tensors and bare grids give the codec's tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import gqtok
from gqtok.codec import decode_to_array, encode_arrays
from gqtok.io.images import read_image
from tests.conftest import DATA


def test_every_image_kind_gives_the_same_tokens(model) -> None:  # noqa: ANN001
    rgb = read_image(DATA / "photo_b.png").rgb
    want = encode_arrays(model, [rgb])[0].indices
    as_float = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0
    kinds = [
        Image.fromarray(rgb),
        Image.fromarray(rgb).convert("RGBA"),  # alpha is not part of the tokens
        rgb,
        torch.from_numpy(rgb).permute(2, 0, 1),  # uint8 (3, H, W)
        as_float.unsqueeze(0),  # float (1, 3, H, W) in [0, 1]
    ]
    for image in kinds:
        assert torch.equal(gqtok.encode(model, image).indices, want)
    tok = gqtok.encode(model, as_float * 2 - 1, value_range=(-1.0, 1.0))
    assert torch.equal(tok.indices, want)
    batch = gqtok.encode_batch(model, [rgb, rgb[:64, :80]], batch_size=2)
    assert torch.equal(batch[0].indices, want) and batch[1].indices.shape == (1, 8, 10)
    with pytest.raises(ValueError):
        gqtok.encode(model, rgb.astype(np.float32))


def test_grids_decode_like_the_codec(model) -> None:  # noqa: ANN001
    tok = encode_arrays(model, [read_image(DATA / "photo_b.png").rgb])[0]
    want = decode_to_array(model, tok)
    grid = tok.indices.numpy().astype(np.uint16)  # as stored in an export shard
    img = gqtok.decode(model, grid, size=(150, 97))
    assert img.size == (150, 97) and np.array_equal(np.asarray(img), want)
    assert np.array_equal(gqtok.decode_array(model, tok), want)
    full = gqtok.decode_array(model, grid[0])  # (h, w), whole grid: 152 x 104 pixels
    assert full.shape == (104, 152, 3) and np.array_equal(full[:97, :150], want)
    t = gqtok.decode_tensor(model, tok)
    assert t.shape == (3, 97, 150) and t.dtype == torch.float32
    assert np.array_equal((t * 255).round().to(torch.uint8).permute(1, 2, 0).numpy(), want)
    with pytest.raises(ValueError, match="cannot decode"):
        gqtok.decode(model, grid, size=(300, 97))
