"""Recovery figures with servers of our own: a worker across a Redis restart, queries across a PostgreSQL one.

    python bench/outage.py [--restarts 5] [--down 3]

redis:    a running `ReconnectingWorker` (a no-op job), Redis SIGKILLed and restarted after --down s;
          the time from Redis accepting again to the next enqueued job having run.
postgres: an engine whose pool holds 5 connections, PostgreSQL SIGKILLed and restarted; how many of
          the next 10 queries fail, with a plain pool (before) and with Sesame's engine (after),
          and the cost per transaction of pool_pre_ping against Sesame's checkout check.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from arq.worker import func
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bot.db import async_url, make_engine
from bot.queue import ArqQueue, deserialize, redis_settings, serialize
from runner.reconnecting import ReconnectingWorker
from tests.support.servers import PostgresServer, RedisServer


async def redis_resume(server: RedisServer, down: float) -> float:
    ran = asyncio.Event()

    async def job(_ctx: dict[str, Any], _session_id: str) -> None:
        ran.set()

    worker = ReconnectingWorker(functions=[func(job, name="run_session")], redis_settings=redis_settings(server.url),
                                poll_delay=0.05, handle_signals=False, keep_result=0,
                                job_serializer=serialize, job_deserializer=deserialize)
    task = asyncio.create_task(worker.async_run())
    queue = ArqQueue(server.url)
    await asyncio.sleep(0.3)
    await asyncio.to_thread(server.restart, down)
    back = time.monotonic()
    while not await queue.enqueue(f"s-{back}"):
        await asyncio.sleep(0.02)
    await asyncio.wait_for(ran.wait(), 30)
    took = time.monotonic() - back
    alive = not task.done()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await queue.close()
    assert alive, "the worker exited"
    return took


async def failures(engine: AsyncEngine, server: PostgresServer) -> int:
    async def one() -> None:
        async with engine.begin() as conn:
            await conn.execute(text("select 1"))

    await asyncio.gather(*(one() for _ in range(5)))
    await asyncio.to_thread(server.restart)
    failed = 0
    for _ in range(10):
        try:
            await one()
        except Exception:
            failed += 1
    await engine.dispose()
    return failed


async def per_transaction(engine: AsyncEngine, n: int = 1000) -> float:
    async with engine.begin() as conn:
        await conn.execute(text("select 1"))
    started = time.perf_counter()
    for _ in range(n):
        async with engine.begin() as conn:
            await conn.execute(text("select 1"))
    await engine.dispose()
    return (time.perf_counter() - started) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--restarts", type=int, default=5)
    parser.add_argument("--down", type=float, default=3.0)
    args = parser.parse_args()
    redis, pg = RedisServer(), PostgresServer()
    redis.start()
    pg.start()
    try:
        resumes = [asyncio.run(redis_resume(redis, args.down)) for _ in range(args.restarts)]
        print(f"redis: worker alive after {args.restarts} restarts ({args.down} s down); job run "
              f"{statistics.median(resumes):.2f} s median, {max(resumes):.2f} s max after Redis returned")
        plain = [asyncio.run(failures(create_async_engine(async_url(pg.url)), pg)) for _ in range(args.restarts)]
        sesame = [asyncio.run(failures(make_engine(pg.url), pg)) for _ in range(args.restarts)]
        print(f"postgres: failed queries of 10 after a restart: plain pool {plain}, sesame {sesame}")
        cost = {name: statistics.median(asyncio.run(per_transaction(build())) for _ in range(3)) for name, build in (
            ("plain", lambda: create_async_engine(async_url(pg.url))),
            ("pool_pre_ping", lambda: create_async_engine(async_url(pg.url), pool_pre_ping=True)),
            ("sesame", lambda: make_engine(pg.url)))}
        print("postgres: us per transaction " + ", ".join(f"{k} {v:.0f}" for k, v in cost.items()))
    finally:
        redis.close()
        pg.close()


if __name__ == "__main__":
    main()
