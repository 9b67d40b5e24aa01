"""A follow-up sent while its parent runs waits for it (and says so), then continues on the parent's
branch: one branch is never worked on by two sessions at once, and neither session's work is lost."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path
from typing import Any

from bot.admission import AtLimit
from bot.cli import make_queue
from bot.cli.wiring import open_services
from bot.sessions import NewSession
from tests.conftest import session_base
from tests.support.gitrepo import git, make_repo
from tests.test_concurrency_limits import gated_agent, settle
from tests.test_worker_death import agent_running, wait_for


async def test_a_follow_up_waits_for_its_running_parent_then_continues_its_branch(
        db_url: str, settings_for: Any, tmp_path: Path) -> None:
    origin = make_repo(tmp_path / "origin")
    gate = Path(session_base()) / f"gate-{uuid.uuid4().hex[:6]}"
    settings = settings_for(DATABASE_URL=db_url, BASE_URL="http://127.0.0.1:1", AGENT_COMMAND=gated_agent(gate))
    services = await open_services(settings, auto_migrate=True)
    queue = make_queue(services)
    try:
        parent, _ = await services.sessions.create(NewSession(
            trigger_key=f"t:{uuid.uuid4()}", prompt="first", agent="command", repo=str(origin), source="api",
            sandbox_security=False))
        assert await queue.enqueue(parent.id)
        await wait_for(lambda: agent_running(services, parent.id), 60, "the parent's agent")
        child, _ = await services.sessions.create(NewSession(  # what PATCH /api/session/{id} makes
            trigger_key=f"t:{uuid.uuid4()}", prompt="and then", agent="command", repo=str(origin), source="api",
            parent_id=parent.id, branch=(await services.sessions.get(parent.id)).branch,  # type: ignore[union-attr]
            sandbox_security=False))
        at = await services.sessions.claim_within(child.id, "test")
        assert isinstance(at, AtLimit) and at.message == (
            "waiting: the session this follows up is still running; this one starts when it ends")
        assert await queue.enqueue(child.id)

        async def said_waiting() -> bool:
            events = await services.sessions.events(child.id)
            return any(e.kind == "status" and "waiting" in e.data for e in events)

        await wait_for(said_waiting, 20, "the follow-up to say it waits")
        waiting = await services.sessions.get(child.id)
        os.close(os.open(gate, os.O_CREAT | os.O_WRONLY, 0o644))
        await asyncio.wait_for(queue.join(), 120)
        rows = {sid: await services.sessions.get(sid) for sid in (parent.id, child.id)}
    finally:
        await queue.close()
        await settle(services, parent.id, child.id)
        await services.close()
    assert waiting is not None and waiting.state == "pending" and waiting.attempts == 0
    first, second = rows[parent.id], rows[child.id]
    assert first is not None and second is not None
    assert first.state == second.state == "completed", (first.error, second.error)
    assert second.branch == first.branch and second.started_at >= first.finished_at  # type: ignore[operator]
    assert git("show", f"{first.branch}:runs.txt", cwd=origin) == "run\nrun"  # both runs, one on the other
