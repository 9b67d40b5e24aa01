"""SessionService: idempotent creation, transitions, events, violations, follow-ups."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast, overload

import orjson
import zstandard
from sqlalchemy import (
    JSON,
    Integer,
    LargeBinary,
    Table,
    Text,
    and_,
    bindparam,
    case,
    delete,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.admission import AtLimit as AtLimit
from bot.admission import AtLimitError, account_of, like_prefix, lock_key
from bot.db import rows_affected
from bot.intake_store import IntakeStore, Lookup, Parent, column_types
from bot.models import Session, SessionEvent, State, Violation, WebhookDelivery, new_id, utcnow
from bot.setting_types import not_utf8
from bot.violation_counts import CountedViolation, merge_counts, upsert_violations, violation_event
from bot.violation_counts import ViolationCount as ViolationCount

LEASE = timedelta(seconds=90)  # the default of SESSION_LEASE_SECONDS
SESSIONS = cast(Table, Session.__table__)
EVENTS = cast(Table, SessionEvent.__table__)
INSERT_SESSION = SESSIONS.insert()
INSERT_EVENT = EVENTS.insert()
_S = SESSIONS.c
_COLUMNS = tuple(_S.keys())  # a new row's keys (ColumnCollection.keys builds a list each call)
CHUNK_KIND = "lines"  # a row holding a batch of agent output events (issue 16: a chatty agent writes few rows)
CHUNK_MIN = 4  # a smaller batch is stored one row per event
EVENT_PAGE_ROWS = 200  # rows read per query by events()
OFF_LOOP_BYTES = 64 * 1024  # a chunk's JSON from which add_lines compresses it on a thread


@dataclass(frozen=True, slots=True)
class LineBlock:
    """Agent output lines kept as one entry of a `lines` row (no per-line work when they are stored): each
    text is an event of `kind` whose data is `data` plus `field`, which is the text's first non-blank line
    cut like a title when field is `summary`, the text itself otherwise."""

    kind: str
    data: dict[str, Any]
    at: datetime
    texts: list[str]
    field: str = "summary"


@dataclass(slots=True)
class EventRow:
    """One event as events() reads it: a plain row (a chunk of 10,000 lines becomes 10,000 of these, where
    ORM-mapped SessionEvents cost tens of microseconds each to build)."""

    session_id: str
    seq: int
    kind: str
    data: dict[str, Any]
    created_at: datetime


# What add_lines stores: one event (kind, data, time), or a block of them.
LineItem = tuple[str, dict[str, Any], datetime] | LineBlock


def singles_of(item: LineItem) -> list[tuple[str, dict[str, Any], datetime]]:
    """A LineItem as the events it stands for, each (kind, data, time)."""
    if not isinstance(item, LineBlock):
        return [item]
    return [(item.kind, {**item.data, item.field: block_value(item.field, text)}, item.at) for text in item.texts]


def block_value(field: str, text: str) -> str:
    """The value of a LineBlock's field for one of its texts."""
    return first_line(text) if field == "summary" else text


def item_events(item: LineItem) -> int:
    """The events a LineItem stands for."""
    return len(item.texts) if isinstance(item, LineBlock) else 1
_E = EVENTS.c
# PostgreSQL: the session and its first event in one statement (a data-modifying CTE), one round trip
# in autocommit instead of BEGIN, two INSERTs and COMMIT; a duplicate trigger key still fails as a whole.
_NEW_ROW = (SESSIONS.insert()
            .values({column.name: bindparam(column.name, type_=column.type) for column in _S})
            .returning(_S.id).cte("new_session"))
INSERT_SESSION_WITH_EVENT = EVENTS.insert().from_select(
    ["session_id", "seq", "kind", "data", "created_at"],
    select(_NEW_ROW.c.id, literal(1), literal("status"), bindparam("event_data", type_=_E.data.type),
           bindparam("event_created_at", type_=_E.created_at.type)))
# PostgreSQL: a `lines` row in one statement (autocommit, one round trip instead of BEGIN, UPDATE ...
# RETURNING, INSERT and COMMIT): the seqs are reserved in a data-modifying CTE, whose row lock on the
# session lasts the statement, as the transaction's did; no session, no row (NoResultFound).
_RESERVED = (SESSIONS.update().where(_S.id == bindparam("chunk_session", type_=_S.id.type))
             .values(event_seq=_S.event_seq + bindparam("chunk_events", type_=Integer))
             .returning(_S.event_seq).cte("reserved"))
INSERT_CHUNK = EVENTS.insert().from_select(
    ["session_id", "seq", "kind", "data", "blob", "created_at"],
    select(bindparam("chunk_session", type_=_S.id.type), _RESERVED.c.event_seq, literal(CHUNK_KIND),
           sql_cast(literal("{}", Text), JSON), bindparam("chunk_blob", type_=LargeBinary),
           bindparam("chunk_at", type_=_E.created_at.type))).returning(_E.seq)
