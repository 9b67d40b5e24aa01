"""The sessions list, live: an event stream (SSE) of the shown sessions' states, violations, costs and durations,
and of the counts by state, each sent when it changes; webhooks/static/live.js applies them to the page."""

from __future__ import annotations

import asyncio
import json
import re
import time
from datetime import UTC, datetime

from aiohttp import web

from bot.models import Session, State
from bot.services import Services
from webhooks.app import SERVICES
from webhooks.pages import PAGE_SIZE, PageError, cost, duration, session_duration

POLL = 1.0  # seconds between looks at the database
LIFETIME = 600.0  # a stream ends after this; the browser's EventSource opens a new one
SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def row_facts(row: Session, now: datetime) -> dict[str, object]:
    """What a list row shows that changes while a session runs."""
    return {"id": row.id, "state": row.state, "violations": row.violation_count, "cost": cost(row.cost_usd),
            "duration": duration(session_duration(row, now))}


async def list_events(request: web.Request) -> web.StreamResponse:
    """SSE: `session` events for rows of `ids` (comma separated, at most a page) whose facts changed, and `counts`;
    `end` once every one of them has ended."""
    ids = [i for i in request.query.get("ids", "").split(",") if i]
    if len(ids) > PAGE_SIZE * 4 or not all(SESSION_ID.match(i) for i in ids):
        raise PageError(400, f"ids must be at most {PAGE_SIZE * 4} session ids, comma separated")
    services = request.app[SERVICES]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
    await response.prepare(request)
    ends = time.monotonic() + LIFETIME
    try:
        await _follow(services, ids, response, ends)
    except ConnectionResetError:  # the page went away: nothing to tell anyone
        pass
    return response


async def _follow(services: Services, ids: list[str], response: web.StreamResponse, ends: float) -> None:
    sent: dict[str, dict[str, object]] = {}
    counts_sent: dict[str, int] | None = None
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
        if all(State(row.state).final for row in rows):  # nothing shown changes any more
            await response.write(b"event: end\ndata: {}\n\n")
            return
        await response.write(b": keep-alive\n\n")
        await asyncio.sleep(POLL)


def setup(app: web.Application) -> None:
    app.router.add_get("/sessions/live", list_events)
