"""REPO_CONCURRENCY and INSTALLATION_CONCURRENCY: a session over its limit waits, says for what, and
runs when a slot frees; the count holds across workers (claims racing on both databases)."""

from __future__ import annotations

import asyncio
import itertools
import os
import shlex
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from bot.admission import AtLimit
from bot.cli import make_queue
from bot.cli.wiring import open_services
from bot.models import Session, utcnow
from bot.queue import ArqQueue
from bot.services import Services
from bot.sessions import NewSession
from tests.conftest import own_database, session_base
from tests.support.gitrepo import git, make_repo
from tests.test_worker_death import agent_running, open_test_services, own_redis, start_worker, wait_for, worker_env

__all__ = ["own_redis"]  # the fixture, imported for this file's tests


async def new_session(services: Services, repo: str, **extra: Any) -> str:
    row, _ = await services.sessions.create(NewSession(
        trigger_key=f"t:{uuid.uuid4()}", prompt="p", agent="command", repo=repo, source="api", **extra))
    return row.id


async def settle(services: Services, *ids: str) -> None:
    """End this test's sessions: the run's PostgreSQL database is shared, and a later test's sweep must
    not find them processing with a lapsed lease."""
    async with services.sessions.sessionmaker() as db, db.begin():
        await db.execute(update(Session).where(Session.id.in_(ids)).values(state="completed", lease_expires_at=None))


async def reset(services: Services, *ids: str) -> None:
    async with services.sessions.sessionmaker() as db, db.begin():
        await db.execute(update(Session).where(Session.id.in_(ids))
                         .values(state="pending", attempts=0, lease_expires_at=None))


def account() -> str:
    """An account of this test's own (the PostgreSQL database is shared by the run's tests)."""
    return f"acme-{uuid.uuid4().hex[:8]}"


async def test_racing_claims_of_one_repository_never_both_start(services: Services) -> None:
    repo = f"{account()}/api"
    first, second = await new_session(services, repo), await new_session(services, repo)
    for _ in range(10):  # two workers claim at the same moment, on their own connections
        await reset(services, first, second)
        results = await asyncio.gather(services.sessions.claim_within(first, "w1", repo_limit=1),
                                       services.sessions.claim_within(second, "w2", repo_limit=1))
        started = [r for r in results if isinstance(r, Session)]
        waiting = [r for r in results if isinstance(r, AtLimit)]
        assert len(started) == 1 and len(waiting) == 1, results
        assert waiting[0].message == f"waiting: 1 session of {repo} is already running (REPO_CONCURRENCY 1)"
        refused = second if started[0].id == first else first
        row = await services.sessions.get(refused)
        assert row is not None and row.state == "pending" and row.attempts == 0  # no attempt counted
    both = await asyncio.gather(services.sessions.claim_within(first, "w1", repo_limit=2),
                                services.sessions.claim_within(second, "w2", repo_limit=2))
    assert [type(r) for r in both].count(type(None)) == 1  # one was running already; the other starts
    await reset(services, first, second)
    assert all(isinstance(r, Session) for r in await asyncio.gather(  # 0: no limit
        services.sessions.claim_within(first, "w1"), services.sessions.claim_within(second, "w2")))
    await settle(services, first, second)


