"""Storage on SQLite and PostgreSQL: migrations, idempotent sessions, events, violations, leases."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

from sqlalchemy import inspect as sa_inspect
from sqlalchemy import update

from bot.db import NotMigrated, check_migrated, make_engine, migrate
from bot.models import Session, State, utcnow
from bot.services import Services
from bot.sessions import NewSession

TABLES = {"installations", "installation_repos", "sessions", "session_events", "violations",
          "webhook_deliveries", "credentials", "alembic_version"}


def new(key: str | None = None, **extra: object) -> NewSession:
    return NewSession(trigger_key=key or f"test:{uuid.uuid4()}", prompt="fix the flaky retry test\nmore",
                      agent="command", repo="acme/widget", source="api", **extra)  # type: ignore[arg-type]


async def test_migrations_create_every_table(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        await migrate(engine)
        await migrate(engine)  # idempotent
        await check_migrated(engine)
        async with engine.connect() as conn:
            tables = set(await conn.run_sync(lambda c: sa_inspect(c).get_table_names()))
        assert TABLES <= tables
    finally:
        await engine.dispose()


async def test_unmigrated_database_is_detected(tmp_path) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    try:
        try:
            await check_migrated(engine)
        except NotMigrated as exc:
            assert "revision none" in str(exc)
        else:
            raise AssertionError("an empty database passed the migration check")
    finally:
        await engine.dispose()


async def test_create_is_idempotent_by_trigger_key(services: Services) -> None:
    key = f"delivery:{uuid.uuid4()}"
    first, created = await services.sessions.create(new(key))
    again, created_again = await services.sessions.create(new(key))
    assert created and not created_again
    assert again.id == first.id
    assert first.title == "fix the flaky retry test"


async def test_concurrent_duplicates_make_one_session(services: Services) -> None:
    key = f"delivery:{uuid.uuid4()}"
    results = await asyncio.gather(*(services.sessions.create(new(key)) for _ in range(8)))
    assert len({row.id for row, _ in results}) == 1
    assert sum(created for _, created in results) == 1


async def test_a_new_session_has_its_pending_event_and_a_duplicate_adds_none(services: Services) -> None:
    key = f"delivery:{uuid.uuid4()}"
    row, _ = await services.sessions.create(new(key, issue_number=7, report={"comment_due": 1.5}))
    await services.sessions.create(new(key))
    stored = await services.sessions.get(row.id)
    assert stored is not None and (stored.issue_number, stored.report, stored.state) == (7, {"comment_due": 1.5},
                                                                                           "pending")
    [event] = await services.sessions.events(row.id)
    assert (event.seq, event.kind, event.data) == (1, "status", {"state": "pending"})


async def test_delivery_ids_are_recorded_once(services: Services) -> None:
    delivery = str(uuid.uuid4())
    outcomes = await asyncio.gather(*(services.sessions.record_delivery(delivery, "github", "ping")
                                      for _ in range(5)))
    assert sorted(outcomes) == [False, False, False, False, True]


async def test_events_have_monotonic_seq_under_concurrency(services: Services) -> None:
    row, _ = await services.sessions.create(new())
    seqs = await asyncio.gather(*(services.sessions.add_event(row.id, "line", {"n": n}) for n in range(20)))
    assert sorted(seqs) == list(range(2, 22))  # seq 1 is the pending status
    events = await services.sessions.events(row.id, after=10)
    assert [e.seq for e in events] == list(range(11, 22))


async def test_violations_are_rows_events_and_a_count(services: Services) -> None:
    row, _ = await services.sessions.create(new())
    await services.sessions.add_violation(row.id, "network", "evil.invalid:443", "connect", "not allowed")
    await services.sessions.add_violation(row.id, "filesystem", "/etc/passwd", "write")
    fresh = await services.sessions.get(row.id)
    assert fresh.violation_count == 2
    kinds = [v.kind for v in await services.sessions.violations(row.id)]
    assert kinds == ["network", "filesystem"]
    assert [e.kind for e in await services.sessions.events(row.id)][-2:] == ["violation", "violation"]


async def test_claim_is_exclusive_and_finish_happens_once(services: Services) -> None:
    row, _ = await services.sessions.create(new())
    claims = await asyncio.gather(*(services.sessions.claim(row.id, f"w{n}") for n in range(4)))
    assert sum(c is not None for c in claims) == 1
    assert await services.sessions.finish(row.id, State.COMPLETED)
    assert not await services.sessions.finish(row.id, State.ERROR, "late")
    final = await services.sessions.get(row.id)
    assert final.state == "completed" and final.progress == 100 and final.error is None
    assert await services.sessions.claim(row.id, "late") is None


async def test_expired_lease_can_be_reclaimed_and_is_swept(services: Services) -> None:
    row, _ = await services.sessions.create(new())
    assert await services.sessions.claim(row.id, "dead-worker")
    async with services.sessions.sessionmaker() as db, db.begin():
        await db.execute(update(Session).where(Session.id == row.id)
                         .values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    _, expired = await services.sessions.stale(timedelta(seconds=30))
    assert row.id in expired
    again = await services.sessions.claim(row.id, "new-worker")
    assert again is not None and again.attempts == 2


async def test_stop_of_a_pending_session_ends_it(services: Services) -> None:
    row, _ = await services.sessions.create(new())
    stopped = await services.sessions.request_stop(row.id)
    assert stopped.state == "stopped" and stopped.stop_requested
    assert await services.sessions.claim(row.id, "w") is None
