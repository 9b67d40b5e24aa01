"""Sessions waiting for one mirror fetch, or for one shared checkout, in one worker process wait together:
none queues for the file lock (a thread of the default executor each, one after another) once what it
waits for is done (issue 16: fifty sessions of one repository at once)."""

from __future__ import annotations

import asyncio
import fcntl
import os
from pathlib import Path
from typing import Any

import pytest

import runner.workspace as workspace
from runner import overlay
from runner.workspace import checkouts_dir, shared_checkout, update_mirror
from tests.support.gitrepo import git, make_repo


@pytest.fixture
def file_locks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The exclusive flocks taken (blocking or not)."""
    taken: list[int] = []
    real = fcntl.flock

    def counting(fd: Any, operation: int) -> None:
        if operation & fcntl.LOCK_EX:
            taken.append(operation)
        real(fd, operation)

    monkeypatch.setattr(fcntl, "flock", counting)
    return taken


async def test_the_waiters_of_a_fetch_do_not_queue_for_its_file_lock(tmp_path: Path, file_locks: list[int],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    origin = make_repo(tmp_path / "origin")
    await update_mirror(tmp_path / "data", str(origin), {})  # the clone
    fetches = 0
    real = workspace.git

    async def slow_fetch(args: list[str], *rest: Any, **kw: Any) -> str:
        nonlocal fetches
        if args[:1] == ["fetch"]:
            fetches += 1
            await asyncio.sleep(0.05)  # the others ask meanwhile
        return await real(args, *rest, **kw)

    monkeypatch.setattr(workspace, "git", slow_fetch)
    file_locks.clear()
    await asyncio.gather(*(update_mirror(tmp_path / "data", str(origin), {}) for _ in range(50)))
    assert 1 <= fetches <= 2
    assert len(file_locks) == fetches  # one lock per fetch run; the waiters it satisfied took none


@pytest.mark.skipif(os.geteuid() != 0 or overlay.probe(Path("/tmp")) is not None,
                    reason="shared checkouts serve overlay workspaces (root with CAP_SYS_ADMIN)")
async def test_the_waiters_of_a_shared_checkout_do_not_queue_for_its_file_lock(tmp_path: Path,
                                                                               file_locks: list[int]) -> None:
    origin = make_repo(tmp_path / "origin", {f"f{n}.txt": f"{n}\n" for n in range(200)})
    mirror = await update_mirror(tmp_path / "data", str(origin), {})
    sha = git("rev-parse", "refs/heads/main", cwd=mirror)
    file_locks.clear()
    entries = await asyncio.gather(*(shared_checkout(mirror, sha) for _ in range(50)))
    assert len(set(entries)) == 1 and (entries[0] / "tree" / "f7.txt").read_text() == "7\n"
    assert [p.name for p in checkouts_dir(mirror).iterdir() if p.is_dir()] == [entries[0].name]
    assert len(file_locks) == 1  # the maker's; the other 49 waited for it in-process
