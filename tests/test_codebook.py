"""The codebook must be bit-identical to the reference (hashes and rows from the fixtures)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gqtok.quant.codebook import codebook, codebook_fingerprint, codebook_sha256
from tests.conftest import FIXTURES

BOOKS = json.loads((FIXTURES / "codebooks.json").read_text())["codebooks"]


@pytest.mark.parametrize("entry", BOOKS, ids=lambda e: f"G{e['G']}-K{e['K']}")
def test_codebook_matches_reference_hash_and_rows(entry: dict) -> None:
    g, k, seed = entry["G"], entry["K"], entry["seed"]
    cb = codebook(g, k, seed)
    assert cb.shape == (k, g) and cb.dtype == torch.float32
    assert codebook_sha256(g, k, seed) == entry["sha256_f32_le_rowmajor"]
    for row in (0, 1, k - 1):
        want = np.array(entry[f"row_{row}"], dtype=np.float64).astype(np.float32)
        assert np.array_equal(cb[row].numpy(), want)


def test_prefix_property() -> None:
    """A fresh draw of K rows is the first K rows of a larger draw, which is what lets the
    cache serve a smaller size from a larger one (and it does, after the larger draw)."""
    from gqtok.quant import codebook as module

    big = codebook(16, 65536)
    for k in (1, 7, 4096, 16384):
        module.clear_cache()
        assert torch.equal(codebook(16, k), big[:k])  # drawn anew
    module.clear_cache()
    whole = module.codebook_view(16, 65536)
    part = module.codebook_view(16, 4096)
    assert part.data_ptr() == whole.data_ptr() and part.is_contiguous()  # a view, not a draw
    assert torch.equal(part, big[:4096])


def test_default_dtype_float64_does_not_change_codebook() -> None:
    from gqtok.quant.codebook import clear_cache

    clear_cache()  # drawn anew under float64, not served from an earlier draw
    old = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float64)
        h = codebook_sha256(16, 4096)
    finally:
        torch.set_default_dtype(old)
        clear_cache()
    assert h == "80f16be97539daa4f0bc71101b7a7876d607d718b13127b87f8c896ee2decfce"


def test_codebook_is_a_copy_and_fingerprint_differs_by_seed() -> None:
    a = codebook(8, 1024)
    a.zero_()
    assert codebook(8, 1024).abs().sum() > 0
    assert codebook_fingerprint(8, 1024, 42) != codebook_fingerprint(8, 1024, 43)
    with pytest.raises(ValueError):
        codebook(0, 10)
