"""bot/intake_store.py on PostgreSQL: the one-statement lookup, the insert, batched records and reports."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from bot import intake_store
from bot.intake_store import MAX_IN_FLIGHT, IntakeStore
from bot.services import Services, open_services
from bot.sessions import NewSession


@pytest.fixture
async def pg_services(pg_database: str, settings_for) -> AsyncIterator[Services]:  # type: ignore[no-untyped-def]
    services = await open_services(settings_for(DATABASE_URL=pg_database, BASE_URL="http://127.0.0.1:1"),
                                   auto_migrate=True)
    yield services
    await services.close()


def new(repo: str, issue: int, branch: str | None = None) -> NewSession:
    return NewSession(trigger_key=f"github:{uuid.uuid4()}", prompt="fix it", agent="command", repo=repo,
                      source="github", issue_number=issue, branch=branch, report={"issue_number": issue})


async def test_lookup_finds_the_redelivery_the_recorded_delivery_and_the_parent(pg_services: Services) -> None:
    sessions, repo = pg_services.sessions, f"acme/store-{uuid.uuid4().hex[:8]}"
    first = new(repo, 7, branch="sesame/first")
    row, created = await sessions.create(first)
    assert created
    again, created_again = await sessions.create(first)  # the same trigger key: the existing row
    assert not created_again and again.id == row.id
    found = await sessions.intake_lookup(first.trigger_key, "unseen", repo, 7)
    assert found.existing == row.id and not found.seen
    assert found.parent is not None and (found.parent.id, found.parent.branch) == (row.id, "sesame/first")
    delivery = str(uuid.uuid4())
    assert await sessions.record_delivery(delivery, "github", "issue_comment")
    other = await sessions.intake_lookup(f"github:{uuid.uuid4()}", delivery, repo, 8)
    assert other.existing is None and other.seen and other.parent is None
    await sessions.delete(row.id)


async def test_reports_written_together_each_land_on_its_own_row(pg_services: Services) -> None:
    sessions, repo = pg_services.sessions, f"acme/store-{uuid.uuid4().hex[:8]}"
    rows = [(await sessions.create(new(repo, i)))[0] for i in range(12)]
    await asyncio.gather(*(sessions.set_intake_report(r.id, {"issue_number": i, "comment_id": 1000 + i})
                           for i, r in enumerate(rows)))
    for i, r in enumerate(rows):
        stored = await sessions.get(r.id)
        assert stored is not None and stored.report == {"issue_number": i, "comment_id": 1000 + i}
        await sessions.delete(r.id)


async def test_a_cache_entry_expiring_under_load_is_loaded_once() -> None:
    from bot.services import TTLCache

    cache: TTLCache[int, bool] = TTLCache()
    loads = 0

    async def load() -> bool:
        nonlocal loads
        loads += 1
        await asyncio.sleep(0.05)
        return True

    assert all(await asyncio.gather(*(cache.get(1, 10, load) for _ in range(50))))
    assert loads == 1 and not cache.loading
    assert await cache.get(1, 10, load) and loads == 1


def plain_url(pg_database: str) -> str:
    return pg_database.replace("postgresql+asyncpg://", "postgresql://")


async def stored(pg_database: str, keys: list[str]) -> dict[str, tuple[int, int]]:
    """Per trigger key: how many sessions it has, and how many first events those have."""
    conn = await asyncpg.connect(plain_url(pg_database))
    try:
        rows = await conn.fetch("SELECT s.trigger_key, count(DISTINCT s.id) AS sessions, count(e.id) AS events "
                                "FROM sessions s LEFT JOIN session_events e ON e.session_id = s.id "
                                "WHERE s.trigger_key = ANY($1::text[]) GROUP BY s.trigger_key", keys)
    finally:
        await conn.close()
    return {row["trigger_key"]: (row["sessions"], row["events"]) for row in rows}


def statements(store: IntakeStore, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The store's statements as they are sent: for each, how many were in flight with it."""
    sent: list[int] = []
    run = store.connections.run
    in_flight = 0

    async def counting(call):  # type: ignore[no-untyped-def]
        nonlocal in_flight
        in_flight += 1
        sent.append(in_flight)
        try:
            return await run(call)
        finally:
            in_flight -= 1

    monkeypatch.setattr(store.connections, "run", counting)
    return sent


