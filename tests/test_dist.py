"""gqtok.dist: ranks from torchrun's environment or --rank/--world-size, and their shares."""

from __future__ import annotations

import pytest
import torch

from gqtok.dist import World, timeout
from gqtok.errors import UsageError


def test_one_process_without_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    w = World.from_env()
    assert (w.rank, w.size, w.group, w.is_main, w.distributed) == (0, 1, False, True, False)
    # collectives are identities for one process
    t = torch.tensor([3.0])
    assert w.all_reduce(t, "max") is t and float(t) == 3.0
    assert w.gather("x") == ["x"] and w.all_gather(5) == [5] and w.broadcast({"a": 1}) == {"a": 1}
    w.barrier()


def test_torchrun_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    w = World.from_env()
    assert (w.rank, w.size, w.local_rank, w.group, w.is_main) == (3, 4, 1, True, False)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(UsageError, match="outside WORLD_SIZE=4"):
        World.from_env()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(UsageError, match="must be integers"):
        World.from_env()


def test_job_array_ranks_and_parts_cover_the_list_once() -> None:
    items = list(range(11))
    parts = [World.array(r, 3).part(items) for r in range(3)]
    assert parts == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8]]
    assert sorted(sum(parts, [])) == items
    assert not World.array(1, 3).group  # independent ranks: no process group
    for rank, size in ((3, 3), (-1, 2), (0, 0)):
        with pytest.raises(UsageError, match="--rank"):
            World.array(rank, size)


def test_timeout_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GQTOK_DIST_TIMEOUT", raising=False)
    assert timeout().total_seconds() == 24 * 3600
    monkeypatch.setenv("GQTOK_DIST_TIMEOUT", "90")
    assert timeout().total_seconds() == 90
    monkeypatch.setenv("GQTOK_DIST_TIMEOUT", "soon")
    with pytest.raises(UsageError, match="GQTOK_DIST_TIMEOUT"):
        timeout()
