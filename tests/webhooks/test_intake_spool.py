"""PostgreSQL down at intake: the delivery is kept in a local spool (202) and recorded when it returns."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from bot.cli import build_web_app
from tests.support.fake_github import FakeGitHub
from tests.support.servers import PostgresServer, postgres_server
from tests.test_api import RecordingQueue
from tests.webhooks.conftest import github_services, own_repo
from webhooks.github import process_kept, spool


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    with postgres_server() as server:
        yield server


async def test_a_delivery_during_a_postgres_outage_is_spooled_then_recorded(
        own_postgres: PostgresServer, settings_for: Any, fake_github: FakeGitHub, aiohttp_client: Any) -> None:
    import asyncio

    services = await github_services(settings_for, own_postgres.url, fake_github)
    queue = RecordingQueue()
    app = build_web_app(services, queue)
    client = await aiohttp_client(app)
    repo, _ = own_repo(fake_github)
    try:
        await asyncio.to_thread(own_postgres.kill)
        headers, body = fake_github.delivery("issue_comment", fake_github.issue_comment_payload(repo, 1, "@sesame fix it"))
        response = await client.post("/webhooks/github", data=body, headers=headers)
        assert response.status == 202, await response.text()
        assert (await response.json())["spooled"] is True
        assert len(spool.spooled(services)) == 1
        assert await spool.replay(app, process_kept) == 0  # still down: kept
        await asyncio.to_thread(own_postgres.start)
        assert await spool.replay(app, process_kept) == 1
        rows = await services.sessions.recent(10)
        again = await client.post("/webhooks/github", data=body, headers=headers)  # GitHub's own redelivery
    finally:
        await services.close()
    assert [row.repo for row in rows] == [repo] and len(queue.ids) == 1
    assert spool.spooled(services) == []
    assert again.status == 202 and (await again.json())["duplicate"] is True
