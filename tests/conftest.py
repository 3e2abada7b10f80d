"""Shared test helpers: fixture paths, the default model and a .gq file made with it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parent.parent

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def unet_small_json() -> dict:
    return json.loads((FIXTURES / "unet_small.json").read_text())


@pytest.fixture(scope="module")
def model():  # noqa: ANN201
    """The embedded default model (one per test module: a test may move it to a device)."""
    from gqtok.zoo.load import load_model

    return load_model()


@pytest.fixture(scope="module")
def good_gq(model) -> bytes:  # noqa: ANN001
    """A valid .gq file of tests/data/photo_b.png, to craft hostile variants from."""
    from gqtok.codec import encode_file

    return encode_file(model, str(DATA / "photo_b.png")).data