LATEST_WITH_BRANCH = (
    select(SESSIONS)
    .where(_S.repo == bindparam("repo"), _S.issue_number == bindparam("issue"), _S.branch.is_not(None))
    .order_by(_S.created_at.desc()).limit(1))


SOURCES = ("github", "slack", "api", "cli")  # where sessions come from (Session.source)


@dataclass
class NewSession:
    """What a trigger asks for; trigger_key makes creation idempotent."""

    trigger_key: str
    prompt: str
    agent: str
    repo: str
    source: str
    model: str | None = None
    base_branch: str | None = None
    branch: str | None = None
    title: str = ""
    report: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    requested_by: str | None = None
    parent_id: str | None = None
    sandbox_security: bool = True
    keep_alive: bool = False
    budget_usd: float | None = None  # USD the session may spend; None: the SESSION_BUDGET_USD default, if any
    pr_number: int | None = None
    issue_number: int | None = None
    id: str | None = None  # chosen by the caller when it must know it before the row exists


def holdable(text: str) -> bool:
    """Whether a text column can hold text: PostgreSQL's refuses NUL, and no UTF-8 encoder writes a lone surrogate
    (which JSON can escape). A key that fails this names no row."""
    return "\x00" not in text and not_utf8(text) is None


class SessionInUse(Exception):
    """A session other rows still refer to (its follow-ups) cannot be deleted."""


class SessionWrites:
    """The writes of one session inside one transaction its caller owns (SessionService.transaction): a
    change of the row and the event that tells of it land together or not at all."""

    def __init__(self, service: SessionService, db: AsyncSession, session_id: str) -> None:
        self._service, self._db, self.session_id = service, db, session_id

    async def _set(self, values: dict[str, Any]) -> None:
        await self._db.execute(update(Session).where(Session.id == self.session_id).values(values))

    async def set_warning(self, warning: str) -> None:
        await self._set({"warning": warning})

    async def record_commit(self, sha: str) -> None:
        await self._set({"commit_sha": sha})

    async def record_pull_request(self, number: int, url: str) -> None:
        await self._set({"pr_number": number, "pr_url": url})

    async def event(self, kind: str, data: dict[str, Any]) -> int:
        return await self._service._event(self._db, self.session_id, kind, data)


