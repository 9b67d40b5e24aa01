"""Agent output stored in chunks (issue 16): few rows, read back as the events they hold, each with its own
seq; the reader of the agent's output never waits for the database."""

from __future__ import annotations

import asyncio
import io
import shlex
import uuid
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from sqlalchemy import event, func, select, update
from sqlalchemy import text as sql_text
from sqlalchemy.exc import NoResultFound

from bot.cli.wiring import open_services
from bot.models import Session, SessionEvent, utcnow
from bot.services import Services
from bot.sessions import CHUNK_KIND, CHUNK_MIN, LineBlock, NewSession
from runner.cli_run import run_from_terminal
from runner.output import EventBuffer
from tests.test_api import api  # noqa: F401 - the fixture
from tests.test_pipeline import PYTHON, args, make_services


def new() -> NewSession:
    return NewSession(trigger_key=f"test:{uuid.uuid4()}", prompt="p", agent="command", repo="acme/widget",
                      source="api")


async def rows_of(services: Services, session_id: str) -> list[tuple[int, str]]:
    async with services.sessions.autocommit() as db:
        return [(r.seq, r.kind) for r in (await db.execute(
            select(SessionEvent.seq, SessionEvent.kind).where(SessionEvent.session_id == session_id)
            .order_by(SessionEvent.seq))).all()]


async def test_a_chunk_reads_as_its_events_with_their_own_seqs(services: Services) -> None:
    row, _ = await services.sessions.create(new())  # seq 1: its status event
    t0 = utcnow()
    lines = [("agent_stderr" if n % 3 == 0 else "message", {"summary": f"line {n}"}, t0 + timedelta(seconds=n))
             for n in range(10)]
    assert await services.sessions.add_lines(row.id, lines) == list(range(2, 12))
    await services.sessions.add_event(row.id, "step", {"step": "agent", "status": "done", "detail": None})
    assert await services.sessions.add_lines(row.id, lines[:2]) == [13, 14]  # small: one row each

    assert await rows_of(services, row.id) == [(1, "status"), (11, CHUNK_KIND), (12, "step"), (13, "agent_stderr"),
                                               (14, "message")]
    events = await services.sessions.events(row.id)
    assert [e.seq for e in events] == list(range(1, 15))
    assert [(e.kind, e.data) for e in events[1:11]] == [(k, d) for k, d, _ in lines]
    assert [e.created_at.timestamp() for e in events[1:11]] == [at.timestamp() for _, _, at in lines]
    # Last-Event-ID inside a chunk: the rest of it, then what follows; a limit cuts inside a chunk too
    assert [e.seq for e in await services.sessions.events(row.id, after=6)] == list(range(7, 15))
    assert [e.seq for e in await services.sessions.events(row.id, after=6, limit=3)] == [7, 8, 9]
    assert [e.data["summary"] for e in await services.sessions.events(row.id, after=9, limit=2)] == [
        "line 8", "line 9"]


async def test_sse_resumes_inside_a_chunk(api, services: Services) -> None:  # type: ignore[no-untyped-def]
    created = await (await api.post("/api/session", json={"repo": api.repo, "prompt": "p", "agent": "command"})).json()
    now = utcnow()
    await services.sessions.add_lines(created["id"], [("message", {"summary": f"line {n}"}, now) for n in range(50)])
    await services.sessions.request_stop(created["id"])
    text = await (await api.get(f"/api/session/{created['id']}/events", headers={"Last-Event-ID": "40"})).text()
    ids = [int(line[4:]) for line in text.splitlines() if line.startswith("id: ")]
    assert ids == list(range(41, 53))  # lines 39-49 (seqs 41-51), then the stop's status event
    assert '"summary": "line 39"' in text and '"summary": "line 38"' not in text