async def test_concurrent_records_are_written_together_and_each_gets_its_answer(
        pg_services: Services, pg_database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    sessions, repo = pg_services.sessions, f"acme/store-{uuid.uuid4().hex[:8]}"
    assert sessions.fast is not None
    earlier = new(repo, 1)
    earlier_id, _ = await sessions.record(earlier)  # a redelivery of this one finds it
    seen_delivery = str(uuid.uuid4())
    assert await sessions.record_delivery(seen_delivery, "github", "issue_comment")
    sent = statements(sessions.fast, monkeypatch)
    distinct = [new(repo, 10 + i) for i in range(40)]
    twice = [new(repo, 60 + i) for i in range(5)]
    copies = [NewSession(**{**vars(t), "id": None}) for t in twice for _ in range(3)]
    refused = new(repo, 70)
    calls = ([(n, str(uuid.uuid4())) for n in distinct + copies] + [(earlier, str(uuid.uuid4())),
                                                                     (refused, seen_delivery)])
    answers = await asyncio.gather(*(sessions.record_trigger(n, d) for n, d in calls))
    assert len(sent) < len(calls) / 4 and max(sent) <= MAX_IN_FLIGHT, sent  # together, not one statement each
    by_key: dict[str, list[tuple[str | None, str | None, bool]]] = {}
    for (n, _d), answer in zip(calls, answers, strict=True):
        assert answer is not None
        found, session_id = answer
        by_key.setdefault(n.trigger_key, []).append((session_id, found.existing, found.seen))
    for n in distinct:
        [(session_id, existing, seen)] = by_key[n.trigger_key]
        assert session_id is not None and existing is None and not seen
    for t in twice:  # one recorded; the others a redelivery of it, or a concurrent duplicate (neither)
        answers_of = by_key[t.trigger_key]
        [made] = [a[0] for a in answers_of if a[0] is not None]
        assert all(a[1] in (None, made) and not a[2] for a in answers_of if a[0] is None)
    assert by_key[earlier.trigger_key] == [(None, earlier_id, False)]
    assert by_key[refused.trigger_key] == [(None, None, True)]
    counts = await stored(pg_database, [n.trigger_key for n in distinct + twice + [earlier, refused]])
    assert counts == {n.trigger_key: (1, 1) for n in distinct + twice + [earlier]}


async def test_batched_records_keep_every_value_as_given(pg_services: Services) -> None:
    """The batch travels as one JSON text: quotes, newlines, non-ASCII, floats, nulls and the time (to the
    microsecond, its zone kept) land as they were given."""
    sessions, repo = pg_services.sessions, f"acme/store-{uuid.uuid4().hex[:8]}"
    odd = 'say "hi"\n\\ \u00e9\u6f22 \U0001f600 {"x": [1]}'
    given = [NewSession(**{**vars(new(repo, i)), "prompt": f"{odd} {i}", "model": None if i % 2 else "m\t1",
                           "budget_usd": 2.5 + i / 3, "context": {"comment": odd, "nested": {"n": [i, None]}},
                           "base_branch": "main" if i % 3 else None, "keep_alive": bool(i % 2)})
             for i in range(6)]
    answers = await asyncio.gather(*(sessions.record_trigger(n, str(uuid.uuid4())) for n in given))
    for n, answer in zip(given, answers, strict=True):
        assert answer is not None and answer[1] is not None
        row = await sessions.get(answer[1])
        assert row is not None
        assert (row.prompt, row.model, row.budget_usd, row.context, row.base_branch, row.keep_alive) == (
            n.prompt, n.model, n.budget_usd, n.context, n.base_branch, n.keep_alive)
        assert row.report == n.report and row.created_at is not None and row.created_at.utcoffset() is not None
        events = await sessions.events(row.id)
        assert [(e.seq, e.kind, e.data) for e in events][:1] == [(1, "status", {"state": "pending"})]
        assert abs((events[0].created_at - row.created_at).total_seconds()) < 1e-6
        await sessions.delete(row.id)


async def test_a_batch_orjson_refuses_is_written_as_json_dumps_writes_it(pg_services: Services) -> None:
    """An int beyond 64 bits or a key that is not a string (orjson refuses both) in a batched record: the
    batch is written by json.dumps, as given (keys as strings, as json.dumps writes them)."""
    sessions, repo = pg_services.sessions, f"acme/store-{uuid.uuid4().hex[:8]}"
    given = [NewSession(**{**vars(new(repo, i)), "context": {"big": 2 ** 70 + i, 7: "seven"}}) for i in range(3)]
    answers = await asyncio.gather(*(sessions.record_trigger(n, str(uuid.uuid4())) for n in given))
    for i, answer in enumerate(answers):
        assert answer is not None and answer[1] is not None
        row = await sessions.get(answer[1])
        assert row is not None and row.context == {"big": 2 ** 70 + i, "7": "seven"}
        await sessions.delete(row.id)


async def test_a_record_the_server_refuses_fails_alone(pg_services: Services, pg_database: str) -> None:
    sessions, repo = pg_services.sessions, f"acme/store-{uuid.uuid4().hex[:8]}"
    good = [new(repo, i) for i in range(6)]
    bad = NewSession(**{**vars(new(repo, 9)), "trigger_key": "github:" + "x" * 300})  # longer than the column
    answers = await asyncio.gather(*(sessions.record_trigger(n, str(uuid.uuid4())) for n in [*good, bad]),
                                   return_exceptions=True)
    assert isinstance(answers[-1], asyncpg.exceptions.StringDataRightTruncationError)
    assert all(isinstance(a, tuple) and a[1] is not None for a in answers[:-1]), answers
    assert await stored(pg_database, [n.trigger_key for n in good]) == {n.trigger_key: (1, 1) for n in good}


async def test_a_connection_lost_mid_batch_is_retried_on_a_fresh_one(pg_services: Services, pg_database: str) -> None:
    """Its backend terminated while the batch waits on a lock: every record of the batch is written on a
    new connection, none lost and none twice."""
    sessions, repo = pg_services.sessions, f"acme/store-{uuid.uuid4().hex[:8]}"
    assert sessions.fast is not None
    batch = [new(repo, i) for i in range(12)]
    admin = await asyncpg.connect(plain_url(pg_database))
    blocker = await asyncpg.connect(plain_url(pg_database))
    try:
        holding = blocker.transaction()
        await holding.start()  # the last record's key, inserted and not committed: its insert waits
        await blocker.execute("INSERT INTO sessions (id, trigger_key, state, title, prompt, agent, repo, progress, "
                              "source, report, context, sandbox_security, keep_alive, stop_requested, "
                              "violation_count, event_seq, attempts, created_at) VALUES ($1, $2, 'pending', 't', "
                              "'p', 'command', $3, 0, 'github', '{}', '{}', true, false, false, 0, 1, 0, now())",
                              str(uuid.uuid4()), batch[-1].trigger_key, repo)
        writing = asyncio.gather(*(sessions.record_trigger(n, str(uuid.uuid4())) for n in batch))
        waiting = None
        for _ in range(200):
            waiting = await admin.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' "
                "AND query LIKE '%json_to_recordset%'")
            if waiting is not None:
                break
            await asyncio.sleep(0.02)
        assert waiting is not None, "the batch never waited on the held key"
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", waiting)
        await asyncio.sleep(0.2)  # the retry now waits on the same lock, on a new backend
        retried = await admin.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' "
            "AND query LIKE '%json_to_recordset%'")
        assert retried is not None and retried != waiting
        await holding.rollback()
        answers = await asyncio.wait_for(writing, 10)
    finally:
        await blocker.close()
        await admin.close()
    assert all(a is not None and a[1] is not None for a in answers), answers
    assert await stored(pg_database, [n.trigger_key for n in batch]) == {n.trigger_key: (1, 1) for n in batch}


