"""The sweeper: nothing stays pending or processing forever."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta

from bot.models import State
from bot.queue import Queue
from bot.reporting import report_end
from bot.services import Services

log = logging.getLogger(__name__)
PENDING_GRACE = timedelta(seconds=30)
MAX_ATTEMPTS = 3
# What else to do when the sweeper ends a session (the composition root wires the workspace's removal).
EndHook = Callable[[Services, str], Awaitable[None]]


async def _ended(services: Services, session_id: str, on_end: EndHook | None) -> None:
    """Report the end like the pipeline does, then run the wired hook; in the background, so a slow
    GitHub never holds up a sweep."""
    async def report() -> None:
        if on_end is not None:
            try:
                await on_end(services, session_id)
            except Exception:
                log.exception("cleaning up after session %s failed", session_id)
        await report_end(services, session_id)

    services.background.spawn(report(), name=f"report-end-{session_id}")


async def sweep(services: Services, queue: Queue, pending_grace: timedelta = PENDING_GRACE,
                on_end: EndHook | None = None) -> dict[str, int]:
    """Re-enqueue pending sessions; retry or fail sessions whose worker died."""
    pending, expired = await services.sessions.stale(pending_grace)
    for session_id in pending:
        await queue.enqueue(session_id)
    for session_id in expired:
        session = await services.sessions.get(session_id)
        if session is None:
            continue
        if session.attempts >= MAX_ATTEMPTS or session.stop_requested:
            state = State.STOPPED if session.stop_requested else State.ERROR
            await services.sessions.finish(session_id, state, None if session.stop_requested else
                                           f"the worker running this session stopped answering "
                                           f"{session.attempts} times; giving up")
            await _ended(services, session_id, on_end)
        else:
            await services.sessions.add_event(session_id, "status", {"retry": True,
                                                                     "reason": "worker lease expired"})
            await queue.enqueue(session_id)
    return {"pending": len(pending), "expired": len(expired)}


async def run_forever_sweeper(services: Services, queue: Queue, every: float = 30.0,
                              on_end: EndHook | None = None) -> None:
    """The web process's own sweeper, so nothing pending is lost while Redis was down."""
    while True:
        try:
            await sweep(services, queue, on_end=on_end)
        except Exception:
            log.exception("sweeper pass failed")
        await asyncio.sleep(every)
