"""A session that reaches a sandbox limit ends naming it, and its work so far is still pushed."""

from __future__ import annotations

import io
import shlex
from pathlib import Path

import pytest

from runner.cli_run import run_from_terminal
from tests.sandbox.conftest import requires_sandbox
from tests.sandbox.test_limits import leftover_cgroups
from tests.support.gitrepo import make_repo, show_file
from tests.test_pipeline import PYTHON, args, make_services

pytestmark = requires_sandbox

HOG = f"{PYTHON} -c \"b = b'x' * (256 << 20); print('survived')\""


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "origin")


async def test_a_memory_hog_ends_the_session_and_keeps_the_work(tmp_path: Path, db_url: str, origin: Path) -> None:
    command = shlex.join(["sh", "-c", f"echo kept > kept.txt; {HOG}; echo after > after.txt; sleep 60"])
    services = await make_services(tmp_path, db_url, SANDBOX_MEMORY_LIMIT="96m")
    try:
        code = await run_from_terminal(services, args(origin, "hog", command=command), io.StringIO())
        session = (await services.sessions.recent(1))[0]
    finally:
        await services.close()
    assert code == 1 and session.state == "error"
    assert session.error == "stopped: the sandbox reached its memory limit of 96m (SANDBOX_MEMORY_LIMIT)"
    assert show_file(origin, session.branch, "kept.txt") == "kept"
    assert leftover_cgroups(session.id) == []


async def test_a_disk_hog_is_stopped_and_the_work_before_it_kept(tmp_path: Path, db_url: str, origin: Path) -> None:
    script = "echo kept > kept.txt; dd if=/dev/zero of=$TMPDIR/big bs=1M count=24 2>/dev/null; sleep 60"
    command = shlex.join(["sh", "-c", script])
    services = await make_services(tmp_path, db_url, SANDBOX_DISK_LIMIT="16m")
    try:
        code = await run_from_terminal(services, args(origin, "disk", command=command), io.StringIO())
        session = (await services.sessions.recent(1))[0]
    finally:
        await services.close()
    assert code == 1 and session.state == "error"
    assert session.error == "stopped: the sandbox reached its disk limit of 16m (SANDBOX_DISK_LIMIT)"
    assert show_file(origin, session.branch, "kept.txt") == "kept"


async def test_a_fork_bomb_ends_the_session_and_keeps_the_work(tmp_path: Path, db_url: str, origin: Path) -> None:
    command = shlex.join(["sh", "-c", "echo kept > kept.txt; bomb() { bomb | bomb & }; bomb; sleep 60"])
    services = await make_services(tmp_path, db_url, SANDBOX_MAX_PROCESSES="64")
    try:
        code = await run_from_terminal(services, args(origin, "bomb", command=command), io.StringIO())
        session = (await services.sessions.recent(1))[0]
    finally:
        await services.close()
    assert code == 1 and session.state == "error"
    assert session.error == "stopped: the sandbox reached its process limit of 64 (SANDBOX_MAX_PROCESSES)"
    assert show_file(origin, session.branch, "kept.txt") == "kept"
    assert leftover_cgroups(session.id) == []
