"""The arq worker on real Redis: a burst worker drains sessions; a session never runs twice."""

from __future__ import annotations

import shlex
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.cli.wiring import open_services
from bot.queue import ArqQueue
from bot.services import Services
from bot.sessions import NewSession
from bot.settings import load_settings
from runner.worker import build_worker
from tests.conftest import own_database, session_base
from tests.support.gitrepo import branches, git, make_repo


@pytest.fixture
def pg_database() -> Iterator[str]:
    """This module's tests run sweepers or workers: a database of their own (see own_database)."""
    with own_database() as url:
        yield url


COUNTER = "import pathlib; p = pathlib.Path('runs.txt'); p.write_text(p.read_text() + 'run\\n' if p.exists() else 'run\\n')"


async def make_services(tmp_path: Path, db_url: str) -> Services:
    env = {"SESAME_DATA_DIR": str(tmp_path / "data"), "SESSION_DIR_BASE": session_base(),
           "ENCRYPTION_KEY": "ab" * 32, "DATABASE_URL": db_url, "BASE_URL": "http://127.0.0.1:1",
           "AGENT_COMMAND": shlex.join(["/usr/bin/python3", "-c", COUNTER])}
    return await open_services(load_settings(env=env, cwd=tmp_path), auto_migrate=True)


def new_session(repo: Path, prompt: str) -> NewSession:
    return NewSession(trigger_key=f"test:{uuid.uuid4()}", prompt=prompt, agent="command", repo=str(repo),
                      source="api")


async def test_burst_worker_drains_enqueued_sessions(tmp_path: Path, pg_database: str, redis_url: str) -> None:
    origin = make_repo(tmp_path / "origin")
    services = await make_services(tmp_path, pg_database)
    queue = ArqQueue(redis_url)
    try:
        rows = [(await services.sessions.create(new_session(origin, f"count runs {n}")))[0] for n in range(3)]
        for row in rows:
            assert await queue.enqueue(row.id)
            assert await queue.enqueue(row.id)  # a duplicate enqueue is dropped by job id
        worker = build_worker(services, queue, redis_url, burst=True, poll_delay=0)
        await worker.async_run()
        await worker.close()
        done = [await services.sessions.get(row.id) for row in rows]
    finally:
        await queue.close()
        await services.close()
    assert [s.state for s in done] == ["completed"] * 3, [s.error for s in done]
    assert worker.jobs_complete == 3 and worker.jobs_failed == 0
    for session in done:
        assert session.attempts == 1
        assert git("show", f"{session.branch}:runs.txt", cwd=origin) == "run"  # the agent ran once
    assert len(branches(origin)) == 4


async def test_a_finished_session_enqueued_again_does_not_run_again(tmp_path: Path, pg_database: str,
                                                                     redis_url: str) -> None:
    origin = make_repo(tmp_path / "origin")
    services = await make_services(tmp_path, pg_database)
    queue = ArqQueue(redis_url)
    try:
        row, _ = await services.sessions.create(new_session(origin, "once"))
        for _ in range(2):  # e.g. the sweeper re-enqueues it after the first run finished
            await queue.enqueue(row.id)
            worker = build_worker(services, queue, redis_url, burst=True, poll_delay=0)
            await worker.async_run()
            await worker.close()
        session = await services.sessions.get(row.id)
    finally:
        await queue.close()
        await services.close()
    assert session.state == "completed" and session.attempts == 1
    assert git("log", "--format=%s", session.branch, cwd=origin).count("once") == 1


def test_sesame_worker_burst_subprocess_drains_the_queue(tmp_path: Path, pg_database: str, redis_url: str) -> None:
    import asyncio
    import os
    import subprocess
    import sys

    origin = make_repo(tmp_path / "origin")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "SESAME_DATA_DIR": str(tmp_path / "data"),
           "SESSION_DIR_BASE": session_base(), "ENCRYPTION_KEY": "ab" * 32, "DATABASE_URL": pg_database,
           "BASE_URL": "http://127.0.0.1:1", "REDIS_URL": redis_url,
           "AGENT_COMMAND": shlex.join(["/usr/bin/python3", "-c", COUNTER]),
           "PYTHONPATH": str(Path(__file__).parent.parent)}

    async def enqueue() -> str:
        services = await make_services(tmp_path, pg_database)
        queue = ArqQueue(redis_url)
        try:
            row, _ = await services.sessions.create(new_session(origin, "from the worker command"))
            await queue.enqueue(row.id)
            return row.id
        finally:
            await queue.close()
            await services.close()

    session_id = asyncio.run(enqueue())
    result = subprocess.run([sys.executable, "-m", "bot.cli", "worker", "--burst"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]

    async def state() -> tuple[str, str | None]:
        services = await make_services(tmp_path, pg_database)
        try:
            row = await services.sessions.get(session_id)
            return row.state, row.branch
        finally:
            await services.close()

    final, branch = asyncio.run(state())
    assert final == "completed"
    assert git("show", f"{branch}:runs.txt", cwd=origin) == "run"
