"""The sessions list, live: an event stream (SSE) of the shown sessions' states, violations, costs and durations,
of the counts by state, and (on the list's first page) of how many sessions matching its filters were created
since it was rendered, each sent when it changes; webhooks/static/live.js applies them to the page."""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from bot.catalog import AGENT_NAMES
from bot.models import Session
from bot.services import Services
from bot.sessions import SOURCES, as_utc
from webhooks.api import STATES, decode_cursor
from webhooks.app import SERVICES
from webhooks.pages import PAGE_SIZE, PageError, cost, duration, session_duration

POLL = 1.0  # seconds between looks at the database
LIFETIME = 600.0  # a stream ends after this; the browser's EventSource opens a new one
SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def row_facts(row: Session, now: datetime) -> dict[str, object]:
    """What a list row shows that changes while a session runs."""
    return {"id": row.id, "state": row.state, "violations": row.violation_count, "cost": cost(row.cost_usd),
            "duration": duration(session_duration(row, now))}


@dataclass(frozen=True)
class NewRows:
    """Which sessions count as new for a first page: those matching its filters created after `after` (the newest
    row it showed; None when it showed none)."""

    after: tuple[datetime, str] | None
    filters: dict[str, Any]


def _new_rows(query: Any) -> NewRows | None:
    """From `new` (the newest shown row's cursor, empty when there was none) and the page's filters; None without
    `new` (a later page: what is created meanwhile is not on it)."""
    if "new" not in query:
        return None
    after = None
    if query["new"]:
        try:
            after = decode_cursor(query["new"])
        except web.HTTPBadRequest:
            raise PageError(400, "new must be a cursor this server gave out") from None
    filters: dict[str, Any] = {}
    for name, valid in (("state", STATES), ("agent", AGENT_NAMES), ("source", SOURCES)):
        value = query.get(name) or None
        if value is not None and value not in valid:
            raise PageError(400, f"{name} must be one of {', '.join(valid)}")
        filters[name] = value
    repo = query.get("repo") or None
    if repo is not None and (len(repo) > 1024 or "\x00" in repo):
        raise PageError(400, "repo must be at most 1024 characters")
    return NewRows(after, filters | {"repo": repo})


async def list_events(request: web.Request) -> web.StreamResponse:
    """SSE: `session` events for rows of `ids` (comma separated, at most a page) whose facts changed, `counts`, and
    with `new`, `new` events counting the sessions created since. It lasts LIFETIME (ended rows do not end it: the
    counts and new sessions still change); the browser's EventSource then opens a new one."""
    ids = [i for i in request.query.get("ids", "").split(",") if i]
    if len(ids) > PAGE_SIZE * 4 or not all(SESSION_ID.match(i) for i in ids):
        raise PageError(400, f"ids must be at most {PAGE_SIZE * 4} session ids, comma separated")
    new = _new_rows(request.query)
    services = request.app[SERVICES]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
    await response.prepare(request)
    ends = time.monotonic() + LIFETIME
    try:
        await _follow(services, ids, new, response, ends)
    except ConnectionResetError:  # the page went away: nothing to tell anyone
        pass
    return response


async def _count_new(services: Services, new: NewRows) -> int:
    """How many sessions matching the page's filters are newer than its newest row (at most PAGE_SIZE + 1)."""
    rows = await services.sessions.page(PAGE_SIZE + 1, **new.filters)
    if new.after is None:
        return len(rows)
    return sum(1 for row in rows if (as_utc(row.created_at), row.id) > new.after)


async def _follow(services: Services, ids: list[str], new: NewRows | None, response: web.StreamResponse,
                  ends: float) -> None:
    sent: dict[str, dict[str, object]] = {}
    counts_sent: dict[str, int] | None = None
    new_sent = 0
    while time.monotonic() < ends:
        now = datetime.now(UTC)
        rows = await services.sessions.many(ids)
        for row in rows:
            facts = row_facts(row, now)
            if sent.get(row.id) != facts:
                await response.write(f"event: session\ndata: {json.dumps(facts)}\n\n".encode())
                sent[row.id] = facts
        counts = await services.sessions.count_by_state()
        if counts != counts_sent:
            await response.write(f"event: counts\ndata: {json.dumps(counts)}\n\n".encode())
            counts_sent = counts
        if new is not None:
            fresh = await _count_new(services, new)
            if fresh != new_sent:
                body = {"count": min(fresh, PAGE_SIZE), "more": fresh > PAGE_SIZE}
                await response.write(f"event: new\ndata: {json.dumps(body)}\n\n".encode())
                new_sent = fresh
        await response.write(b": keep-alive\n\n")
        await asyncio.sleep(POLL)


def setup(app: web.Application) -> None:
    app.router.add_get("/sessions/live", list_events)
