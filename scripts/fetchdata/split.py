"""The fixed train/val split: a hash of a photo's stable name (or group) decides, so adding a
package never moves another photo, and scenes shot several times stay on one side."""

from __future__ import annotations

import hashlib

from .manifest import Photo

DEFAULT_VAL_FRACTION = 0.08
MIN_VAL_SHORT_SIDE = 256  # smaller photos always train: too small for the eval crops


def split_fraction(name: str) -> float:
    """The stable name's SHA-256 read as a number in [0, 1)."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def choose_split(photo: Photo, prepared_size: tuple[int, int], val_fraction: float) -> str:
    if min(prepared_size) < MIN_VAL_SHORT_SIDE:
        return "train"
    if photo.split is not None:
        return photo.split
    return "val" if split_fraction(photo.group) < val_fraction else "train"
