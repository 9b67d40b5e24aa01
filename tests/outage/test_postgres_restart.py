"""PostgreSQL restarts under a running process: no query fails on a dead pooled connection."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.services import Services
from bot.sessions import NewSession
from tests.support.servers import PostgresServer, postgres_server
from tests.test_worker import make_services


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    with postgres_server() as server:
        yield server


def api_session(prompt: str) -> NewSession:
    return NewSession(trigger_key=f"test:{uuid.uuid4()}", prompt=prompt, agent="command", repo="/nonexistent",
                      source="api")


async def fill_pool(services: Services, width: int) -> None:
    """Check out `width` connections at once, so the pool holds that many when the server dies."""
    await asyncio.gather(*(services.sessions.recent(1) for _ in range(width)))


async def failures_after_restart(services: Services, server: PostgresServer, queries: int) -> int:
    await fill_pool(services, 5)
    await asyncio.to_thread(server.restart)
    failed = 0
    for _ in range(queries):
        try:
            await services.sessions.recent(1)
        except Exception:
            failed += 1
    return failed


async def test_no_query_fails_after_a_postgres_restart(tmp_path: Path, own_postgres: PostgresServer) -> None:
    services = await make_services(tmp_path, own_postgres.url)
    try:
        row, _ = await services.sessions.create(api_session("before"))
        failed = await failures_after_restart(services, own_postgres, 10)
        again = await services.sessions.get(row.id)
    finally:
        await services.close()
    assert failed == 0
    assert again is not None and again.prompt == "before"
