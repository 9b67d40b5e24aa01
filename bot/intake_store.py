"""The webhook hot path on PostgreSQL: raw asyncpg statements, one round trip each (issue 16).

Every delivery that mentions the app asks the same three things: is it a redelivery (its session, or
its recorded delivery id, exists), which session of the same issue or PR has a branch (a follow-up
continues it), and then records the session with its first event. Through SQLAlchemy's ORM these
cost 0.4-0.7 ms of CPU each (7-10x the same statement on asyncpg); here the first two are one
statement, the insert another (both one statement, `record`, when the sender is a writer known from the
cache: nothing needs GitHub between them), and the queued comments' ids (off the 202's path: written by
the web process, or with Redis by a worker's notifier lane) a third for several sessions at once, each a
prepared statement on a small pool of this process's own. SQLite keeps SessionService's Core paths.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy.engine import make_url

T = TypeVar("T")
POOL_SIZE = 10  # connections of this process's hot-path pool, besides SQLAlchemy's

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
# on a fresh connection of the pool (a PostgreSQL restart leaves every pooled connection dead).
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


def record_statement(columns: list[str]) -> str:
    """LOOKUP and the insert in one statement: the session (with its first event) is recorded unless the
    lookup finds its trigger key, its delivery id, or a parent with a pull request (which the caller must
    ask GitHub about) while no base branch was given. The lookup's row comes back with `inserted`."""
    n = len(columns)
    at = {name: f"${i}" for i, name in enumerate(columns, 1)}
    params = ", ".join(f"${i}::json" if name in JSON_COLUMNS else f"${i}" for i, name in enumerate(columns, 1))
    found = LOOKUP_OF.format(trigger_key=at["trigger_key"], delivery_id=f"${n + 3}", repo=at["repo"],
                             issue_number=at["issue_number"])
    return (f"WITH found AS ({found}), "
            f"new_session AS (INSERT INTO sessions ({', '.join(columns)}) SELECT {params} FROM found "
            f"WHERE found.existing IS NULL AND NOT found.seen AND (found.pr_number IS NULL OR ${n + 4}) "
            f"ON CONFLICT (trigger_key) DO NOTHING RETURNING id), "
            f"first_event AS (INSERT INTO session_events (session_id, seq, kind, data, created_at) "
            f"SELECT id, 1, 'status', ${n + 1}::json, ${n + 2} FROM new_session) "
            f"SELECT found.*, (SELECT id FROM new_session) AS inserted FROM found")


async def _keep(_conn: asyncpg.Connection) -> None:
    """No reset when a connection returns to the pool (asyncpg's default is a round trip of UNLISTEN,
    RESET ALL...: a fifth of intake's CPU): these statements leave no session state behind."""


def _lookup(row: asyncpg.Record) -> Lookup:
    parent = (Parent(row["parent_id"], row["branch"], row["base_branch"], row["pr_number"])
              if row["parent_id"] is not None else None)
    return Lookup(row["existing"], bool(row["seen"]), parent)


class IntakeStore:
    """A small asyncpg pool of this process and the hot path's statements; opened on first use."""

    def __init__(self, url: str) -> None:
        self.dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()
        self._inserts: dict[tuple[str, ...], str] = {}
        self._records: dict[tuple[str, ...], str] = {}
        self._reports: dict[str, tuple[str, asyncio.Future[None]]] = {}
        self._flushing: asyncio.Task[None] | None = None

    async def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            async with self._opening:
                if self._pool is None:
                    self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=POOL_SIZE,
                                                           reset=_keep)
        return self._pool

    async def _run(self, call: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        pool = await self.pool()
        for attempt in (1, 2):
            try:
                async with pool.acquire() as conn:
                    return await call(conn)
            except RECONNECT:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

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
        """`lookup` and `insert` in one statement (record_statement): what the lookup found, and whether the
        session was recorded. Not recorded: a redelivery (`existing` or `seen`), a parent with a pull
        request while no base was given (the caller asks GitHub, then inserts), or a concurrent duplicate
        of the trigger key (none of those set)."""
        columns = tuple(values)
        sql = self._records.get(columns)
        if sql is None:
            sql = self._records[columns] = record_statement(list(columns))
        args = [json.dumps(v) if k in JSON_COLUMNS else v for k, v in values.items()]
        args += [json.dumps(event), values["created_at"], delivery_id, base_given]
        row = await self._run(lambda c: c.fetchrow(sql, *args))
        assert row is not None
        return _lookup(row), row["inserted"] is not None

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
        if self._flushing is not None:
            await asyncio.gather(self._flushing, return_exceptions=True)
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()
