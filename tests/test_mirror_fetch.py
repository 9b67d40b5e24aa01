"""Concurrent sessions of one repository share a mirror fetch (issue 16); none misses what was pushed
before it asked."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import runner.workspace as workspace
from runner.workspace import update_mirror
from tests.support.gitrepo import git, make_repo


@pytest.fixture
def fetches(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every `git fetch` update_mirror runs."""
    seen: list[list[str]] = []
    real = workspace.git

    async def counting(args: list[str], *rest: Any, **kw: Any) -> str:
        if args[:1] == ["fetch"]:
            seen.append(args)
            await asyncio.sleep(0.05)  # a fetch takes a while: the others ask meanwhile
        return await real(args, *rest, **kw)

    monkeypatch.setattr(workspace, "git", counting)
    return seen


async def test_fifty_sessions_at_once_share_the_fetch(tmp_path: Path, fetches: list[list[str]]) -> None:
    origin = make_repo(tmp_path / "origin")
    await update_mirror(tmp_path / "data", str(origin), {})  # the clone
    fetches.clear()
    mirrors = await asyncio.gather(*(update_mirror(tmp_path / "data", str(origin), {}) for _ in range(50)))
    assert len(set(mirrors)) == 1
    assert 1 <= len(fetches) <= 2, len(fetches)


async def test_a_push_before_the_call_is_always_fetched(tmp_path: Path, fetches: list[list[str]]) -> None:
    origin = make_repo(tmp_path / "origin")
    mirror = await update_mirror(tmp_path / "data", str(origin), {})
    for n in range(3):
        (origin / f"new{n}.txt").write_text("x\n")
        git("add", ".", cwd=origin)
        git("commit", "-qm", f"new {n}", cwd=origin)
        head = git("rev-parse", "HEAD", cwd=origin)
        await update_mirror(tmp_path / "data", str(origin), {})
        assert git("rev-parse", "refs/heads/main", cwd=mirror) == head
    assert len(fetches) == 3  # one each: an earlier fetch never stands in for a later call
