"""Storage on SQLite and PostgreSQL: migrations, idempotent sessions, events, violations, leases."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta

import pytest
from alembic import command
from sqlalchemy import inspect as sa_inspect
from sqlalchemy import text, update

from bot.cli.wiring import open_services
from bot.db import NotMigrated, alembic_config, check_migrated, make_engine, migrate
from bot.models import Session, State, new_id, utcnow
from bot.services import Services
from bot.sessions import CHUNK_MIN, NewSession, SessionInUse
from bot.violation_counts import ViolationCount

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
        assert tables >= TABLES
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


async def test_an_id_no_row_can_hold_finds_nothing(services: Services) -> None:
    """A NUL (PostgreSQL's text refuses it) or a lone surrogate in an id from a URL or a button is no session: None,
    not a driver error."""
    row, _ = await services.sessions.create(new(f"delivery:{uuid.uuid4()}"))
    for bad in (f"{row.id}\x00", "\x00", f"{row.id[:-1]}\ud800"):
        assert await services.sessions.get(bad) is None, repr(bad)
        assert [found.id for found in await services.sessions.many([row.id, bad])] == [row.id]


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


async def test_violations_are_one_row_per_resource_with_a_count(services: Services) -> None:
    """A flood of the same refusal is one row: the count grows, first and last time bracket it."""
    row, _ = await services.sessions.create(new())
    t0 = utcnow()
    later = t0 + timedelta(seconds=5)
    batch = [ViolationCount("network", "a.invalid:53", "dns", "no DNS", 5000, t0, t0 + timedelta(seconds=1)),
             ViolationCount("network", "b.invalid:53", "dns", "no DNS", 3, t0, t0)]
    seqs = await services.sessions.add_violations(row.id, batch)
    assert len(seqs) == 2
    await services.sessions.add_violations(row.id, [ViolationCount("network", "a.invalid:53", "dns", "no DNS",
                                                                   2, later, later)])
    await services.sessions.add_violation(row.id, "network", "a.invalid:53", "dns", "no DNS")
    rows = await services.sessions.violations(row.id)
    assert [(v.resource, v.count) for v in rows] == [("a.invalid:53", 5003), ("b.invalid:53", 3)]
    first, last = rows[0].first_at, rows[0].last_at
    assert abs((first.replace(tzinfo=None) - t0.replace(tzinfo=None)).total_seconds()) < 0.01
    assert last.replace(tzinfo=None) == later.replace(tzinfo=None)  # the late single one did not move it back
    assert (await services.sessions.get(row.id)).violation_count == 5006
    events = [e for e in await services.sessions.events(row.id) if e.kind == "violation"]
    assert [e.data["count"] for e in events] == [5000, 3, 2, 1]


async def test_a_long_resource_is_clipped_to_one_key(services: Services) -> None:
    row, _ = await services.sessions.create(new())
    long = "/x" * 2000
    await services.sessions.add_violations(row.id, [ViolationCount("filesystem", long + "a", "read"),
                                                    ViolationCount("filesystem", long + "b", "read")])
    rows = await services.sessions.violations(row.id)
    assert len(rows) == 1 and rows[0].count == 2 and len(rows[0].resource) == 512


async def test_migration_folds_rows_written_one_per_violation(db_url: str) -> None:
    """A database written by the old code keeps its totals: duplicates fold into one counted row."""
    engine = make_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_upgrade_to, "0001")
            await conn.execute(text("DELETE FROM violations"))
            await conn.execute(text("DELETE FROM sessions WHERE id = 'old'"))
            await conn.execute(text(
                "INSERT INTO sessions (id, trigger_key, state, title, prompt, agent, repo, progress, source, report,"
                " context, sandbox_security, keep_alive, stop_requested, violation_count, event_seq, attempts,"
                " created_at) VALUES ('old', 'old', 'completed', 't', 'p', 'command', 'r', 0, 'api', '{}', '{}',"
                " true, false, false, 3, 0, 0, CURRENT_TIMESTAMP)"))
            for n, resource in enumerate(["e.invalid:443", "e.invalid:443", "f.invalid:443"]):
                await conn.execute(text(
                    "INSERT INTO violations (session_id, kind, resource, operation, created_at) "
                    f"VALUES ('old', 'network', '{resource}', 'connect', '2026-01-0{n + 1} 00:00:00+00')"))
        await migrate(engine)
        await check_migrated(engine)
        async with engine.connect() as conn:
            rows = (await conn.execute(text(
                "SELECT resource, count, first_at, last_at FROM violations ORDER BY resource"))).all()
        assert [(r[0], r[1]) for r in rows] == [("e.invalid:443", 2), ("f.invalid:443", 1)]
        assert str(rows[0][2]).startswith("2026-01-01") and str(rows[0][3]).startswith("2026-01-02")
    finally:
        await engine.dispose()


async def test_downgrade_moves_chunked_output_back_into_data(db_url: str, settings_for) -> None:  # type: ignore[no-untyped-def]
    """Migration 0005 keeps a `lines` row's events compressed in `blob`; going back to 0004 puts them in
    `data` where the older server reads them, and upgrading again reads them still."""
    services = await open_services(settings_for(DATABASE_URL=db_url, BASE_URL="http://127.0.0.1:1"),
                                   auto_migrate=True)
    try:
        row, _ = await services.sessions.create(new())
        lines = [("message", {"summary": f"line {n}", "n": 2**70 + n}, utcnow()) for n in range(CHUNK_MIN + 1)]
        await services.sessions.add_lines(row.id, lines)
        expected = [(e.seq, e.kind, e.data) for e in await services.sessions.events(row.id)]
        async with services.sessions.engine.begin() as conn:
            await conn.run_sync(_upgrade_to, "0004_events_lz4")
            data = (await conn.execute(text(
                "SELECT data FROM session_events WHERE session_id = :id AND kind = 'lines'"), {"id": row.id})
                ).scalar_one()
        stored = json.loads(data) if isinstance(data, str) else data
        assert [entry[1] for entry in stored["lines"]] == [d for _, d, _ in lines]
        await migrate(services.sessions.engine)
        assert [(e.seq, e.kind, e.data) for e in await services.sessions.events(row.id)] == expected
    finally:
        await services.close()


def _upgrade_to(connection, revision: str) -> None:  # type: ignore[no-untyped-def]
    """Bring a database to one revision, down if it is past it."""
    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, revision)
    command.downgrade(cfg, revision)


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


async def test_named_transitions_set_their_columns_and_nothing_else(services: Services) -> None:
    row, _ = await services.sessions.create(new())
    await services.sessions.set_branch(row.id, "sesame/fix-it", "main")
    await services.sessions.record_commit(row.id, "a" * 40)
    await services.sessions.record_pull_request(row.id, 7, "https://github.test/acme/widget/pull/7")
    await services.sessions.set_progress(row.id, 42)
    await services.sessions.set_warning(row.id, "ran unsandboxed")
    await services.sessions.record_slack_message(row.id, {"channel": "C1", "ts": "1.2"}, "C1:1.2")
    got = await services.sessions.get(row.id)
    assert got is not None
    assert (got.branch, got.base_branch, got.commit_sha, got.pr_number, got.pr_url, got.progress, got.warning,
            got.report, got.thread_key, got.state) == (
        "sesame/fix-it", "main", "a" * 40, 7, "https://github.test/acme/widget/pull/7", 42, "ran unsandboxed",
        {"channel": "C1", "ts": "1.2"}, "C1:1.2", "pending")
    assert not hasattr(services.sessions, "update")  # no door for arbitrary columns


async def test_a_step_event_sets_the_progress_in_the_same_statement(services: Services) -> None:
    """The pipeline's step(): its event and the progress percent in one round trip (issue 16), in order."""
    row, _ = await services.sessions.create(new())
    first = await services.sessions.add_step_event(row.id, {"step": "workspace", "status": "running"}, 5)
    got = await services.sessions.get(row.id)
    assert got is not None and got.progress == 5
    second = await services.sessions.add_step_event(row.id, {"step": "workspace", "status": "done"}, None)
    got = await services.sessions.get(row.id)
    assert got is not None and got.progress == 5 and second == first + 1
    events = [e for e in await services.sessions.events(row.id) if e.kind == "step"]
    assert [(e.seq, e.data["status"]) for e in events] == [(first, "running"), (second, "done")]


async def test_delete_refuses_a_session_with_follow_ups(services: Services) -> None:
    parent, _ = await services.sessions.create(new())
    child, _ = await services.sessions.create(new(parent_id=parent.id))
    with pytest.raises(SessionInUse):
        await services.sessions.delete(parent.id)
    await services.sessions.delete(child.id)
    await services.sessions.delete(parent.id)
    assert await services.sessions.get(parent.id) is None and await services.sessions.get(child.id) is None


async def test_a_transaction_the_caller_owns_writes_the_row_and_its_event_together_or_not_at_all(
        services: Services) -> None:
    row, _ = await services.sessions.create(new())
    with pytest.raises(RuntimeError, match="before the end"):
        async with services.sessions.transaction(row.id) as tx:
            await tx.set_warning("half done")
            await tx.event("warning", {"message": "half done"})
            raise RuntimeError("the caller fails before the end")
    after_failure = await services.sessions.get(row.id)
    assert after_failure is not None and after_failure.warning is None
    assert [e.kind for e in await services.sessions.events(row.id)] == ["status"]
    async with services.sessions.transaction(row.id) as tx:
        await tx.record_commit("a" * 40)
        seq = await tx.event("commit", {"sha": "a" * 40})
        await tx.record_pull_request(7, "https://github.invalid/acme/api/pull/7")
    done = await services.sessions.get(row.id)
    assert done is not None and done.commit_sha == "a" * 40 and (done.pr_number, done.pr_url) == (
        7, "https://github.invalid/acme/api/pull/7")
    events = await services.sessions.events(row.id)
    assert [(e.seq, e.kind) for e in events] == [(1, "status"), (seq, "commit")] and seq == 2
    await services.sessions.delete(row.id)


def test_new_ids_are_random_uuids_as_uuid_writes_them() -> None:
    ids = [new_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for one in ids:
        parsed = uuid.UUID(one)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, one)
    # every bit outside the version and variant varies
    ints = [uuid.UUID(one).int for one in ids]
    fixed = (0xF << 76) | (0x3 << 62)
    assert all(bit & fixed or (any(i & bit for i in ints) and not all(i & bit for i in ints))
               for bit in (1 << n for n in range(128)))
