"""Intake during a Redis outage: an enqueue fails fast after the first failure (no connection attempt per
delivery), and what was refused is enqueued by the process itself as soon as Redis answers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from arq.constants import default_queue_name

from bot import queue as queue_module
from bot.queue import ArqQueue, job_id
from tests.support.servers import RedisServer, redis_server


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


async def test_sessions_refused_while_redis_is_down_are_enqueued_when_it_returns(
        own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queue_module, "REDIS_PROBE_EVERY", 0.2)
    queue = ArqQueue(own_redis.url)
    attempts = 0
    real_pool = queue.pool

    async def counting_pool():  # type: ignore[no-untyped-def]
        nonlocal attempts
        attempts += 1
        return await real_pool()

    queue.pool = counting_pool  # type: ignore[method-assign]
    try:
        assert await queue.enqueue("before", 1)
        await asyncio.to_thread(own_redis.kill)
        assert not await queue.enqueue("first", 1)  # truthfully refused
        tried = attempts
        refused = [await queue.enqueue(f"s{i}", 1) for i in range(20)]
        fast = attempts - tried  # connection attempts for the 20 deliveries right after the failure
        await asyncio.to_thread(own_redis.start)
        pool = await real_pool()
        expected = {job_id("first", 1), *(job_id(f"s{i}", 1) for i in range(20))}  # Redis kept nothing
        queued: set[str] = set()
        for _ in range(100):
            queued = {m.decode() for m in await pool.zrange(default_queue_name, 0, -1)}
            if expected <= queued:
                break
            await asyncio.sleep(0.1)
    finally:
        await queue.close()
    assert refused == [False] * 20 and fast == 0
    assert queued == expected
