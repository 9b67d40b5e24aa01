"""The webhook hot path on PostgreSQL: raw asyncpg statements, one round trip each (issue 16).

Every delivery that mentions the app asks the same three things: is it a redelivery (its session, or
its recorded delivery id, exists), which session of the same issue or PR has a branch (a follow-up
continues it), and then records the session with its first event. Through SQLAlchemy's ORM these
cost 0.4-0.7 ms of CPU each (7-10x the same statement on asyncpg); here the first two are one
statement, the insert another (both one statement, `record`, when the sender is a writer known from the
cache: nothing needs GitHub between them), and the queued comments' ids (off the 202's path: written by
the web process, or with Redis by a worker's notifier lane) a third for several sessions at once, each a
prepared statement on a few connections of this process's own. SQLite keeps SessionService's Core paths.

`record`s that arrive together are written together: one statement carries every one that waits (as one
JSON array, json_to_recordset on the server), at most MAX_IN_FLIGHT statements at a time; a delivery that
finds nothing in flight is sent at once. At 500 deliveries/s that is a few statements instead of hundreds,
and a burst no longer queues for the connections one statement at a time.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]
import orjson
from sqlalchemy import Table
from sqlalchemy.engine import Dialect, make_url

T = TypeVar("T")
POOL_SIZE = 10  # connections of this process's hot path at most, besides SQLAlchemy's
# Batched records' statements at once. Measured at 500 deliveries/s on the shared 2-core machine: under load
# (others' tests running) 2 gave 1.0-1.4 ms of server CPU a delivery against 1.7-1.8 with 4 (fewer, larger
# batches); on a quiet machine 2 queues a little (p50 25-70 ms, where one statement per delivery on ten
# connections answered in 3 ms).
MAX_IN_FLIGHT = 2
MAX_BATCH = 64  # records in one statement at most

LOOKUP_OF = """
SELECT (SELECT s.id FROM sessions s WHERE s.trigger_key = {trigger_key}) AS existing,
       EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.delivery_id = {delivery_id}) AS seen,
       p.id AS parent_id, p.branch, p.base_branch, p.pr_number
FROM (SELECT 1) AS one
LEFT JOIN LATERAL (
    SELECT id, branch, base_branch, pr_number FROM sessions
    WHERE repo = {repo} AND issue_number = {issue_number} AND branch IS NOT NULL
    ORDER BY created_at DESC LIMIT 1) AS p ON true
"""
LOOKUP = LOOKUP_OF.format(trigger_key="$1", delivery_id="$2", repo="$3", issue_number="$4")
# The queued comments' ids, written together: at 500 deliveries/s one statement carries ~10 of them.
SET_REPORTS = ("UPDATE sessions AS s SET report = v.report::json FROM unnest($1::text[], $2::text[]) AS v(id, report) "
               "WHERE s.id = v.id")
REPORT_BATCH_WAIT = 0.02  # seconds the first report of a batch waits for others
JSON_COLUMNS = frozenset({"report", "context"})
# Errors after which the statement never reached the server or its connection is gone: tried once more
# on a fresh connection (a PostgreSQL restart leaves every idle connection dead).
RECONNECT = (asyncpg.exceptions.ConnectionDoesNotExistError, asyncpg.exceptions.InterfaceError,
             ConnectionResetError, BrokenPipeError)


@dataclass(frozen=True)
class Lookup:
    """What intake learns before any GitHub call: a redelivery's session, and the parent of a follow-up."""

    existing: str | None  # the session this trigger key already made
    seen: bool  # the delivery id was recorded (a refused or answered delivery)
    parent: Parent | None


@dataclass(frozen=True)
class Parent:
    """The last session of an issue or PR with a branch: what a follow-up continues."""

    id: str
    branch: str | None
    base_branch: str | None
    pr_number: int | None


def insert_statement(columns: list[str]) -> str:
    """The session and its first `status` event in one statement (a data-modifying CTE)."""
    params = ", ".join(f"${i}::json" if name in JSON_COLUMNS else f"${i}" for i, name in enumerate(columns, 1))
    n = len(columns)
    return (f"WITH new_session AS (INSERT INTO sessions ({', '.join(columns)}) VALUES ({params}) RETURNING id) "
            f"INSERT INTO session_events (session_id, seq, kind, data, created_at) "
            f"SELECT id, 1, 'status', ${n + 1}::json, ${n + 2} FROM new_session")


