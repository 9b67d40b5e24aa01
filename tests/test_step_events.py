"""Every step a session started ends with a final status in its event log, and no workspace outlives a
session that could not start (a base branch that does not exist)."""

from __future__ import annotations

import io
from pathlib import Path

from bot.services import Services
from runner.cli_run import run_from_terminal
from tests.conftest import session_base
from tests.support.gitrepo import make_repo
from tests.test_pipeline import args, make_services


async def _last_status(services: Services, session_id: str) -> dict[str, str]:
    """Each step's last status in the event log."""
    last: dict[str, str] = {}
    for event in await services.sessions.events(session_id):
        if event.kind == "step":
            last[event.data["step"]] = event.data["status"]
    return last


async def _run(tmp_path: Path, db_url: str, command: str, **extra: object) -> tuple[int, Services, str]:
    origin = make_repo(tmp_path / "origin")
    services = await make_services(tmp_path, db_url)
    code = await run_from_terminal(services, args(origin, "do it", command=command, **extra), io.StringIO())
    session = (await services.sessions.recent(1))[0]
    return code, services, session.id


async def test_a_local_run_ends_its_pr_step(tmp_path: Path, db_url: str) -> None:
    """A local repository gets no pull request: the pr step's events end `skipped` (it stayed `running`)."""
    code, services, session_id = await _run(tmp_path, db_url, "touch made.txt")
    try:
        assert code == 0
        assert await _last_status(services, session_id) == {
            "workspace": "done", "agent": "done", "commit": "done", "pr": "skipped"}
    finally:
        await services.close()


async def test_a_failed_agent_ends_its_step_failed(tmp_path: Path, db_url: str) -> None:
    code, services, session_id = await _run(tmp_path, db_url, "sh -c 'echo broken >&2; exit 3'")
    try:
        assert code == 1
        last = await _last_status(services, session_id)
        assert last["agent"] == "failed" and "running" not in last.values(), last
    finally:
        await services.close()


async def test_a_missing_base_branch_is_named_and_leaves_no_workspace(tmp_path: Path, db_url: str) -> None:
    code, services, session_id = await _run(tmp_path, db_url, "touch made.txt", base="no-such-branch")
    try:
        session = await services.sessions.get(session_id)
        assert code == 1 and session is not None
        assert session.error is not None and "the base branch `no-such-branch` does not exist" in session.error
        assert "fatal:" not in session.error
        assert not (Path(session_base()) / session_id).exists()
        assert (await _last_status(services, session_id))["workspace"] == "failed"
    finally:
        await services.close()
