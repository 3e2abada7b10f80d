"""A small checker for the JSON that gqtok reads from files: model cards and token manifests.

A schema is built from the functions below and checked in one call; the first value that does
not fit raises SchemaError naming its field as a path (``quantizer.dim``, ``shards[3].file``),
so loaders can report one line naming the file and the field. Booleans are never numbers, and
integers must be JSON integers (``16``, not ``16.0`` or ``"16"``). Keys a schema does not name
are allowed: they are someone else's (provenance, statistics) or a later version's.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

Check = Callable[[Any, str], None]


class SchemaError(ValueError):
    """A JSON value that does not fit its schema; ``field`` is its path."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


def _kind(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             list: "an array", dict: "an object", type(None): "null"}  # fmt: skip
    return names.get(type(value), type(value).__name__)


def integer(lo: int, hi: int) -> Check:
    def check(v: Any, at: str) -> None:
        if type(v) is not int:
            raise SchemaError(at, f"must be an integer, got {_kind(v)}")
        if not lo <= v <= hi:
            raise SchemaError(at, f"must be in {lo}..{hi}, got {v}")

    return check


def number(lo: float = -math.inf, hi: float = math.inf, *, above: bool = False) -> Check:
    """A finite JSON number in [lo, hi] (in (lo, hi] with ``above``)."""

    def check(v: Any, at: str) -> None:
        if type(v) not in (int, float):
            raise SchemaError(at, f"must be a number, got {_kind(v)}")
        if not math.isfinite(v):
            raise SchemaError(at, f"must be finite, got {v}")
        if v < lo or v > hi or (above and v == lo):
            low = f"above {lo}" if above else f">= {lo}"
            raise SchemaError(at, f"must be {low}" + (f" and <= {hi}" if hi < math.inf else ""))

    return check


def boolean(v: Any, at: str) -> None:
    if type(v) is not bool:
        raise SchemaError(at, f"must be true or false, got {_kind(v)}")


def string(
    *,
    choices: tuple[str, ...] | None = None,
    pattern: str | None = None,
    max_len: int = 4096,
    extra: Callable[[str], Any] | None = None,
) -> Check:
    """A string: one of ``choices``, or matching ``pattern`` in full, and passing ``extra``
    (a function raising ValueError with the reason)."""
    regex = re.compile(pattern) if pattern else None

    def check(v: Any, at: str) -> None:
        if type(v) is not str:
            raise SchemaError(at, f"must be a string, got {_kind(v)}")
        if choices is not None and v not in choices:
            raise SchemaError(at, f"must be one of {', '.join(choices)}, got {_short(v)}")
        if len(v) > max_len:
            raise SchemaError(at, f"must be at most {max_len} characters, got {len(v)}")
        if regex is not None and not regex.fullmatch(v):
            raise SchemaError(at, f"is not a valid value ({_short(v)})")
        if extra is not None:
            try:
                extra(v)
            except ValueError as exc:
                raise SchemaError(at, str(exc)) from None

    return check


def hexdigits(n: int) -> Check:
    return string(pattern=f"[0-9a-f]{{{n}}}", max_len=n)


def array(item: Check, min_len: int = 0, max_len: int = 1 << 20) -> Check:
    def check(v: Any, at: str) -> None:
        if type(v) is not list:
            raise SchemaError(at, f"must be an array, got {_kind(v)}")
        if not min_len <= len(v) <= max_len:
            raise SchemaError(at, f"must have {min_len}..{max_len} items, got {len(v)}")
        for i, x in enumerate(v):
            item(x, f"{at}[{i}]")

    return check


def nullable(inner: Check) -> Check:
    def check(v: Any, at: str) -> None:
        if v is not None:
            inner(v, at)

    return check


def anything(v: Any, at: str) -> None:
    """Any JSON value (what json.loads returns is JSON by construction)."""


def obj(
    required: dict[str, Check] | None = None, optional: dict[str, Check] | None = None
) -> Check:
    """A JSON object with these keys (others allowed and not looked at)."""
    required, optional = required or {}, optional or {}

    def check(v: Any, at: str) -> None:
        if type(v) is not dict:
            raise SchemaError(at, f"must be an object, got {_kind(v)}")
        for key, sub in required.items():
            if key not in v:
                raise SchemaError(_join(at, key), "is missing")
            sub(v[key], _join(at, key))
        for key, sub in optional.items():
            if key in v:
                sub(v[key], _join(at, key))

    return check


def validate(value: Any, schema: Check, root: str = "") -> None:
    """SchemaError (naming the field) unless ``value`` fits ``schema``."""
    schema(value, root)


def parse_json(text: str | bytes, max_bytes: int) -> Any:
    """json.loads with a size limit, and without the RecursionError of deep nesting or the
    non-standard NaN/Infinity constants escaping as anything but ValueError."""
    if len(text) > max_bytes:
        raise ValueError(f"JSON of {len(text)} bytes exceeds the limit of {max_bytes}")

    def constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(text, parse_constant=constant)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _join(at: str, key: str) -> str:
    return f"{at}.{key}" if at else key


def _short(v: str) -> str:
    return repr(v if len(v) <= 40 else v[:37] + "...")