async def test_a_retry_of_a_written_batch_finds_its_own_rows_recorded(pg_services: Services) -> None:
    """The connection lost after the statement committed: the retry's lookup finds the session it wrote
    (by its id), which is the record of this call and not a redelivery."""
    sessions = pg_services.sessions
    assert sessions.fast is not None
    values = sessions._values(new(f"acme/store-{uuid.uuid4().hex[:8]}", 1))
    delivery = str(uuid.uuid4())
    first = await sessions.fast.record(values, {"state": "pending"}, delivery, False)
    again = await sessions.fast.record(values, {"state": "pending"}, delivery, False)
    assert first[1] and again == (first[0], True)
    other = await sessions.fast.record({**values, "id": str(uuid.uuid4())}, {"state": "pending"}, delivery, False)
    assert other[0].existing == values["id"] and not other[1]  # a true redelivery


async def test_records_arriving_while_a_lone_one_is_written_follow_it_in_one_statement(
        pg_services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """A record that finds nothing in flight is written by its caller (issue 16); those that arrive while it is
    on its way wait, and go in one statement once it is answered (with one statement in flight at most, nothing
    else would send them)."""
    monkeypatch.setattr(intake_store, "MAX_IN_FLIGHT", 1)
    sessions, repo = pg_services.sessions, f"acme/store-{uuid.uuid4().hex[:8]}"
    store = sessions.fast
    assert store is not None
    sizes: list[int] = []
    gate = asyncio.Event()
    write_rows = store._write_rows

    async def held_first(columns: tuple[str, ...], batch: list[intake_store._Record]) -> list[asyncpg.Record]:
        sizes.append(len(batch))
        if len(sizes) == 1:
            await gate.wait()
        return await write_rows(columns, batch)

    monkeypatch.setattr(store, "_write_rows", held_first)
    first = asyncio.create_task(sessions.record_trigger(new(repo, 1), str(uuid.uuid4())))
    async with asyncio.timeout(5):
        while not sizes:
            await asyncio.sleep(0.01)
    rest = [asyncio.create_task(sessions.record_trigger(new(repo, 2 + i), str(uuid.uuid4()))) for i in range(5)]
    await asyncio.sleep(0.05)
    assert sizes == [1]  # the others wait for the lone one
    gate.set()
    async with asyncio.timeout(10):
        answers = await asyncio.gather(first, *rest)
    assert sizes == [1, 5]
    assert all(answer is not None and answer[1] is not None for answer in answers)
