"""REST resource /api/session/{id}/events: a session's events over SSE."""

from __future__ import annotations

import asyncio
import json
import logging
import re

from aiohttp import web

from bot.models import State
from bot.services import Services
from bot.sessions import as_utc
from webhooks.api.common import bad_request, session_or_404
from webhooks.keys import SERVICES

SSE_POLL = 0.5
MAX_AFTER = 2**31 - 1  # event seq is a 32-bit integer
log = logging.getLogger(__name__)


async def session_events(request: web.Request) -> web.StreamResponse:
    """SSE: replay after Last-Event-ID, then follow until the session has ended."""
    services: Services = request.app[SERVICES]
    row = await session_or_404(request)
    text = request.headers.get("Last-Event-ID") or request.query.get("after") or "0"
    if not re.fullmatch(r"[0-9]{1,10}", text.strip()) or int(text) > MAX_AFTER:
        raise bad_request(f"Last-Event-ID must be a whole number from 0 to {MAX_AFTER}")
    after = int(text)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
    await response.prepare(request)
    try:
        await _follow(services, row.id, after, response)
    except ConnectionResetError:  # aiohttp's ClientConnectionResetError: the client closed, a normal end
        log.debug("session %s: event stream closed by the client", row.id)
    return response


async def _follow(services: Services, session_id: str, after: int, response: web.StreamResponse) -> None:
    """Write the events after `after`, then new ones as they come, until the session has ended."""
    while True:
        events = await services.sessions.events(session_id, after)
        if events:  # a page of events per write (a chatty agent's lines come in chunks of a thousand)
            page = []
            for event in events:
                payload = json.dumps({"kind": event.kind, "data": event.data,
                                      "at": as_utc(event.created_at).isoformat()})
                page.append(f"id: {event.seq}\nevent: {event.kind}\ndata: {payload}\n\n")
            await response.write("".join(page).encode())
            after = events[-1].seq
        if not events:
            current = await services.sessions.get(session_id)
            if current is None or State(current.state).final:
                break
            await response.write(b": keep-alive\n\n")
            await asyncio.sleep(SSE_POLL)
    await response.write(b"event: end\ndata: {}\n\n")