async def test_the_installation_limit_counts_the_accounts_repositories(services: Services) -> None:
    acme = account()
    api, web, other = (await new_session(services, f"{acme}/api"), await new_session(services, f"{acme}/web"),
                       await new_session(services, f"{account()}/api"))
    local = await new_session(services, f"/srv/repos/{acme}")
    assert isinstance(await services.sessions.claim_within(api, "w1", installation_limit=2), Session)
    assert isinstance(await services.sessions.claim_within(web, "w1", installation_limit=2), Session)
    third = await new_session(services, f"{acme}/docs")
    at = await services.sessions.claim_within(third, "w2", repo_limit=5, installation_limit=2)
    assert isinstance(at, AtLimit)
    assert at.message == (f"waiting: 2 sessions of {acme}'s repositories are already running "
                          "(INSTALLATION_CONCURRENCY 2)")
    assert isinstance(await services.sessions.claim_within(other, "w2", installation_limit=2), Session)
    assert isinstance(await services.sessions.claim_within(local, "w2", installation_limit=1), Session)
    async with services.sessions.sessionmaker() as db, db.begin():  # a dead worker's lapsed lease
        await db.execute(update(Session).where(Session.id == web)
                         .values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    assert isinstance(await services.sessions.claim_within(third, "w2", installation_limit=2), Session)
    await settle(services, api, web, other, local, third)


def gated_agent(gate: Path) -> str:
    """Waits until the test opens the gate, then records its run in the work tree."""
    code = (f"import os, pathlib, time\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.05)\n"
            "p = pathlib.Path('runs.txt'); p.write_text(p.read_text() + 'run\\n' if p.exists() else 'run\\n')")
    return shlex.join(["/usr/bin/python3", "-c", code])


async def test_a_second_session_of_a_repository_waits_then_runs(db_url: str, settings_for: Any,
                                                                 tmp_path: Path) -> None:
    origin = make_repo(tmp_path / "origin")
    gate = Path(session_base()) / "gate"
    settings = settings_for(DATABASE_URL=db_url, BASE_URL="http://127.0.0.1:1", REPO_CONCURRENCY=1,
                            AGENT_COMMAND=gated_agent(gate))
    services = await open_services(settings, auto_migrate=True)
    said: dict[str, list[tuple[str, str | None]]] = {}
    real = services.channels["api"]

    async def recorder(services: Any, session: Any) -> Any:  # the API channel, its messages recorded
        channel = await real(services, session)
        publish = channel.publish

        async def record(progress: Any) -> None:
            said.setdefault(session.id, []).append((progress.state, progress.warning))
            await publish(progress)

        channel.publish = record
        return channel

    services.channels["api"] = recorder
    queue = make_queue(services)
    try:
        first = await new_session(services, str(origin), sandbox_security=False)
        assert await queue.enqueue(first)
        await wait_for(lambda: agent_running(services, first), 60, "the first session's agent")
        second = await new_session(services, str(origin), sandbox_security=False)
        assert await queue.enqueue(second)

        async def told() -> bool:
            return any(s == "pending" and w and w.startswith("waiting:") for s, w in said.get(second, []))

        await wait_for(told, 20, "the second session to say it waits")
        waiting = await services.sessions.get(second)
        os.close(os.open(gate, os.O_CREAT | os.O_WRONLY, 0o644))
        await asyncio.wait_for(queue.join(), 120)
        rows = {sid: await services.sessions.get(sid) for sid in (first, second)}
        events = {sid: await services.sessions.events(sid) for sid in (first, second)}
    finally:
        await queue.close()
        await services.close()
    assert waiting is not None and waiting.state == "pending" and waiting.attempts == 0
    expected = f"waiting: 1 session of {origin} is already running (REPO_CONCURRENCY 1)"
    assert ("pending", expected) in said[second]
    for sid, row in rows.items():
        assert row is not None and row.state == "completed" and row.attempts == 1, (row.state, row.error)
        starts = [e for e in events[sid] if e.kind == "status" and e.data.get("state") == "processing"]
        assert len(starts) == 1  # nothing ran twice
        assert git("show", f"{row.branch}:runs.txt", cwd=origin) == "run"
    assert rows[second].started_at >= rows[first].finished_at  # type: ignore[union-attr,operator]


@pytest.fixture
def own_pg() -> Any:
    with own_database("sesame_limits") as url:
        yield url


async def test_three_sessions_of_one_repository_on_two_workers_run_one_at_a_time(
        tmp_path: Path, own_pg: str, own_redis: str) -> None:
    origin = make_repo(tmp_path / "origin")
    gate = Path(session_base()) / "gate"
    env = worker_env(tmp_path, own_pg, own_redis, "", REPO_CONCURRENCY="1")
    env["AGENT_COMMAND"] = gated_agent(gate)
    services = await open_test_services(env, tmp_path)
    queue = ArqQueue(own_redis)
    workers = [start_worker(env, tmp_path) for _ in range(2)]
    try:
        ids = [await new_session(services, str(origin), sandbox_security=False) for _ in range(3)]
        for sid in ids:
            assert await queue.enqueue(sid)

        async def one_runs_two_wait() -> bool:
            rows = [await services.sessions.get(sid) for sid in ids]
            waits = [any("waiting" in e.data for e in await services.sessions.events(sid)) for sid in ids]
            return [r.state for r in rows if r].count("processing") == 1 and sum(waits) == 2

        await wait_for(one_runs_two_wait, 60, "one session to run and two to wait")
        await asyncio.sleep(1)  # the others keep waiting
        rows = [await services.sessions.get(sid) for sid in ids]
        assert sorted(r.state for r in rows if r) == ["pending", "pending", "processing"]
        os.close(os.open(gate, os.O_CREAT | os.O_WRONLY, 0o644))

        async def all_done() -> bool:
            rows = [await services.sessions.get(sid) for sid in ids]
            return all(r is not None and r.state == "completed" for r in rows)

        await wait_for(all_done, 90, "all three sessions to complete")
        rows = [await services.sessions.get(sid) for sid in ids]
        events = [await services.sessions.events(sid) for sid in ids]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.terminate()
        for worker in workers:
            worker.wait(60)
        await queue.close()
        await services.close()
    spans = sorted((r.started_at, r.finished_at) for r in rows if r)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end  # one at a time
    for row, evs in zip(rows, events, strict=True):
        assert row is not None and row.attempts == 1
        assert len([e for e in evs if e.kind == "status" and e.data.get("state") == "processing"]) == 1
        assert git("show", f"{row.branch}:runs.txt", cwd=origin) == "run"
