"""Fetching released checkpoints: the drop-in folder, then the Hugging Face Hub cache/download.

Honours HF_HOME, HF_HUB_CACHE, HF_ENDPOINT and HF_HUB_OFFLINE, read at call time; every
failure becomes one ModelError that says how to get the file by other means.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from gqtok.errors import ModelError, first_line
from gqtok.zoo.paths import weights_dirs
from gqtok.zoo.registry import ENTRIES, Entry, converted_path, dropin_path, pinned_revision


def is_available(name: str) -> bool:
    """Usable without network: bundled, converted, or its checkpoint already on disk."""
    entry = ENTRIES[name]
    if entry.repo is None:
        return any((d / entry.filename).exists() for d in weights_dirs())
    return converted_path(entry).exists() or _local_checkpoint(entry) is not None


def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_settings() -> dict[str, Any]:
    """Endpoint, cache and offline flag read from the environment at call time."""
    cache = os.environ.get("HF_HUB_CACHE")
    if not cache:
        home = os.environ.get("HF_HOME") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface"
        )
        cache = os.path.join(home, "hub")
    offline = _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(
        os.environ.get("TRANSFORMERS_OFFLINE")
    )
    endpoint = os.environ.get("HF_ENDPOINT") or None
    return {
        "cache_dir": os.path.expanduser(os.path.expandvars(cache)),
        "offline": offline,
        "endpoint": endpoint.rstrip("/") if endpoint else None,
    }


def _hf_download(entry: Entry, local_only: bool) -> tuple[Path, str | None]:
    """(path, commit) of the checkpoint in the Hub cache, downloading unless local_only."""
    from huggingface_hub import hf_hub_download

    hub = hub_settings()
    assert entry.repo is not None
    path = Path(
        hf_hub_download(
            entry.repo,
            entry.filename,
            revision=pinned_revision(entry),
            cache_dir=hub["cache_dir"],
            endpoint=hub["endpoint"],
            local_files_only=local_only or hub["offline"],
        )
    )
    commit = path.parent.name if path.parent.parent.name == "snapshots" else None
    return path, commit


def _local_checkpoint(entry: Entry) -> Path | None:
    drop = dropin_path(entry)
    if drop.is_file():
        return drop
    try:
        return _hf_download(entry, local_only=True)[0]
    except Exception:  # noqa: BLE001 - not in the Hub cache
        return None


def _unavailable(entry: Entry, reason: str) -> ModelError:
    return ModelError(
        f"released model {entry.name!r} is not available ({reason}): run"
        f" `hf download {entry.repo} {entry.filename}` where the Hub is reachable (same"
        f" HF_HOME), or place the file at {dropin_path(entry)}, or pass --model PATH"
    )


def fetch_checkpoint(entry: Entry) -> tuple[Path, dict[str, Any]]:
    """The checkpoint file of a released model and where it came from; ModelError if none."""
    drop = dropin_path(entry)
    if drop.is_file():
        return drop, {"file": entry.filename, "from": str(drop)}
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        path, commit = _hf_download(entry, local_only=False)
    except LocalEntryNotFoundError:
        why = "offline (HF_HUB_OFFLINE)" if hub_settings()["offline"] else "Hub unreachable"
        raise _unavailable(entry, f"{why} and not in the Hub cache") from None
    except (EntryNotFoundError, RevisionNotFoundError, RepositoryNotFoundError) as exc:
        first = first_line(exc)
        raise ModelError(
            f"{entry.repo} has no {entry.filename} at revision {pinned_revision(entry)} ({first});"
            " download the checkpoint yourself and pass --model PATH"
        ) from None
    except Exception as exc:  # noqa: BLE001 - network, disk, HTTP errors
        first = first_line(exc)
        raise _unavailable(entry, f"download failed: {first}") from None
    origin = {"repo": entry.repo, "file": entry.filename, "revision": pinned_revision(entry)}
    if commit:
        origin["commit"] = commit
    return path, origin
