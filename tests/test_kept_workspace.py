"""A keep-alive workspace: its path is shown once the session ends, DELETE removes it with the session;
the API says whether the OS sandbox applied, not only what was asked."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from bot.cli import build_web_app
from runner.cli_run import run_from_terminal
from tests.support.gitrepo import make_repo
from tests.test_api import RecordingQueue
from tests.test_pipeline import args, make_services


async def test_a_kept_workspace_is_shown_and_deleted_with_its_session(tmp_path: Path, db_url: str,
                                                                      aiohttp_client: Any) -> None:
    origin = make_repo(tmp_path / "origin")
    services = await make_services(tmp_path, db_url)
    try:
        code = await run_from_terminal(services, args(origin, "touch it", command="touch made.txt", keep=True),
                                       io.StringIO())
        session = (await services.sessions.recent(1))[0]
        client = await aiohttp_client(build_web_app(services, RecordingQueue()))
        body = await (await client.get(f"/api/session/{session.id}")).json()
        assert code == 0 and body["keepAlive"] is True
        assert body["workspace"] and Path(body["workspace"], "project", "made.txt").exists()
        assert body["sandboxApplied"] is not None and body["sandboxSecurity"] is True
        cleanup = await services.sessions.last_event(session.id, "cleanup")
        assert cleanup is not None and cleanup.data == {"kept": True, "path": body["workspace"]}
        assert (await client.delete(f"/api/session/{session.id}")).status == 204
        assert not Path(body["workspace"]).exists()
    finally:
        await services.close()


async def test_without_keep_alive_no_workspace_is_left_or_shown(tmp_path: Path, db_url: str,
                                                                aiohttp_client: Any) -> None:
    origin = make_repo(tmp_path / "origin")
    services = await make_services(tmp_path, db_url)
    try:
        await run_from_terminal(services, args(origin, "touch it", command="touch made.txt", no_sandbox=True),
                                io.StringIO())
        session = (await services.sessions.recent(1))[0]
        client = await aiohttp_client(build_web_app(services, RecordingQueue()))
        body = await (await client.get(f"/api/session/{session.id}")).json()
        assert body["workspace"] is None
        assert body["sandboxSecurity"] is False and body["sandboxApplied"] is False
    finally:
        await services.close()