def batch_record_statement(columns: list[str], types: dict[str, str]) -> str:
    """LOOKUP and the insert in one statement, for any number of records: the session (with its first event)
    is recorded unless the lookup finds its trigger key, its delivery id, or a parent with a pull request
    (which the caller must ask GitHub about) while no base branch was given. `$1` is one JSON array of the
    records (batch_json): each an object of the columns' values, its first event (`event_data`), its time
    (`event_at`), its delivery id, whether a base was given (`base_given`) and its position (`ord`). One
    text parameter, not an array per column: asyncpg encodes arrays element by element, which cost more of
    the server's CPU than the rest of the statement (issue 16). Every row comes back in its `ord`er with what
    its lookup found and `inserted`: the id, when it was recorded now."""
    fields = [f'"{name}" {types[name]}' for name in columns]
    fields += ["event_data json", "event_at timestamptz", "delivery_id text", "base_given boolean", "ord bigint"]
    names = ", ".join(columns)
    found = LOOKUP_OF.format(trigger_key="i.trigger_key", delivery_id="i.delivery_id", repo="i.repo",
                             issue_number="i.issue_number").replace("FROM (SELECT 1) AS one", "FROM input AS i")
    return (f"WITH input AS (SELECT * FROM json_to_recordset($1::json) AS i({', '.join(fields)})), "
            f"found AS ({found.replace('SELECT ', 'SELECT i.ord, ', 1)}), "
            f"new_session AS (INSERT INTO sessions ({names}) SELECT {', '.join('i.' + c for c in columns)} "
            f"FROM input AS i JOIN found AS f ON f.ord = i.ord "
            f"WHERE f.existing IS NULL AND NOT f.seen AND (f.pr_number IS NULL OR i.base_given) "
            f"ON CONFLICT (trigger_key) DO NOTHING RETURNING id), "
            f"first_event AS (INSERT INTO session_events (session_id, seq, kind, data, created_at) "
            f"SELECT n.id, 1, 'status', i.event_data, i.event_at FROM new_session AS n JOIN input AS i ON i.id = n.id) "
            f"SELECT f.*, n.id AS inserted FROM found AS f JOIN input AS i ON i.ord = f.ord "
            f"LEFT JOIN new_session AS n ON n.id = i.id ORDER BY f.ord")


def _json_value(value: object) -> str:
    """The values json.dumps does not know, in a batch's JSON: times (ISO 8601, with their offset)."""
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not a column value of a batched record")


def batch_json(batch: list[_Record]) -> str:
    """batch_record_statement's parameter: the records as one JSON array, each with its position. Written by
    orjson (issue 16: json.dumps was 5 % of the web process's CPU at 500 deliveries/s; orjson takes a fifth of
    that), times as ISO 8601 with their offset as before; what orjson refuses (an int beyond 64 bits, a key
    that is not a string...) goes through json.dumps, as before."""
    records = [{**one.values, "event_data": one.event, "event_at": one.values["created_at"],
                "delivery_id": one.delivery_id, "base_given": one.base_given, "ord": position}
               for position, one in enumerate(batch, 1)]
    try:
        return orjson.dumps(records, default=_json_value).decode()
    except TypeError:  # orjson.JSONEncodeError is one
        return json.dumps(records, default=_json_value)


def column_types(table: Table, dialect: Dialect) -> dict[str, str]:
    """Each column's type, without a length: an explicit cast to varchar(n) would cut a longer value
    instead of refusing it."""
    return {column.name: re.sub(r"\(.*?\)", "", column.type.compile(dialect)) for column in table.columns}


