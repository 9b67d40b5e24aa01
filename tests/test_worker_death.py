"""A worker killed (SIGKILL) or stopped (SIGTERM) mid-session: real worker processes, Redis, PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from sqlalchemy import update

from bot.cli.wiring import open_services
from bot.models import Session, utcnow
from bot.queue import ArqQueue
from bot.services import Services
from bot.sessions import NewSession
from bot.settings import load_settings
from bot.sweeper import sweep
from runner.worker import build_worker
from tests.conftest import own_database, redis_test_url, session_base
from tests.support.gitrepo import git, make_repo

COUNTER = "import pathlib; p = pathlib.Path('runs.txt'); p.write_text(p.read_text() + 'run\\n' if p.exists() else 'run\\n')"
SLOW = "import pathlib, time; pathlib.Path('partial.txt').write_text('so far\\n'); time.sleep(300)"
ROOT = Path(__file__).parent.parent


@pytest.fixture
async def own_redis() -> AsyncIterator[str]:
    """A Redis database of this file's own (other tests flush redis_url's)."""
    url = redis_test_url(1)
    client = aioredis.from_url(url)
    await client.flushdb()
    yield url
    await client.flushdb()
    await client.aclose()


def worker_env(tmp_path: Path, db: str, redis: str, agent: str, **extra: str) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "SESAME_DATA_DIR": str(tmp_path / "data"),
            "SESSION_DIR_BASE": str(sessions_dir(tmp_path)), "ENCRYPTION_KEY": "ab" * 32, "DATABASE_URL": db,
            "BASE_URL": "http://127.0.0.1:1", "REDIS_URL": redis, "PYTHONPATH": str(ROOT),
            "AGENT_COMMAND": shlex.join(["/usr/bin/python3", "-c", agent]), **extra}


def sessions_dir(tmp_path: Path) -> Path:
    """One world-traversable session base per test (pytest's tmp dirs are 0700)."""
    link = tmp_path / "sessions-base"
    if not link.exists():
        link.write_text(session_base())
    return Path(link.read_text())


def agents_left() -> list[str]:
    """Pids of this file's slow agents still running on the host."""
    found = subprocess.run(["pgrep", "-f", "partial.txt"], capture_output=True, text=True)
    return found.stdout.split()


async def open_test_services(env: dict[str, str], tmp_path: Path) -> Services:
    return await open_services(load_settings(env=env, cwd=tmp_path), auto_migrate=True)


def start_worker(env: dict[str, str], tmp_path: Path) -> subprocess.Popen[bytes]:
    log = (tmp_path / f"worker-{uuid.uuid4().hex[:6]}.log").open("wb")
    return subprocess.Popen([sys.executable, "-m", "bot.cli", "worker"], env=env, cwd=tmp_path,
                            stdout=log, stderr=subprocess.STDOUT)


async def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


async def agent_running(services: Services, session_id: str) -> bool:
    events = await services.sessions.events(session_id)
    return any(e.kind == "step" and e.data.get("step") == "agent" and e.data.get("status") == "running"
               for e in events)


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A database of this file's own: its sweeps would otherwise run every session other tests left."""
    with own_database("sesame_death") as url:
        yield url


async def drain(services: Services, queue: ArqQueue, redis: str) -> None:
    """Run what is queued on an in-process burst worker (the dead worker's next sweep is dropped first:
    a burst worker waits for every queued job, this one is due in up to 30 s)."""
    client = aioredis.from_url(redis)
    crons = [j for j in await client.zrange("arq:queue", 0, -1) if j.startswith(b"cron:")]
    if crons:
        await client.zrem("arq:queue", *crons)
    await client.aclose()
    worker = build_worker(services, queue, redis, burst=True, poll_delay=0)
    await worker.async_run()
    await worker.close()


@dataclass
class WorkerRun:
    """A `sesame worker` subprocess (running the slow agent) in the middle of a session."""

    origin: Path
    services: Services  # the test's own, whose sessions run the counting agent
    queue: ArqQueue
    worker: subprocess.Popen[bytes]
    row: Session


@asynccontextmanager
async def worker_in_a_session(tmp_path: Path, pg_database: str, own_redis: str,
                              **slow_settings: str) -> AsyncIterator[WorkerRun]:
    """Start a worker, enqueue a session of a fresh repository and wait for its agent to run; at the end
    the worker is killed if it still runs, and the queue and services are closed."""
    origin = make_repo(tmp_path / "origin")
    slow_env = worker_env(tmp_path, pg_database, own_redis, SLOW, **slow_settings)
    services = await open_test_services(worker_env(tmp_path, pg_database, own_redis, COUNTER), tmp_path)
    queue = ArqQueue(own_redis)
    worker = start_worker(slow_env, tmp_path)
    try:
        row, _ = await services.sessions.create(NewSession(
            trigger_key=f"t:{uuid.uuid4()}", prompt="count runs", agent="command", repo=str(origin), source="api"))
        assert await queue.enqueue(row.id)
        await wait_for(lambda: agent_running(services, row.id), 90, "the agent to start on the worker")
        yield WorkerRun(origin, services, queue, worker, row)
    finally:
        if worker.poll() is None:
            worker.kill()
        await queue.close()
        await services.close()


async def test_a_session_of_a_killed_worker_runs_again_on_another(tmp_path: Path, pg_database: str,
                                                                   own_redis: str) -> None:
    async with worker_in_a_session(tmp_path, pg_database, own_redis, SESSION_LEASE_SECONDS="3") as run:
        services, queue, row = run.services, run.queue, run.row
        run.worker.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        run.worker.wait(10)
        orphans = agents_left()
        async with services.sessions.sessionmaker() as db, db.begin():  # the lease runs out (3 s here)
            await db.execute(update(Session).where(Session.id == row.id)
                             .values(lease_expires_at=utcnow() - timedelta(seconds=1)))
        await sweep(services, queue)
        retried = await services.sessions.get(row.id)
        await drain(services, queue, own_redis)
        took = time.monotonic() - killed
        final = await services.sessions.get(row.id)
        events = await services.sessions.events(row.id)
    origin = run.origin
    assert retried.state == "pending", "the sweeper gives the dead worker's session back to the queue"
    assert final.state == "completed", (final.state, final.error)
    assert final.attempts == 2
    lost = [e.data for e in events if e.kind == "status" and e.data.get("reason") == "worker lost"]
    assert len(lost) == 1 and lost[0]["attempts"] == 1
    assert git("show", f"{final.branch}:runs.txt", cwd=origin) == "run"
    assert not (sessions_dir(tmp_path) / row.id).exists()
    print(f"agents left running by the killed worker: {orphans}; after the retry: {agents_left()}")
    assert agents_left() == []
    print(f"SIGKILL to the retry's end: {took:.1f} s")


async def test_the_retry_is_said_and_the_last_attempt_ends_in_error(services: Services, own_redis: str) -> None:
    said: list[Any] = []

    class Recorder:
        async def publish(self, progress: Any) -> None:
            said.append((progress.state, progress.warning, progress.error))

    async def recorder(_services: Any, _session: Any) -> Recorder:
        return Recorder()

    services.channels["api"] = recorder
    queue = ArqQueue(own_redis)
    client = aioredis.from_url(own_redis)
    jobs: list[list[str]] = []
    try:
        row, _ = await services.sessions.create(NewSession(
            trigger_key=f"t:{uuid.uuid4()}", prompt="p", agent="command", repo="r", source="api"))
        for attempt in (1, 2, 3):
            claimed = await services.sessions.claim(row.id, f"worker-{attempt}")
            assert claimed is not None and claimed.attempts == attempt
            async with services.sessions.sessionmaker() as db, db.begin():
                await db.execute(update(Session).where(Session.id == row.id)
                                 .values(lease_expires_at=utcnow() - timedelta(seconds=1)))
            await sweep(services, queue)
            await sweep(services, queue)  # a second pass changes nothing
            jobs.append([j.decode() for j in await client.zrange("arq:queue", 0, -1)])
        await services.background.drain()  # the sweeper reports an end in the background
        final = await services.sessions.get(row.id)
    finally:
        await client.aclose()
        await queue.close()
    assert said[:2] == [("pending", "the worker running this stopped; retrying, attempt 2 of 3", None),
                        ("pending", "the worker running this stopped; retrying, attempt 3 of 3", None)]
    assert said[2][0] == "error" and "stopped 3 times; giving up" in said[2][2] and len(said) == 3
    assert final.state == "error" and final.attempts == 3
    assert jobs == [[f"{row.id}:2"], [f"{row.id}:3"], []]  # one job per attempt; a dead one is dropped


async def test_enqueue_says_when_arq_still_holds_the_job(own_redis: str) -> None:
    queue = ArqQueue(own_redis)
    session_id = str(uuid.uuid4())
    client = aioredis.from_url(own_redis)
    try:
        await client.set(f"arq:in-progress:{session_id}:1", b"1")  # a dead worker's job
        await client.set(f"arq:job:{session_id}:1", b"{}")
        assert await queue.enqueue(session_id) is False
        assert await queue.enqueue(session_id, attempt=2) is True
        assert await queue.enqueue(session_id, attempt=2) is True  # still waiting: deduped, not lost
        assert await client.zcard("arq:queue") == 1
    finally:
        await client.aclose()
        await queue.close()


async def test_sigterm_hands_the_session_back_with_its_work_pushed(tmp_path: Path, pg_database: str,
                                                                    own_redis: str) -> None:
    async with worker_in_a_session(tmp_path, pg_database, own_redis, WORKER_SHUTDOWN_GRACE="1") as run:
        services, queue, row, worker = run.services, run.queue, run.row, run.worker
        partial = sessions_dir(tmp_path) / row.id / "project" / "partial.txt"

        async def written() -> bool:  # the agent's Python may take more than a second to start under load
            return partial.exists()

        await wait_for(written, 60, "the agent to write partial.txt")
        worker.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = await asyncio.to_thread(worker.wait, 60)
        stopped_in = time.monotonic() - started
        handed = await services.sessions.get(row.id)
        client = aioredis.from_url(own_redis)
        queued = [j.decode() for j in await client.zrange("arq:queue", 0, -1)
                  if not j.startswith(b"cron:")]  # arq's own sweep may be due at that moment
        await client.aclose()
        await drain(services, queue, own_redis)
        final = await services.sessions.get(row.id)
        events = await services.sessions.events(row.id)
    origin = run.origin
    print(f"SIGTERM to the worker's exit, the session handed back and enqueued: {stopped_in:.1f} s")
    assert code == 0 and stopped_in < 30
    assert handed.state == "pending" and handed.attempts == 0 and handed.lease_expires_at is None
    assert queued == [f"{row.id}:1"]
    assert any(e.kind == "push" and e.data.get("partial") for e in events)
    assert any(e.kind == "status" and "shutting down" in str(e.data.get("reason")) for e in events)
    assert final.state == "completed" and final.attempts == 1, (final.state, final.error)
    assert git("show", f"{final.branch}:partial.txt", cwd=origin) == "so far"  # continued on the same branch
    assert git("show", f"{final.branch}:runs.txt", cwd=origin) == "run"


async def test_a_handed_back_session_says_so_in_its_progress_message(tmp_path: Path, pg_database: str) -> None:
    from runner import pipeline

    origin = make_repo(tmp_path / "origin")
    services = await open_test_services(worker_env(tmp_path, pg_database, "redis://127.0.0.1:1", SLOW), tmp_path)
    said: list[Any] = []
    real = services.channels["api"]

    async def recorder(services: Any, session: Any) -> Any:  # the API channel, its messages recorded
        channel = await real(services, session)
        publish = channel.publish

        async def record(progress: Any) -> None:
            said.append((progress.state, progress.warning))
            await publish(progress)

        channel.publish = record
        return channel

    services.channels["api"] = recorder
    shutdown = asyncio.Event()
    try:
        row, _ = await services.sessions.create(NewSession(
            trigger_key=f"t:{uuid.uuid4()}", prompt="p", agent="command", repo=str(origin), source="api"))
        claimed = await services.sessions.claim(row.id, "stopping-worker")
        assert claimed is not None
        run = asyncio.create_task(pipeline.run(services, claimed, shutdown))
        await wait_for(lambda: agent_running(services, row.id), 60, "the agent to start")
        partial = sessions_dir(tmp_path) / row.id / "project" / "partial.txt"

        async def written() -> bool:  # the agent's Python may take more than a second to start under load
            return partial.exists()

        await wait_for(written, 60, "the agent to write partial.txt")
        shutdown.set()
        await asyncio.wait_for(run, 60)
        handed = await services.sessions.get(row.id)
    finally:
        await services.close()
    assert handed.state == "pending" and handed.attempts == 0
    state, warning = said[-1]
    assert state == "pending"
    assert warning.startswith("the worker running this is shutting down; another worker continues")
    assert f"work so far kept on `{handed.branch}`" in warning
    assert not (sessions_dir(tmp_path) / row.id).exists()


async def test_worker_concurrency_is_a_setting(tmp_path: Path, pg_database: str, own_redis: str) -> None:
    env = worker_env(tmp_path, pg_database, own_redis, COUNTER, WORKER_CONCURRENCY="7")
    services = await open_test_services(env, tmp_path)
    queue = ArqQueue(own_redis)
    try:
        assert build_worker(services, queue, own_redis).max_jobs == 7
    finally:
        await queue.close()
        await services.close()
