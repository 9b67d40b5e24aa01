"""`sesame worker` survives a Redis restart: it reconnects with backoff, says so, and runs new work."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bot.queue import ArqQueue
from bot.services import Services
from runner.worker import build_worker
from tests.conftest import own_database
from tests.support.gitrepo import make_repo
from tests.support.servers import RedisServer, redis_server
from tests.test_worker import make_services, new_session


@pytest.fixture
def pg_database() -> Iterator[str]:
    """This module's workers run a sweeper: a database of their own (see own_database). On the run's
    shared one, the sweeper handed this worker other tests' abandoned sessions, which held its slots while
    the session under test waited (a CI failure under pytest-xdist)."""
    with own_database("sesame_worker_redis") as url:
        yield url


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@contextlib.asynccontextmanager
async def running_worker(services: Services, queue: ArqQueue, url: str) -> AsyncIterator[asyncio.Task[None]]:
    worker = build_worker(services, queue, url, poll_delay=0.05)
    task = asyncio.create_task(worker.async_run())
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        with contextlib.suppress(Exception):
            await worker.close()


async def wait_state(services: Services, session_id: str, want: str, timeout: float) -> float:
    """Seconds until the session reaches `want`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        row = await services.sessions.get(session_id)
        if row is not None and row.state == want:
            return time.monotonic() - start
        await asyncio.sleep(0.05)
    raise AssertionError(f"session {session_id} is not {want} after {timeout} s")


async def enqueue_until_accepted(queue: ArqQueue, session_id: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await queue.enqueue(session_id):
        assert time.monotonic() < deadline, "Redis did not come back for the enqueue"
        await asyncio.sleep(0.1)


async def test_worker_keeps_running_across_a_3s_redis_restart_and_takes_new_work(
        tmp_path: Path, pg_database: str, own_redis: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="runner")
    origin = make_repo(tmp_path / "origin")
    services = await make_services(tmp_path, pg_database)
    queue = ArqQueue(own_redis.url)
    try:
        async with running_worker(services, queue, own_redis.url) as task:
            first, _ = await services.sessions.create(new_session(origin, "before the outage"))
            assert await queue.enqueue(first.id)
            await wait_state(services, first.id, "completed", 60)

            await asyncio.to_thread(own_redis.restart, 3.0)
            back = time.monotonic()
            assert not task.done(), task.exception() if task.done() else None

            second, _ = await services.sessions.create(new_session(origin, "after the outage"))
            await enqueue_until_accepted(queue, second.id)
            await wait_state(services, second.id, "completed", 60)
            resumed = time.monotonic() - back
            assert not task.done()
    finally:
        await queue.close()
        await services.close()
    messages = [r.getMessage() for r in caplog.records]
    assert any("Redis unreachable" in m for m in messages), messages
    assert any("Redis is back" in m for m in messages), messages
    print(f"worker resumed {resumed:.2f} s after Redis returned (session enqueued, run and completed)")


async def test_health_counts_live_workers_and_says_how_long_redis_is_down(
        tmp_path: Path, pg_database: str, own_redis: RedisServer) -> None:
    services = await make_services(tmp_path, pg_database)
    queue = ArqQueue(own_redis.url)
    try:
        async with running_worker(services, queue, own_redis.url):
            for _ in range(100):
                health = await queue.health()
                if health.get("workers"):
                    break
                await asyncio.sleep(0.05)
            assert health["ok"] and health["workers"] == 1, health
            await asyncio.to_thread(own_redis.kill)
            down = await queue.health()
            await asyncio.sleep(0.3)
            later = await queue.health()
            await asyncio.to_thread(own_redis.start)
            for _ in range(100):
                back = await queue.health()
                if back.get("workers"):
                    break
                await asyncio.sleep(0.05)
    finally:
        await queue.close()
        await services.close()
    assert not down["ok"] and "down_for" in down, down
    assert later["down_for"] >= 0.3, later
    assert back["ok"] and back["workers"] == 1, back  # the worker re-announced itself after the restart