class SessionService:
    """All reads and writes of sessions go through here; each method owns its transaction."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], lease: timedelta = LEASE) -> None:
        self.sessionmaker = sessionmaker
        self.lease = lease
        # Reads and single-statement writes need no BEGIN/COMMIT round trips: autocommit.
        engine = self.engine = sessionmaker.kw["bind"]
        self.autocommit_engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self.autocommit = async_sessionmaker(self.autocommit_engine, expire_on_commit=False)
        # PostgreSQL: the webhook hot path on raw asyncpg (bot/intake_store.py); SQLite: Core below.
        self.fast = (IntakeStore(str(engine.url), column_types(SESSIONS, engine.dialect))
                     if engine.dialect.name == "postgresql" else None)

    async def close(self) -> None:
        if self.fast is not None:
            await self.fast.close()

    async def create(self, new: NewSession) -> tuple[Session, bool]:
        """Record a session; a repeated trigger key returns the existing one (created=False)."""
        values = await self._insert(new)
        if values is None:
            existing = await self.by_trigger(new.trigger_key)
            if existing is None:
                raise IntegrityError("INSERT INTO sessions", None, ValueError("no session with this trigger key"))
            return existing, False
        return Session(**values), True

    async def record(self, new: NewSession) -> tuple[str, bool]:
        """`create` for intake, which needs only the id: no ORM object is built (a fifth of its CPU)."""
        values = await self._insert(new)
        if values is not None:
            return str(values["id"]), True
        existing = await self.by_trigger(new.trigger_key)
        if existing is None:
            raise IntegrityError("INSERT INTO sessions", None, ValueError("no session with this trigger key"))
        return existing.id, False

    async def record_trigger(self, new: NewSession, delivery_id: str) -> tuple[Lookup, str | None] | None:
        """`intake_lookup` and `record` in one statement (PostgreSQL; None elsewhere): what the lookup
        found, and the new session's id when it was recorded (IntakeStore.record says when it is not)."""
        if self.fast is None:
            return None
        values = self._values(new)
        found, inserted = await self.fast.record(values, {"state": State.PENDING.value}, delivery_id,
                                                 bool(new.base_branch))
        return found, str(values["id"]) if inserted else None

    def _values(self, new: NewSession) -> dict[str, Any]:
        """A new session's row."""
        now = utcnow()
        values: dict[str, Any] = dict.fromkeys(_COLUMNS)
        values.update(
            id=new.id or new_id(), trigger_key=new.trigger_key, state=State.PENDING.value,
            title=new.title or first_line(new.prompt), prompt=new.prompt, agent=new.agent, model=new.model,
            repo=new.repo, base_branch=new.base_branch, branch=new.branch, issue_number=new.issue_number,
            pr_number=new.pr_number, progress=0, source=new.source, report=new.report or {},
            context=new.context or {}, requested_by=new.requested_by, parent_id=new.parent_id,
            sandbox_security=new.sandbox_security, keep_alive=new.keep_alive, budget_usd=new.budget_usd,
            stop_requested=False,
            violation_count=0, event_seq=1, attempts=0, created_at=now)
        return values

    async def _insert(self, new: NewSession) -> dict[str, Any] | None:
        """The row's values once inserted with its first event; None when the trigger key exists."""
        values = self._values(new)
        now = values["created_at"]
        first_event = {"state": State.PENDING.value}
        try:  # prebuilt statements with bound parameters: this is every trigger's hot path
            if self.fast is not None:
                if not await self.fast.insert(values, first_event):
                    raise IntegrityError("INSERT INTO sessions", None, ValueError("duplicate trigger key"))
            elif self.engine.dialect.name == "postgresql":
                async with self.autocommit_engine.connect() as conn:
                    await conn.execute(INSERT_SESSION_WITH_EVENT,
                                       {**values, "event_data": first_event, "event_created_at": now})
            else:
                async with self.engine.begin() as conn:
                    await conn.execute(INSERT_SESSION, values)
                    await conn.execute(INSERT_EVENT, {"session_id": values["id"], "seq": 1, "kind": "status",
                                                      "data": first_event, "created_at": now})
        except IntegrityError:
            if await self.by_trigger(new.trigger_key) is None:
                raise
            return None
        return values

    async def record_delivery(self, delivery_id: str, source: str, event: str) -> bool:
        """Remember a delivery id; False when it was seen before (a redelivery)."""
        try:
            async with self.sessionmaker() as db, db.begin():
                db.add(WebhookDelivery(delivery_id=delivery_id, source=source, event=event))
        except IntegrityError:
            return False
        return True

    async def intake_lookup(self, trigger_key: str, delivery_id: str, repo: str,
                            issue_number: int | None) -> Lookup:
        """Before any GitHub call, what a delivery needs from the database: the session its trigger key
        made (a redelivery), whether its delivery id was recorded, and the parent of a follow-up on the
        same issue or PR. One statement on PostgreSQL."""
        if self.fast is not None:
            return await self.fast.lookup(trigger_key, delivery_id, repo, issue_number)
        existing = await self.by_trigger(trigger_key)
        seen = existing is None and await self.delivery_seen(delivery_id)
        row = await self.latest_with_branch(repo, issue_number) if issue_number is not None else None
        parent = Parent(row.id, row.branch, row.base_branch, row.pr_number) if row is not None else None
        return Lookup(existing.id if existing is not None else None, seen, parent)

    async def delivery_seen(self, delivery_id: str) -> bool:
        """The delivery id was recorded before (a redelivery), without recording it."""
        async with self.autocommit() as db:
            return await db.get(WebhookDelivery, delivery_id) is not None

    async def forget_delivery(self, delivery_id: str) -> None:
        """Drop a delivery record so a redelivery is processed again (its handler failed)."""
        async with self.sessionmaker() as db, db.begin():
            await db.execute(delete(WebhookDelivery).where(WebhookDelivery.delivery_id == delivery_id))

    async def active_for_issue(self, repo: str, issue_number: int) -> list[Session]:
        """Pending or processing sessions of an issue or PR (for `@sesame stop`)."""
        async with self.autocommit() as db:
            return list((await db.execute(select(Session).where(
                Session.repo == repo, Session.issue_number == issue_number,
                Session.state.in_([State.PENDING.value, State.PROCESSING.value])))).scalars())

    async def in_thread(self, thread_key: str) -> list[Session]:
        """Sessions whose message lives in a Slack thread ("channel:thread_ts"), newest first."""
        async with self.autocommit() as db:
            return list((await db.execute(select(Session).where(Session.thread_key == thread_key)
                                          .order_by(Session.created_at.desc()))).scalars())

    async def get(self, session_id: str) -> Session | None:
        if not holdable(session_id):  # from a URL or a button: no row has it, and the driver would refuse it
            return None
        async with self.autocommit() as db:
            return await db.get(Session, session_id)

    async def many(self, session_ids: list[str]) -> list[Session]:
        """The sessions with these ids (missing ones left out), in one query."""
        session_ids = [session_id for session_id in session_ids if holdable(session_id)]
        if not session_ids:
            return []
        async with self.autocommit() as db:
            return list((await db.execute(select(Session).where(Session.id.in_(session_ids)))).scalars())

    async def by_trigger(self, trigger_key: str) -> Session | None:
        async with self.autocommit() as db:
            return (await db.execute(select(Session).where(Session.trigger_key == trigger_key))).scalar_one_or_none()

    async def recent(self, limit: int = 50, state: str | None = None) -> list[Session]:
        """The newest sessions first, of one state when given."""
        query = select(Session).order_by(Session.created_at.desc()).limit(limit)
        if state:
            query = query.where(Session.state == state)
        async with self.autocommit() as db:
            return list((await db.execute(query)).scalars())

    async def page(self, limit: int, *, state: str | None = None, agent: str | None = None,
                   source: str | None = None, before: tuple[datetime, str] | None = None,
                   repo: str | None = None) -> list[Session]:
        """Newest first (created_at, then id), filtered; `before` is the (created_at, id) of the last row of
        the previous page, so rows inserted meanwhile never shift a page (keyset pagination)."""
        query = select(Session).order_by(Session.created_at.desc(), Session.id.desc()).limit(limit)
        for column, value in ((Session.state, state), (Session.agent, agent), (Session.source, source),
                              (Session.repo, repo)):
            if value is not None:
                query = query.where(column == value)
        if before is not None:
            at, last_id = before
            query = query.where(or_(Session.created_at < at, and_(Session.created_at == at, Session.id < last_id)))
        async with self.autocommit() as db:
            return list((await db.execute(query)).scalars())

    async def count_by_state(self) -> dict[str, int]:
        """How many sessions there are in each state (states without any are left out)."""
        query = select(Session.state, func.count()).group_by(Session.state)
        async with self.autocommit() as db:
            return {state: int(n) for state, n in (await db.execute(query)).all()}

    async def repos(self, limit: int = 500) -> list[str]:
        """The repositories sessions were started on, sorted (at most `limit`)."""
        query = select(Session.repo).distinct().order_by(Session.repo).limit(limit)
        async with self.autocommit() as db:
            return list((await db.execute(query)).scalars())

    async def has_repo(self, repo: str) -> bool:
        """True if any session was started on `repo`."""
        async with self.autocommit() as db:
            return (await db.execute(select(Session.id).where(Session.repo == repo).limit(1))).first() is not None

    async def count_waiting_and_running(self) -> tuple[int, int]:
        """How many sessions are queued (pending) and how many run (processing), across every process."""
        query = (select(Session.state, func.count()).where(
            Session.state.in_([State.PENDING.value, State.PROCESSING.value])).group_by(Session.state))
        async with self.autocommit() as db:
            counts = {state: int(n) for state, n in (await db.execute(query)).all()}
        return counts.get(State.PENDING.value, 0), counts.get(State.PROCESSING.value, 0)

    async def claim(self, session_id: str, worker: str) -> Session | None:
        """Move pending -> processing under a lease; None if someone else has it or it ended."""
        claimed = await self.claim_within(session_id, worker)
        assert not isinstance(claimed, AtLimit)  # no limit given
        return claimed

    async def claim_within(self, session_id: str, worker: str, repo_limit: int = 0,
                           installation_limit: int = 0) -> Session | AtLimit | None:
        """claim, unless as many sessions of its repository (repo_limit) or of its repository's account
        (installation_limit) are processing already (0: no limit): then AtLimit, the session stays
        pending and no attempt is counted. Right across workers: the count is taken inside the claim's
        transaction, after the claim's own write (SQLite: one writer at a time) or under advisory locks
        of the account and the repository (PostgreSQL), so two claims of one repository never both
        count the other out."""
        now = utcnow()
        try:
            async with self.sessionmaker() as db, db.begin():
                found = (await db.execute(select(Session.repo, Session.branch, Session.parent_id)
                                          .where(Session.id == session_id))).first()
                if found is None:
                    return None
                repo, branch = found.repo, found.branch
                parent = (await db.execute(select(Session.state, Session.branch).where(
                    Session.id == found.parent_id))).first() if found.parent_id else None
                if parent is not None and not State(parent.state).final:  # a follow-up waits for its parent
                    raise AtLimitError(AtLimit("parent", parent.branch or repo, 1, 1))
                branch = branch or (parent.branch if parent is not None else None)  # and continues its branch
                account = account_of(repo) if installation_limit > 0 else None
                if self.engine.dialect.name == "postgresql":  # always the account, then the repo, then the branch
                    keys = ([f"sesame:account:{account}"] if account else []) + (
                        [f"sesame:repo:{repo}"] if repo_limit > 0 else []) + (
                        [f"sesame:branch:{repo}:{branch}"] if branch else [])
                    for key in keys:
                        await db.execute(select(func.pg_advisory_xact_lock(lock_key(key))))
                result = await db.execute(
                    update(Session)
                    .where(Session.id == session_id,
                           or_(Session.state == State.PENDING.value,
                               (Session.state == State.PROCESSING.value) & (Session.lease_expires_at < now)))
                    .values(state=State.PROCESSING.value, lease_expires_at=now + self.lease, branch=branch,
                            started_at=func.coalesce(Session.started_at, now), attempts=Session.attempts + 1)
                )
                if rows_affected(result) != 1:
                    return None
                if branch:  # a follow-up waits for the session still on its branch (the push would collide)
                    await self._within(db, session_id, now, (Session.repo == repo) & (Session.branch == branch),
                                       "branch", branch, 1)
                if repo_limit > 0:
                    await self._within(db, session_id, now, Session.repo == repo,
                                       "REPO_CONCURRENCY", repo, repo_limit)
                if account is not None:
                    await self._within(db, session_id, now, Session.repo.like(f"{like_prefix(account)}/%",
                                                                             escape="\\"),
                                       "INSTALLATION_CONCURRENCY", f"{account}'s repositories", installation_limit)
                await self._event(db, session_id, "status", {"state": State.PROCESSING.value, "worker": worker})
                return await db.get(Session, session_id)
        except AtLimitError as refused:
            return refused.at

    @staticmethod
    async def _within(db: AsyncSession, session_id: str, now: datetime, same: Any, setting: str, scope: str,
                      limit: int) -> None:
        """Raise AtLimitError when `limit` other sessions matching `same` are processing (a lapsed lease
        is a dead worker's, not counted: the sweeper gives that session back)."""
        running = (await db.execute(select(func.count()).select_from(Session).where(
            same, Session.id != session_id, Session.state == State.PROCESSING.value,
            Session.lease_expires_at >= now))).scalar_one()
        if running >= limit:
            raise AtLimitError(AtLimit(setting, scope, running, limit))

    async def waiting_behind(self, repo: str, limit: int = 100) -> list[tuple[str, int]]:
        """(id, attempts) of the pending sessions of a repository and of its account, oldest first: those a
        session's end may let start."""
        account = account_of(repo)
        same = or_(Session.repo == repo, Session.repo.like(f"{like_prefix(account)}/%", escape="\\")) \
            if account else Session.repo == repo
        async with self.autocommit() as db:
            rows = (await db.execute(select(Session.id, Session.attempts).where(
                same, Session.state == State.PENDING.value).order_by(Session.created_at).limit(limit))).all()
            return [(row.id, row.attempts) for row in rows]

    async def renew_lease(self, session_id: str) -> bool:
        """Extend the lease; False when the session is no longer processing."""
        async with self.autocommit() as db:
            result = await db.execute(
                update(Session).where(Session.id == session_id, Session.state == State.PROCESSING.value)
                .values(lease_expires_at=utcnow() + self.lease))
            return rows_affected(result) == 1

    async def release_expired(self, session_id: str, max_attempts: int) -> Session | None:
        """A processing session whose lease expired (its worker died) goes back to pending for its next
        attempt, or ends: stopped when asked to, error after its last attempt. None when it is not such a
        session (any more): of several sweepers at once, one acts."""
        now = utcnow()
        async with self.sessionmaker() as db, db.begin():
            row = await db.get(Session, session_id, with_for_update=True, populate_existing=True)
            if (row is None or row.state != State.PROCESSING.value or row.lease_expires_at is None
                    or as_utc(row.lease_expires_at) >= now):
                return None
            if row.stop_requested or row.attempts >= max_attempts:
                row.state, row.finished_at = (State.STOPPED.value if row.stop_requested else State.ERROR.value), now
                row.error = None if row.stop_requested else (
                    f"the worker running this session stopped {row.attempts} times; giving up")
            else:
                row.state = State.PENDING.value
            row.lease_expires_at = None
            await self._event(db, session_id, "status", {"state": row.state, "error": row.error,
                                                         "reason": "worker lost", "attempts": row.attempts})
            return row

    async def hand_back(self, session_id: str, reason: str) -> bool:
        """A worker shutting down gives a running session back: pending again, this run not counted as an
        attempt; False when it is not processing (it ended, or was stopped meanwhile)."""
        async with self.sessionmaker() as db, db.begin():
            result = await db.execute(
                update(Session).where(Session.id == session_id, Session.state == State.PROCESSING.value)
                .values(state=State.PENDING.value, lease_expires_at=None,
                        attempts=case((Session.attempts > 0, Session.attempts - 1), else_=0)))
            if rows_affected(result) != 1:
                return False
            await self._event(db, session_id, "status", {"state": State.PENDING.value, "reason": reason})
            return True

    async def set_branch(self, session_id: str, branch: str, base_branch: str) -> None:
        """The branch the session works on, and the branch it starts from."""
        await self._set(session_id, {"branch": branch, "base_branch": base_branch})

    async def set_progress(self, session_id: str, percent: int) -> None:
        await self._set(session_id, {"progress": percent})

    async def set_warning(self, session_id: str, warning: str) -> None:
        """What the requester must know although the session went on (e.g. it ran unsandboxed)."""
        await self._set(session_id, {"warning": warning})

    async def set_agent(self, session_id: str, agent: str, model: str | None) -> None:
        """The agent and model the repository's config chose (its trigger named none)."""
        await self._set(session_id, {"agent": agent, "model": model})

    async def set_budget(self, session_id: str, budget_usd: float | None) -> None:
        """The most the session may spend, in USD (the SESSION_BUDGET_USD default when its trigger named none)."""
        await self._set(session_id, {"budget_usd": budget_usd})

    async def record_usage(self, session_id: str, input_tokens: int | None, output_tokens: int | None,
                           cost_usd: float | None) -> None:
        """The tokens and cost the agent reported so far (totals, not increments; None: not reported)."""
        await self._set(session_id, {"input_tokens": input_tokens, "output_tokens": output_tokens,
                                     "cost_usd": cost_usd})

    async def set_report(self, session_id: str, report: dict[str, Any]) -> None:
        """Where the session reports back (its progress comment, Slack message...)."""
        await self._set(session_id, {"report": report})

    async def set_intake_report(self, session_id: str, report: dict[str, Any]) -> None:
        """set_report for intake (the queued comment's id): one raw statement on PostgreSQL."""
        if self.fast is not None:
            await self.fast.set_report(session_id, report)
        else:
            await self.set_report(session_id, report)

    async def record_slack_message(self, session_id: str, report: dict[str, Any], thread_key: str) -> None:
        """The session's Slack message, and the thread ("channel:thread_ts") its replies arrive in."""
        await self._set(session_id, {"report": report, "thread_key": thread_key})

    async def record_commit(self, session_id: str, sha: str) -> None:
        await self._set(session_id, {"commit_sha": sha})

    async def record_pull_request(self, session_id: str, number: int, url: str) -> None:
        await self._set(session_id, {"pr_number": number, "pr_url": url})

    @asynccontextmanager
    async def transaction(self, session_id: str) -> AsyncIterator[SessionWrites]:
        """One transaction for several writes of a session, owned by the caller: committed when the block
        ends, rolled back (nothing written) when it raises."""
        async with self.sessionmaker() as db, db.begin():
            yield SessionWrites(self, db, session_id)

    async def _set(self, session_id: str, values: dict[str, Any]) -> None:
        """Set columns of one session in one autocommit statement (only the transitions above call this)."""
        async with self.autocommit_engine.connect() as conn:
            await conn.execute(update(Session).where(Session.id == session_id).values(values))

    async def delete(self, session_id: str) -> None:
        """Delete an ended session with its events and violations; SessionInUse while follow-ups refer to it."""
        try:
            async with self.sessionmaker() as db, db.begin():
                await db.execute(delete(Session).where(Session.id == session_id))
        except IntegrityError:
            raise SessionInUse(session_id) from None

    async def finish(self, session_id: str, state: State, error: str | None = None) -> bool:
        """End a session once; False if it had already ended."""
        async with self.sessionmaker() as db, db.begin():
            result = await db.execute(
                update(Session)
                .where(Session.id == session_id, Session.state.in_([State.PENDING.value, State.PROCESSING.value]))
                .values(state=state.value, error=error, finished_at=utcnow(), lease_expires_at=None,
                        progress=100 if state is State.COMPLETED else Session.progress))
            if rows_affected(result) != 1:
                return False
            await self._event(db, session_id, "status", {"state": state.value, "error": error})
            return True

    async def request_stop(self, session_id: str) -> Session | None:
        """Flag a session to stop; a pending one ends stopped at once."""
        async with self.sessionmaker() as db, db.begin():
            row = await db.get(Session, session_id, with_for_update=True)
            if row is None or State(row.state).final:
                return row
            row.stop_requested = True
            if row.state == State.PENDING.value:
                row.state, row.finished_at = State.STOPPED.value, utcnow()
                await self._event(db, session_id, "status", {"state": State.STOPPED.value})
            return row

    async def add_event(self, session_id: str, kind: str, data: dict[str, Any]) -> int:
        """Append an event with the next per-session seq; returns the seq."""
        return (await self.add_events(session_id, [(kind, data)]))[-1]

    async def add_events(self, session_id: str, items: list[tuple[str, dict[str, Any]]]) -> list[int]:
        """Append several events in one transaction (a chatty agent's lines); their seqs."""
        async with self.sessionmaker() as db, db.begin():
            return await self._events(db, session_id, items)

    async def add_step_event(self, session_id: str, data: dict[str, Any], percent: int | None) -> int:
        """A step event and, when given, the session's progress percent: set by the statement that reserves
        the event's seq (one round trip fewer than add_event then set_progress); the seq."""
        async with self.sessionmaker() as db, db.begin():
            return (await self._events(db, session_id, [("step", data)], progress=percent))[-1]

    async def add_lines(self, session_id: str, items: Sequence[LineItem]) -> list[int]:
        """Store a batch of agent output events as one `lines` row (few rows for a chatty agent) that
        readers see as the events it holds, each with its own seq and time; a small batch of single events
        stays one row per event. Their seqs."""
        count = sum(item_events(item) for item in items)
        if not count:
            return []
        if count < CHUNK_MIN:
            singles = [one for item in items for one in singles_of(item)]
            async with self.sessionmaker() as db, db.begin():
                return await self._events(db, session_id, [(k, d) for k, d, _at in singles], [a for *_, a in singles])
        entries: list[list[Any]] = [
            [item.kind, item.data, item.at.timestamp(), item.texts, item.field] if isinstance(item, LineBlock)
            else [item[0], item[1], item[2].timestamp()] for item in items]
        last_at = items[-1].at if isinstance(items[-1], LineBlock) else items[-1][2]
        blob = await chunk_blob(entries)
        if self.engine.dialect.name == "postgresql":  # one autocommit round trip (INSERT_CHUNK)
            async with self.autocommit_engine.connect() as conn:
                last = (await conn.execute(INSERT_CHUNK, {
                    "chunk_session": session_id, "chunk_events": count, "chunk_blob": blob,
                    "chunk_at": last_at})).scalar_one()
            return list(range(last - count + 1, last + 1))
        async with self.sessionmaker() as db, db.begin():
            last = (await db.execute(
                update(Session).where(Session.id == session_id)
                .values(event_seq=Session.event_seq + count).returning(Session.event_seq))).scalar_one()
            conn = await db.connection()
            await conn.execute(INSERT_EVENT, {
                "session_id": session_id, "seq": last, "kind": CHUNK_KIND, "created_at": last_at,
                "data": {}, "blob": blob})
            return list(range(last - count + 1, last + 1))

    async def _event(self, db: AsyncSession, session_id: str, kind: str, data: dict[str, Any]) -> int:
        return (await self._events(db, session_id, [(kind, data)]))[-1]

    async def _events(self, db: AsyncSession, session_id: str, items: list[tuple[str, dict[str, Any]]],
                      times: list[datetime] | None = None, progress: int | None = None) -> list[int]:
        """Reserve len(items) seqs atomically (setting the progress percent too, when given), then insert the
        events with them."""
        values: dict[str, Any] = {"event_seq": Session.event_seq + len(items)}
        if progress is not None:
            values["progress"] = progress
        last = (await db.execute(
            update(Session).where(Session.id == session_id)
            .values(values).returning(Session.event_seq))).scalar_one()
        seqs = list(range(last - len(items) + 1, last + 1))
        now = utcnow()
        conn = await db.connection()
        await conn.execute(INSERT_EVENT, [
            {"session_id": session_id, "seq": seq, "kind": kind, "data": data,
             "created_at": times[i] if times else now}
            for i, (seq, (kind, data)) in enumerate(zip(seqs, items, strict=False))])
        return seqs

    async def add_violation(self, session_id: str, kind: str, resource: str, operation: str,
                            reason: str | None = None) -> int:
        """Count one violation (its own transaction); the seq of its event."""
        return (await self.add_violations(session_id, [ViolationCount(kind, resource, operation, reason)]))[-1]

    async def add_violations(self, session_id: str, items: Sequence[CountedViolation]) -> list[int]:
        """Add a batch of counted violations in one transaction: one upserted row and one event
        per (kind, resource, operation), the session's count raised by the total; the event seqs."""
        counts = merge_counts(items)
        if not counts:
            return []
        rows = [{"session_id": session_id, "kind": v.kind, "resource": v.resource, "operation": v.operation,
                 "reason": v.reason, "count": v.count, "first_at": v.first_at, "last_at": v.last_at,
                 "created_at": v.first_at} for v in counts]
        async with self.sessionmaker() as db, db.begin():
            conn = await db.connection()
            await conn.execute(upsert_violations(conn.dialect.name), rows)
            await db.execute(update(Session).where(Session.id == session_id)
                             .values(violation_count=Session.violation_count + sum(v.count for v in counts)))
            return await self._events(db, session_id, [("violation", violation_event(v)) for v in counts])

    async def events(self, session_id: str, after: int = 0, limit: int = 1000) -> list[EventRow]:
        """The session's events after seq `after`, at most `limit`, in seq order; a `lines` row (agent
        output stored in a chunk) is read as the events it holds, each with its own seq."""
        out: list[EventRow] = []
        async with self.autocommit_engine.connect() as conn:  # Core: plain rows, a page at a time
            while len(out) < limit:
                want = min(limit - len(out), EVENT_PAGE_ROWS)
                page = (await conn.execute(
                    select(_E.seq, _E.kind, _E.data, _E.blob, _E.created_at)
                    .where(_E.session_id == session_id, _E.seq > after)
                    .order_by(_E.seq).limit(want))).all()
                for row in page:
                    data = chunk_entries(row.blob) if row.blob is not None else row.data
                    out.extend(expand(session_id, row.seq, row.kind, data, row.created_at, after))
                if len(page) < want:
                    break
                after = page[-1].seq
        return out[:limit]

    async def last_event(self, session_id: str, kind: str) -> SessionEvent | None:
        """The session's latest event of one kind (a chatty agent's log is never read for it)."""
        async with self.autocommit() as db:
            return (await db.execute(
                select(SessionEvent).where(SessionEvent.session_id == session_id, SessionEvent.kind == kind)
                .order_by(SessionEvent.seq.desc()).limit(1))).scalar_one_or_none()

    async def violations(self, session_id: str) -> list[Violation]:
        async with self.autocommit() as db:
            return list((await db.execute(
                select(Violation).where(Violation.session_id == session_id).order_by(Violation.id))).scalars())

    async def latest_with_branch(self, repo: str, issue_number: int) -> Session | None:
        """The last session on this issue or PR that has a branch: the parent of a follow-up."""
        async with self.autocommit_engine.connect() as conn:  # Core: every issue comment asks this
            row = (await conn.execute(LATEST_WITH_BRANCH, {"repo": repo, "issue": issue_number})).first()
        return Session(**row._mapping) if row is not None else None

    async def stale(self, pending_older_than: timedelta) -> tuple[list[tuple[str, int]], list[str]]:
        """(id, attempts) of sessions pending too long, and ids of processing ones whose lease expired."""
        now = utcnow()
        async with self.autocommit() as db:
            pending = (await db.execute(select(Session.id, Session.attempts).where(
                Session.state == State.PENDING.value,
                Session.created_at < now - pending_older_than))).all()
            expired = (await db.execute(select(Session.id).where(
                Session.state == State.PROCESSING.value, Session.lease_expires_at < now))).scalars()
            return [(row.id, row.attempts) for row in pending], list(expired)


