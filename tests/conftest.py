"""Shared test helpers: fixture paths and a small, fast model built from the golden UNet."""

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
