"""PostgreSQL down when Slack calls: the slash command (answered within Slack's 3 s) and the thread
mention (which bolt answers at once) are kept in a local spool and recorded when the database returns."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from bot.cli.wiring import open_services
from tests.slack.conftest import RecordingQueue, SlackHarness
from tests.support.fake_github import FakeGitHub
from tests.support.fake_slack import FakeSlack
from tests.support.servers import PostgresServer, postgres_server
from webhooks import slack as slack_intake
from webhooks.app import create_app

CHANNEL = "C1GENERAL"


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    with postgres_server() as server:
        yield server


async def test_slack_requests_during_a_postgres_outage_are_kept_then_recorded(
        own_postgres: PostgresServer, settings_for: Any, fake_slack: FakeSlack, fake_github: FakeGitHub) -> None:
    settings = settings_for(DATABASE_URL=own_postgres.url, BASE_URL="http://sesame.test",
                            **fake_slack.settings_env(), **fake_github.settings_env())
    services = await open_services(settings, auto_migrate=True)
    queue = RecordingQueue()
    app = create_app(services, queue, extra_setup=[slack_intake.setup])  # type: ignore[arg-type]
    client = TestClient(TestServer(app))
    await client.start_server()
    h = SlackHarness(client, fake_slack, fake_github, services, queue)
    intake = app[slack_intake.SLACK_INTAKE]
    try:
        await h.command("acme/widget --agent command fix it", user="U1ALICE", channel=CHANNEL)
        [parent] = await services.sessions.recent(10)
        await services.sessions.set_branch(parent.id, "sesame/fix-it", "main")
        fake_slack.responses.clear()

        await asyncio.to_thread(own_postgres.kill)
        status, answer = await h.command("acme/widget --agent command add the docs", user="U1ALICE", channel=CHANNEL)
        mention = fake_slack.mention_event("--agent command now a test", channel=CHANNEL,
                                           thread_ts=parent.report["ts"])
        event_status, _ = await h.event(mention, event_id=f"Ev{uuid.uuid4().hex[:10]}")
        kept = sorted(p.name for p in intake.spool_dir().glob("*.json"))
        assert await intake.replay() == 0  # still down: kept for the next pass

        await asyncio.to_thread(own_postgres.start)
        recorded = await intake.replay()
        await h.drain()
        rows = await services.sessions.recent(10)
        left = list(intake.spool_dir().glob("*.json"))
    finally:
        await client.close()
        await services.close()
    assert status == 200 and answer["text"] == slack_intake.KEPT
    assert event_status == 200 and len(kept) == 2
    assert recorded == 2 and left == []
    docs = next(r for r in rows if r.prompt == "add the docs")
    child = next(r for r in rows if r.prompt == "now a test")
    assert child.parent_id == parent.id and child.branch == "sesame/fix-it"
    assert queue.enqueued == [parent.id, docs.id, child.id] or queue.enqueued == [parent.id, child.id, docs.id]
    assert docs.report["ts"] in {m.ts for m in fake_slack.posted(CHANNEL)}  # its message, once recorded
    assert any("Queued session" in r.get("text", "") for r in fake_slack.responses)  # told at its response_url
