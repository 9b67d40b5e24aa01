"""PostgreSQL restarts under a running process: no query fails on a dead pooled connection."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.dbretry import DB_DOWN_ERRORS
from bot.services import Services
from bot.sessions import NewSession
from runner import pipeline
from tests.support.gitrepo import git, make_repo
from tests.support.servers import PostgresServer, postgres_server
from tests.test_worker import make_services, new_session


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


async def test_a_session_rides_out_postgres_down_when_its_steps_end(tmp_path: Path,
                                                                    own_postgres: PostgresServer) -> None:
    """PostgreSQL is down as the first step ends and until after the agent: the session still ends
    once, completed, with one final status (it used to stay `processing` until the lease lapsed)."""
    origin = make_repo(tmp_path / "origin")
    services = await make_services(tmp_path, own_postgres.url)
    try:
        row, _ = await services.sessions.create(new_session(origin, "through the outage"))
        claimed = await services.sessions.claim(row.id, "test-worker")
        assert claimed is not None
        await asyncio.to_thread(own_postgres.kill)
        restart = asyncio.create_task(asyncio.to_thread(own_postgres.restart, 2.0))
        await pipeline.run(services, claimed)
        await restart
        done = await services.sessions.get(row.id)
        events = await services.sessions.events(row.id)
    finally:
        await services.close()
    assert done is not None and done.state == "completed", (done.state, done.error) if done else None
    assert done.attempts == 1
    assert [e.data["state"] for e in events if e.kind == "status"].count("completed") == 1
    assert git("show", f"{done.branch}:runs.txt", cwd=origin) == "run"


TICKER = ("import time\nfor i in range(40):\n    print(f'tick {i}', flush=True)\n    time.sleep(0.1)\n"
          "open('runs.txt', 'w').write('run')")


async def test_agent_output_during_an_outage_is_stored_once_it_returns(tmp_path: Path,
                                                                       own_postgres: PostgresServer) -> None:
    """Output lines are stored in batches; a batch whose write meets the outage is kept and stored after
    it (it used to be dropped, and the flushing loop died with it)."""
    origin = make_repo(tmp_path / "origin")
    services = await make_services(tmp_path, own_postgres.url)
    try:
        row, _ = await services.sessions.create(NewSession(
            trigger_key=f"test:{uuid.uuid4()}", prompt="tick", agent="command", repo=str(origin), source="api",
            context={"command": shlex.join(["/usr/bin/python3", "-c", TICKER])}))
        claimed = await services.sessions.claim(row.id, "test-worker")
        assert claimed is not None
        run = asyncio.create_task(pipeline.run(services, claimed))
        await asyncio.sleep(1.5)  # the agent is printing
        await asyncio.to_thread(own_postgres.restart, 2.0)
        await run
        done = await services.sessions.get(row.id)
        events = await services.sessions.events(row.id, limit=10_000)
    finally:
        await services.close()
    assert done is not None and done.state == "completed", (done.state, done.error) if done else None
    ticks = sorted(int(m) for e in events for m in re.findall(r"tick (\d+)", json.dumps(e.data)))
    assert ticks == list(range(40)), ticks


async def test_the_final_write_gives_up_after_the_grace_period(tmp_path: Path, own_postgres: PostgresServer,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A database that never returns does not hold the worker forever: run() returns after the grace."""
    origin = make_repo(tmp_path / "origin")
    services = await make_services(tmp_path, own_postgres.url)
    monkeypatch.setitem(services.settings.values, "DB_OUTAGE_GRACE", 1)
    try:
        row, _ = await services.sessions.create(new_session(origin, "never back"))
        claimed = await services.sessions.claim(row.id, "test-worker")
        assert claimed is not None
        await asyncio.to_thread(own_postgres.kill)
        started = time.monotonic()
        with pytest.raises(DB_DOWN_ERRORS):
            await pipeline.run(services, claimed)
        took = time.monotonic() - started
    finally:
        await asyncio.to_thread(own_postgres.start)
        await services.close()
    assert took < 10


async def test_intake_statements_survive_a_postgres_restart(tmp_path: Path, own_postgres: PostgresServer) -> None:
    """The webhook hot path (bot/intake_store.py, its own asyncpg pool): its first statements after a
    restart land on a fresh connection instead of failing on a dead pooled one."""
    services = await make_services(tmp_path, own_postgres.url)
    try:
        assert services.sessions.fast is not None
        key = f"github:{uuid.uuid4()}"
        await asyncio.gather(*(services.sessions.intake_lookup(key, "d", "acme/x", 1) for _ in range(5)))
        await asyncio.to_thread(own_postgres.restart)
        failed = 0
        for i in range(10):
            try:
                await services.sessions.intake_lookup(key, f"d{i}", "acme/x", 1)
            except Exception:
                failed += 1
        row, created = await services.sessions.create(
            NewSession(trigger_key=key, prompt="after", agent="command", repo="acme/x", source="github",
                       issue_number=1, branch="sesame/after"))
        found = await services.sessions.intake_lookup(key, "d", "acme/x", 1)
    finally:
        await services.close()
    assert failed == 0
    assert created and found.existing == row.id and found.parent is not None and found.parent.id == row.id
