"""Truncated, bit-flipped and random .gq files end in a documented error or a valid image."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gqtok import load_model
from gqtok.codec import decode_bytes, encode_file
from gqtok.errors import FormatError, GqtokError
from tests.conftest import DATA

MODEL = load_model()
GOOD = encode_file(MODEL, str(DATA / "photo_b.png")).data
FAST = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


def _decode_or_documented_error(data: bytes) -> None:
    try:
        img, header = decode_bytes(data, MODEL, "fuzz.gq")
    except GqtokError as e:
        assert e.exit_code in (4, 5)
        assert "\n" not in str(e)
        return
    arr = np.asarray(img)
    assert arr.shape[:2] == (header.height, header.width)


@FAST
@given(st.integers(min_value=0, max_value=len(GOOD) - 1))
def test_truncated(n: int) -> None:
    with pytest.raises(FormatError):
        decode_bytes(GOOD[:n], MODEL, "fuzz.gq")


@FAST
@given(st.lists(st.integers(min_value=0, max_value=len(GOOD) * 8 - 1), min_size=1, max_size=4))
def test_bit_flips(bits: list[int]) -> None:
    data = bytearray(GOOD)
    for b in bits:
        data[b // 8] ^= 1 << (b % 8)
    _decode_or_documented_error(bytes(data))


@FAST
@given(st.binary(min_size=0, max_size=400))
def test_random_bytes(blob: bytes) -> None:
    _decode_or_documented_error(blob)
    _decode_or_documented_error(b"GQTK\x01" + blob)
