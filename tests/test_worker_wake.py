"""The worker learns of a job when it is enqueued, not at its next poll (issue 16).

Every worker here polls only every hour (poll_delay=3600, past its first poll at start-up): a session that
completes was started by a wake-up (the enqueue's publish, the end of a job of the worker, the
subscription made again after a Redis restart)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from bot.queue import WAKE_CHANNEL, ArqQueue
from bot.services import Services
from runner.worker import build_worker
from tests.conftest import own_database
from tests.support.gitrepo import make_repo
from tests.support.servers import redis_server
from tests.test_worker import make_services, new_session

NO_POLL = 3600.0


@pytest.fixture
def pg_database() -> Iterator[str]:
    with own_database() as url:
        yield url


@contextlib.asynccontextmanager
async def idle_worker(services: Services, queue: ArqQueue, url: str,
                      max_jobs: int | None = None) -> AsyncIterator[None]:
    """A worker polling once an hour, without its sweep, started and subscribed to the wake-ups."""
    worker = build_worker(services, queue, url, poll_delay=NO_POLL, max_jobs=max_jobs)
    worker.cron_jobs = []  # its sweep (a deferred job, due every SWEEP_INTERVAL) would wake it too
    task = asyncio.create_task(worker.async_run())
    try:
        await subscribed(url)
        await asyncio.sleep(0.2)  # past its first poll: from here on only a wake-up starts a job
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        with contextlib.suppress(Exception):
            await worker.close()


async def subscribed(url: str, timeout: float = 20.0) -> None:
    redis = Redis.from_url(url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ConnectionError):
                if dict(await redis.pubsub_numsub(WAKE_CHANNEL)).get(WAKE_CHANNEL.encode(), 0) >= 1:
                    return
            await asyncio.sleep(0.05)
        raise AssertionError("the worker never subscribed to the wake-ups")
    finally:
        await redis.aclose()


async def completed(services: Services, session_id: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = await services.sessions.get(session_id)
        if row is not None and row.state in ("completed", "error"):
            assert row.state == "completed", row.error
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"session {session_id} did not run (the worker was not woken)")


async def test_an_enqueue_wakes_an_idle_worker(tmp_path: Path, pg_database: str, redis_url: str) -> None:
    origin = make_repo(tmp_path / "origin")
    services = await make_services(tmp_path, pg_database)
    queue = ArqQueue(redis_url)
    try:
        async with idle_worker(services, queue, redis_url):
            row, _ = await services.sessions.create(new_session(origin, "woken"))
            assert await queue.enqueue(row.id)
            await completed(services, row.id)
    finally:
        await queue.close()
        await services.close()


async def test_the_end_of_a_job_takes_the_next_queued_one(tmp_path: Path, pg_database: str, redis_url: str) -> None:
    """One slot: the second job's wake-up comes while the worker is full; the first's end starts it."""
    origin = make_repo(tmp_path / "origin")
    services = await make_services(tmp_path, pg_database)
    queue = ArqQueue(redis_url)
    try:
        async with idle_worker(services, queue, redis_url, max_jobs=1):
            rows = [(await services.sessions.create(new_session(origin, f"slot {n}")))[0] for n in range(2)]
            for row in rows:
                assert await queue.enqueue(row.id)
            for row in rows:
                await completed(services, row.id)
    finally:
        await queue.close()
        await services.close()


async def test_the_worker_subscribes_again_after_a_redis_restart(tmp_path: Path, pg_database: str) -> None:
    origin = make_repo(tmp_path / "origin")
    services = await make_services(tmp_path, pg_database)
    with redis_server() as server:
        queue = ArqQueue(server.url)
        try:
            async with idle_worker(services, queue, server.url):
                await asyncio.to_thread(server.restart, 0.5)
                await subscribed(server.url)
                row, _ = await services.sessions.create(new_session(origin, "after the restart"))
                deadline = time.monotonic() + 20
                while not await queue.enqueue(row.id):
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.1)
                await completed(services, row.id)
        finally:
            await queue.close()
            await services.close()