def chunk_json(entries: list[list[Any]]) -> bytes:
    """A `lines` row's data as JSON (UTF-8): orjson (12 MB of a chatty agent's lines in ~25 ms, where json.dumps
    takes ~100 ms on the worker's event loop); json.dumps for what orjson refuses (a key that is not a
    string, an integer beyond 64 bits, a lone surrogate). Both read back as the same values."""
    try:
        return orjson.dumps({"lines": entries})
    except TypeError:  # orjson.JSONEncodeError
        return json.dumps({"lines": entries}).encode()


async def chunk_blob(entries: list[list[Any]]) -> bytes:
    """A `lines` row's events as stored in its `blob`: chunk_json, zstd-compressed (level 1: ~14 ms for a
    chatty agent's 12 MB, stored as is, where PostgreSQL spent 80-90 ms parsing and compressing the text);
    a large chunk on a thread (zstd lets go of the GIL): the event loop goes on reading the agent's output
    meanwhile, on the other core."""
    raw = chunk_json(entries)
    if len(raw) < OFF_LOOP_BYTES:
        return _compress(raw)
    return await asyncio.to_thread(_compress, raw)


def _compress(raw: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=1).compress(raw)


def chunk_entries(blob: bytes) -> dict[str, Any]:
    """A `lines` row's data ({"lines": [...]}) from its blob. What chunk_json wrote with json.dumps (its
    `{"lines": ` has the space orjson never writes) is read with json.loads: orjson would refuse its lone
    surrogates and round its big integers."""
    text = zstandard.ZstdDecompressor().decompress(blob)
    data: dict[str, Any] = json.loads(text) if text.startswith(b'{"lines": ') else orjson.loads(text)
    return data