class SlowStore:
    """A session store whose writes wait for a gate: the database far behind."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.stored: list[list[tuple[str, dict[str, Any], Any]]] = []

    async def add_lines(self, session_id: str, items: list[tuple[str, dict[str, Any], Any]]) -> list[int]:
        await self.gate.wait()
        self.stored.append(items)
        return []


async def test_adding_lines_never_waits_for_the_database() -> None:
    store = SlowStore()

    async def stored(write: Any, what: str) -> Any:
        return await write()

    state = SimpleNamespace(session=SimpleNamespace(id="s"), services=SimpleNamespace(sessions=store), stored=stored)
    buffer = EventBuffer(state, interval=0.01, chunk=100, backlog=1_000_000)  # type: ignore[arg-type]
    await asyncio.wait_for(asyncio.gather(*(buffer.add("message", {"summary": f"l{n}"}) for n in range(20_000))), 5)
    assert not store.stored  # every line taken while the store had not answered once
    store.gate.set()
    await buffer.close()
    assert [d["summary"] for chunk in store.stored for _, d, _ in chunk] == [f"l{n}" for n in range(20_000)]
    assert max(len(chunk) for chunk in store.stored) == 100


async def test_a_chatty_agent_writes_few_rows(tmp_path: Path, db_url: str) -> None:
    """20,000 lines through the pipeline: all there, in order, in a few dozen rows."""
    from tests.support.gitrepo import make_repo

    origin = make_repo(tmp_path / "origin")
    chatty = shlex.join([PYTHON, "-c", "import sys\nfor n in range(20000): print(f'line {n}')\n"])
    services = await make_services(tmp_path, db_url)
    try:
        code = await run_from_terminal(services, args(origin, "talk a lot", command=chatty), io.StringIO())
        session = (await services.sessions.recent(1))[0]
        events = await services.sessions.events(session.id, limit=100_000)
        async with services.sessions.autocommit() as db:
            rows = (await db.execute(select(func.count()).select_from(SessionEvent)
                                     .where(SessionEvent.session_id == session.id))).scalar_one()
    finally:
        await services.close()
    assert code == 0
    said = [e.data["summary"] for e in events if e.kind == "message"]
    assert said == [f"line {n}" for n in range(20_000)]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert rows < 100, rows


def test_a_block_is_left_unredacted_only_when_redact_would_not_change_it() -> None:
    from bot.redact import redact, untouched

    secret = "s3cr3t-value-of-the-server"
    changed = ["ghp_" + "a" * 36, "github_pat_" + "b" * 30, "xoxb-123456789-abc", "sk-ant-" + "c" * 20,
               "AIza" + "d" * 35, "AKIA" + "E" * 16, "eyJhbGciOi.eyJzdWIiOi.sig", "https://u:pw@host/x",
               "Authorization: Bearer abc", "PROXY-AUTHORIZATION=token xyz",
               "-----BEGIN RSA PRIVATE KEY-----\nMIIE", f"the key is {secret}"]
    for text in changed:
        block = "line one\n" + text + "\nline three"
        assert redact(block, [secret]) != block, text
        assert not untouched(block, [secret]), text
    plain = "\n".join(f"line {n} of a chatty agent, saying what it does" for n in range(100))
    assert untouched(plain, [secret]) and redact(plain, [secret]) == plain


def test_every_quick_marker_holds_the_character_it_is_found_by() -> None:
    """untouched() skips a marker whose character is not in the block: that is sound only when the
    character is part of the marker (a marker with another would be missed, and its secret with it)."""
    from bot.redact import _MARKERS, REDACTED, redact, untouched

    for key, markers in _MARKERS:
        assert len(key) == 1 and all(key in marker for marker in markers), (key, markers)
    # a shape in the middle of prose without any other marker character is still found
    for shape in ["ghp_" + "a" * 36, "xoxb-123456789-abc", "AKIA" + "E" * 16, "ASIA" + "E" * 16,
                  "AIza" + "d" * 35, "eyJhbGciOi.eyJzdWIiOi.sig", "auThoRiZation: zzz", "http://u:pw@h/"]:
        block = f"plain words\nsaying {shape} here\nand more"
        assert not untouched(block), shape
        assert REDACTED in redact(block), shape


async def test_sse_sends_a_page_of_plain_rows_per_write(services: Services) -> None:
    """A chatty agent's lines reach an SSE client a page of events per write (not a write per event), read
    as plain rows: no ORM object per event (each cost tens of microseconds: 200,000 lines took seconds)."""
    from aiohttp import web

    from bot.sessions import LineBlock
    from webhooks.api.events import _follow

    row, _ = await services.sessions.create(new())  # seq 1: its status event
    await services.sessions.add_lines(row.id, [LineBlock("message", {}, utcnow(), [f"line {n}" for n in range(2500)])])
    await services.sessions.request_stop(row.id)  # seq 2502; ended, so the stream ends after the replay
    events = await services.sessions.events(row.id, limit=5000)
    assert len(events) == 2502 and not any(hasattr(e, "_sa_instance_state") for e in events)

    writes: list[bytes] = []

    class Response:  # what _follow uses of web.StreamResponse: write
        async def write(self, data: bytes) -> None:
            writes.append(data)

    await _follow(services, row.id, 0, cast(web.StreamResponse, Response()))
    text = b"".join(writes).decode()
    assert [int(line[4:]) for line in text.splitlines() if line.startswith("id: ")] == list(range(1, 2503))
    assert '"summary": "line 2499"' in text and text.endswith("event: end\ndata: {}\n\n")
    assert len(writes) == 4  # pages of 1,000, 1,000 and 502 events, then the end


async def test_a_chunk_is_one_statement_without_a_transaction(services: Services) -> None:
    """A `lines` row costs PostgreSQL one round trip in autocommit (the seqs reserved in a CTE), not BEGIN,
    UPDATE, INSERT and COMMIT: a chatty agent's chunks are stored faster than it prints them."""
    row, _ = await services.sessions.create(new())
    statements: list[str] = []
    begins: list[object] = []
    engine = services.sessions.engine.sync_engine

    def count(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        statements.append(statement)

    def begun(conn: Any) -> None:
        if conn.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
            begins.append(conn)

    event.listen(engine, "before_cursor_execute", count)
    event.listen(engine, "begin", begun)
    try:
        t0 = utcnow()
        lines = [("message", {"summary": f"line {n}", "é": "ü\u2028"}, t0) for n in range(10)]
        assert await services.sessions.add_lines(row.id, lines) == list(range(2, 12))
    finally:
        event.remove(engine, "before_cursor_execute", count)
        event.remove(engine, "begin", begun)
    if engine.dialect.name == "postgresql":
        assert len(statements) == 1, statements
        assert not begins
    assert [(e.kind, e.data) for e in (await services.sessions.events(row.id))[1:]] == [
        (k, d) for k, d, _ in lines]
    with pytest.raises(NoResultFound):
        await services.sessions.add_lines("no-such-session", lines)


async def test_postgresql_compresses_output_chunks_with_lz4(pg_database: str, settings_for) -> None:  # type: ignore[no-untyped-def]
    """pglz took PostgreSQL ~300 ms of CPU for a chatty agent's 12 MB, on the agent's cores; lz4 ~120 ms."""
    services = await open_services(settings_for(DATABASE_URL=pg_database, BASE_URL="http://127.0.0.1:1"),
                                   auto_migrate=True)
    try:
        async with services.sessions.autocommit_engine.connect() as conn:
            method = (await conn.execute(sql_text(
                "SELECT attcompression::text FROM pg_attribute WHERE attrelid = 'session_events'::regclass "
                "AND attname = 'data'"))).scalar_one()
    finally:
        await services.close()
    assert method == "l"


class ChunkAtATime:
    """A session store that stores one chunk per permit: a database behind the agent."""

    def __init__(self) -> None:
        self.permits = asyncio.Semaphore(0)
        self.stored: list[list[tuple[str, dict[str, Any], Any]]] = []

    async def add_lines(self, session_id: str, items: list[tuple[str, dict[str, Any], Any]]) -> list[int]:
        await self.permits.acquire()
        self.stored.append(items)
        return []


async def test_a_reader_held_back_resumes_once_the_backlog_is_below_its_limit() -> None:
    """Back-pressure holds the reader only while the backlog is at its limit: one chunk stored lets it go
    on (it waited for the whole backlog: 69-142 ms of a chatty agent's session at load 17)."""
    store = ChunkAtATime()

    async def stored(write: Any, what: str) -> Any:
        return await write()

    state = SimpleNamespace(session=SimpleNamespace(id="s"), services=SimpleNamespace(sessions=store), stored=stored)
    buffer = EventBuffer(state, interval=0.01, chunk=100, backlog=1_000)  # type: ignore[arg-type]
    for n in range(999):
        await buffer.add("message", {"summary": f"l{n}"})
    held = asyncio.ensure_future(buffer.add("message", {"summary": "l999"}))
    await asyncio.sleep(0.05)
    assert not held.done()  # 1,000 events wait: the reader waits
    store.permits.release()  # one chunk of 100 stored
    await asyncio.wait_for(held, 1)
    assert len(store.stored) == 1
    for _ in range(20):
        store.permits.release()
    await buffer.close()
    assert [d["summary"] for chunk in store.stored for _, d, _ in chunk] == [f"l{n}" for n in range(1_000)]


async def test_postgresql_stores_a_chunk_compressed_by_the_worker_as_is(pg_database: str, settings_for) -> None:  # type: ignore[no-untyped-def]
    """A chunk's JSON (12 MB for a chatty agent) cost PostgreSQL 80-90 ms of CPU to parse and compress on the
    agent's cores; the worker sends it zstd-compressed and PostgreSQL stores the bytes without compressing
    them again (EXTERNAL storage)."""
    services = await open_services(settings_for(DATABASE_URL=pg_database, BASE_URL="http://127.0.0.1:1"),
                                   auto_migrate=True)
    try:
        row, _ = await services.sessions.create(new())
        t0 = utcnow()
        texts = [f"line {n} of a chatty agent, saying what it does at length" for n in range(10_000)]
        await services.sessions.add_lines(row.id, [LineBlock("message", {}, t0, texts)])
        async with services.sessions.autocommit_engine.connect() as conn:
            stored = (await conn.execute(sql_text(
                "SELECT data::text AS data, octet_length(blob) AS size, pg_column_compression(blob) AS method "
                "FROM session_events WHERE session_id = :id AND kind = 'lines'"), {"id": row.id})).one()
            storage = (await conn.execute(sql_text(
                "SELECT attstorage::text FROM pg_attribute WHERE attrelid = 'session_events'::regclass "
                "AND attname = 'blob'"))).scalar_one()
        events = await services.sessions.events(row.id, limit=20_000)
    finally:
        await services.close()
    assert stored.data == "{}"
    assert stored.size < sum(map(len, texts)) / 10, stored.size  # compressed by the worker
    assert stored.method is None and storage == "e"  # and not again by PostgreSQL
    assert [e.data["summary"] for e in events[1:]] == texts


async def test_a_chunk_written_before_the_blob_column_still_reads(services: Services) -> None:
    """A `lines` row of an older server keeps its events in `data`; they read as before."""
    row, _ = await services.sessions.create(new())
    at = utcnow().timestamp()
    async with services.sessions.sessionmaker() as db, db.begin():
        await db.execute(update(Session).where(Session.id == row.id).values(event_seq=4))
        db.add(SessionEvent(session_id=row.id, seq=4, kind=CHUNK_KIND, created_at=utcnow(), data={"lines": [
            ["message", {"summary": "one"}, at], ["agent_stderr", {}, at, ["two", "three"], "line"]]}))
    events = await services.sessions.events(row.id)
    assert [(e.seq, e.kind, e.data) for e in events[1:]] == [
        (2, "message", {"summary": "one"}), (3, "agent_stderr", {"line": "two"}), (4, "agent_stderr", {"line": "three"})]


async def test_what_orjson_refuses_reads_back_unchanged(services: Services) -> None:
    """A lone surrogate and an integer beyond 64 bits are written by json.dumps and read by json.loads:
    orjson would refuse the first and round the second."""
    row, _ = await services.sessions.create(new())
    odd = [("message", {"summary": "half \ud800 a pair", "n": 2**70 + 1}, utcnow())] * CHUNK_MIN
    await services.sessions.add_lines(row.id, odd)
    assert [e.data for e in (await services.sessions.events(row.id))[1:]] == [odd[0][1]] * CHUNK_MIN