class Connections:
    """At most `size` asyncpg connections of this process, each lent to one caller at a time (asyncpg's Pool
    costs more per statement than the statement's own work here, and resets connections on release)."""

    def __init__(self, dsn: str, size: int) -> None:
        self.dsn, self.size = dsn, size
        self.idle: list[asyncpg.Connection] = []
        self.opened = 0  # open or opening
        self.waiting: deque[asyncio.Future[asyncpg.Connection | None]] = deque()

    async def acquire(self) -> asyncpg.Connection:
        while True:
            while self.idle:
                conn = self.idle.pop()
                if not conn.is_closed():
                    return conn
                self.opened -= 1
            if self.opened < self.size:
                self.opened += 1
                try:
                    return await asyncpg.connect(self.dsn)
                except BaseException:
                    self._lost()
                    raise
            turn: asyncio.Future[asyncpg.Connection | None] = asyncio.get_running_loop().create_future()
            self.waiting.append(turn)
            try:
                conn = await turn
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled():  # handed over as it was cancelled: pass it on
                    self._hand(turn.result())
                raise
            if conn is not None:
                return conn
            # None: a connection was closed, so this caller may open one

    def release(self, conn: asyncpg.Connection) -> None:
        if conn.is_closed():
            self._lost()
        elif not self._hand(conn):
            self.idle.append(conn)

    def discard(self, conn: asyncpg.Connection) -> None:
        """A connection in an unknown state (its statement failed midway, or was cancelled): closed."""
        conn.terminate()
        self._lost()

    def drop_idle(self) -> None:
        """After a lost connection: the idle ones most likely went with it (a PostgreSQL restart)."""
        idle, self.idle = self.idle, []
        for conn in idle:
            self.discard(conn)

    def _lost(self) -> None:
        self.opened -= 1
        self._hand(None)

    def _hand(self, conn: asyncpg.Connection | None) -> bool:
        """Give `conn` (None: the right to open one) to the first caller still waiting."""
        while self.waiting:
            turn = self.waiting.popleft()
            if not turn.done():
                turn.set_result(conn)
                return True
        return False

    async def run(self, call: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """`call` on a connection; once more on a fresh one when the first was lost."""
        for attempt in (1, 2):
            conn = await self.acquire()
            try:
                result = await call(conn)
            except RECONNECT:
                self.discard(conn)
                self.drop_idle()
                if attempt == 2:
                    raise
                continue
            except asyncpg.PostgresError:
                self.release(conn)  # the server answered: the connection is fine
                raise
            except BaseException:
                self.discard(conn)
                raise
            self.release(conn)
            return result
        raise AssertionError("unreachable")

    async def close(self) -> None:
        idle, self.idle = self.idle, []
        await asyncio.gather(*(conn.close() for conn in idle), return_exceptions=True)


@dataclass
class _Record:
    """One `record` waiting for its batch: the arguments of its row, and its caller's answer."""

    values: dict[str, Any]
    event: dict[str, Any]
    delivery_id: str
    base_given: bool
    answer: asyncio.Future[tuple[Lookup, bool]]


def _fail(batch: list[_Record], exc: BaseException) -> None:
    for one in batch:
        if not one.answer.done():
            one.answer.set_exception(exc)


def _recorded(row: asyncpg.Record, session_id: str) -> tuple[Lookup, bool]:
    """A batch row's answer. Its own id found as `existing`: the statement was written before its
    connection was lost, and this is the retry finding it (recorded, not a redelivery)."""
    if row["existing"] == session_id:
        found = _lookup(row)
        return Lookup(None, found.seen, found.parent), True
    return _lookup(row), row["inserted"] is not None


def _lookup(row: asyncpg.Record) -> Lookup:
    parent = (Parent(row["parent_id"], row["branch"], row["base_branch"], row["pr_number"])
              if row["parent_id"] is not None else None)
    return Lookup(row["existing"], bool(row["seen"]), parent)


class IntakeStore:
    """A few asyncpg connections of this process and the hot path's statements; opened on first use."""

    def __init__(self, url: str, types: dict[str, str]) -> None:
        """`types`: the sessions table's column types (column_types)."""
        self.dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        self.connections = Connections(self.dsn, POOL_SIZE)
        self.types = types
        self._inserts: dict[tuple[str, ...], str] = {}
        self._records: dict[tuple[str, ...], str] = {}
        self._waiting: dict[tuple[str, ...], list[_Record]] = {}
        self._in_flight = 0
        self._batches: set[asyncio.Task[None]] = set()
        self._reports: dict[str, tuple[str, asyncio.Future[None]]] = {}
        self._flushing: asyncio.Task[None] | None = None

    async def _run(self, call: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Every statement of the store goes through here (one call, one statement)."""
        return await self.connections.run(call)

    async def lookup(self, trigger_key: str, delivery_id: str, repo: str, issue_number: int | None) -> Lookup:
        """One statement: the redelivery check and the follow-up's parent."""
        row = await self._run(lambda c: c.fetchrow(LOOKUP, trigger_key, delivery_id, repo, issue_number))
        assert row is not None
        return _lookup(row)

    async def insert(self, values: dict[str, Any], event: dict[str, Any]) -> bool:
        """Record a session and its first event; False when its trigger key exists (a duplicate)."""
        columns = tuple(values)
        sql = self._inserts.get(columns)
        if sql is None:
            sql = self._inserts[columns] = insert_statement(list(columns))
        args = [json.dumps(v) if k in JSON_COLUMNS else v for k, v in values.items()]
        args += [json.dumps(event), values["created_at"]]
        try:
            await self._run(lambda c: c.execute(sql, *args))
        except asyncpg.exceptions.UniqueViolationError as exc:
            if "trigger_key" not in str(exc.constraint_name or "") + str(exc):
                raise
            return False
        return True

    async def record(self, values: dict[str, Any], event: dict[str, Any], delivery_id: str,
                     base_given: bool) -> tuple[Lookup, bool]:
        """`lookup` and `insert` in one statement (batch_record_statement): what the lookup found, and whether the
        session was recorded. Not recorded: a redelivery (`existing` or `seen`), a parent with a pull
        request while no base was given (the caller asks GitHub, then inserts), or a concurrent duplicate
        of the trigger key (none of those set). Written with the others that wait."""
        answer: asyncio.Future[tuple[Lookup, bool]] = asyncio.get_running_loop().create_future()
        one = _Record(values, event, delivery_id, base_given, answer)
        if self._in_flight == 0 and not self._waiting:
            return await self._write_alone(one)
        self._waiting.setdefault(tuple(values), []).append(one)
        self._send_batches()
        return await answer

    async def _write_alone(self, one: _Record) -> tuple[Lookup, bool]:
        """A record that finds nothing in flight is written by its caller, at once: no task, no answer passed
        between tasks (issue 16: at 500 deliveries/s most records come alone, and handing each to a task
        of its own was a sixth of the hot path's CPU). Those that arrive meanwhile wait for a batch, which is
        sent when this one is answered, as when it was a batch's."""
        self._in_flight += 1
        try:
            [row] = await self._write_rows(tuple(one.values), [one])
        finally:
            self._in_flight -= 1
            self._send_batches()
        return _recorded(row, one.values["id"])

    def _send_batches(self) -> None:
        while self._in_flight < MAX_IN_FLIGHT and self._waiting:
            columns, waiting = next(iter(self._waiting.items()))
            batch = waiting[:MAX_BATCH]
            if len(waiting) > MAX_BATCH:
                self._waiting[columns] = waiting[MAX_BATCH:]
            else:
                del self._waiting[columns]
            self._in_flight += 1
            task = asyncio.create_task(self._write(columns, batch), name="intake-record-batch")
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

    async def _write(self, columns: tuple[str, ...], batch: list[_Record]) -> None:
        try:
            await self._answer(columns, batch)
        finally:
            self._in_flight -= 1
            self._send_batches()

    async def _answer(self, columns: tuple[str, ...], batch: list[_Record]) -> None:
        """One statement for the batch; each caller gets its row's answer, or the error. A statement the
        server refused (a value out of range...) is written again one record at a time, so that only the
        record at fault fails."""
        try:
            rows = await self._write_rows(columns, batch)
        except asyncpg.PostgresError as exc:
            if len(batch) == 1:
                _fail(batch, exc)
            else:
                await asyncio.gather(*(self._answer(columns, [one]) for one in batch))
            return
        except BaseException as exc:
            _fail(batch, exc)
            if not isinstance(exc, Exception):
                raise
            return
        for one, row in zip(batch, rows, strict=True):
            if not one.answer.done():
                one.answer.set_result(_recorded(row, one.values["id"]))

    async def _write_rows(self, columns: tuple[str, ...], batch: list[_Record]) -> list[asyncpg.Record]:
        sql = self._records.get(columns)
        if sql is None:
            sql = self._records[columns] = batch_record_statement(list(columns), self.types)
        data = batch_json(batch)
        rows: list[asyncpg.Record] = await self._run(lambda c: c.fetch(sql, data))
        return rows

    async def set_report(self, session_id: str, report: dict[str, Any]) -> None:
        """Store a session's report; returns once it is written (with others of the same moment, in one
        statement), raises what the write raised."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        earlier = self._reports.get(session_id)
        if earlier is not None:  # the later report wins; the earlier caller learns when it is written
            done = earlier[1]
        self._reports[session_id] = (json.dumps(report), done)
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush_reports(), name="intake-report-batch")
        await asyncio.shield(done)

    async def _flush_reports(self) -> None:
        await asyncio.sleep(REPORT_BATCH_WAIT)
        batch, self._reports = self._reports, {}
        ids = list(batch)
        try:
            await self._run(lambda c: c.execute(SET_REPORTS, ids, [batch[i][0] for i in ids]))
        except Exception as exc:
            for _report, done in batch.values():
                if not done.done():
                    done.set_exception(exc)
        else:
            for _report, done in batch.values():
                if not done.done():
                    done.set_result(None)
        finally:
            if self._reports:  # arrived while this batch was written: the next one
                self._flushing = asyncio.create_task(self._flush_reports(), name="intake-report-batch")

    async def close(self) -> None:
        while self._batches or (self._flushing is not None and not self._flushing.done()):
            await asyncio.gather(*self._batches, *[self._flushing] if self._flushing else [],
                                 return_exceptions=True)
        await self.connections.close()