def expand(session_id: str, seq: int, kind: str, data: Any, created_at: datetime,
           after: int = 0) -> list[EventRow]:
    """One stored row as the events it stands for (those after seq `after`): itself, or the lines of a
    `lines` row, whose seq is the last of theirs."""
    if kind != CHUNK_KIND:
        return [EventRow(session_id, seq, kind, data, created_at)]
    entries = (data or {}).get("lines") or []
    first = seq - sum(len(entry[3]) if len(entry) > 3 else 1 for entry in entries) + 1
    out: list[EventRow] = []
    for entry in entries:
        k, d, at = entry[0], entry[1], datetime.fromtimestamp(entry[2], UTC)
        if len(entry) <= 3:
            if first > after:
                out.append(EventRow(session_id, first, k, d, at))
            first += 1
            continue
        texts, field = entry[3], entry[4]
        skip = max(0, after + 1 - first)
        out.extend(EventRow(session_id, i, k, {**d, field: block_value(field, text)}, at)
                   for i, text in enumerate(texts[skip:], first + skip))
        first += len(texts)
    return out


def budget_left(session: Session, spent_usd: float | None = None) -> float | None:
    """USD the session may still spend, never below zero; None when it has no budget.

    spent_usd is what it spent so far by the caller's count (a credential gateway pricing the
    upstream's answers); without it, the cost the agent reported (sessions.cost_usd).
    """
    if session.budget_usd is None:
        return None
    spent = spent_usd if spent_usd is not None else (session.cost_usd or 0.0)
    return max(0.0, session.budget_usd - spent)


_LINE_BREAK = re.compile("[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")  # where str.splitlines() splits


def first_line(text: str, limit: int = 120) -> str:
    """The first non-empty line of a text, trimmed: a default title."""
    line = text.strip()
    if _LINE_BREAK.search(line):  # (a line of agent output has none: it is its own first line)
        line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"


@overload
def as_utc(value: datetime) -> datetime: ...
@overload
def as_utc(value: datetime | None) -> datetime | None: ...


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes; treat them as UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value
