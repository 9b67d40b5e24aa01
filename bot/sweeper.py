"""The sweeper: nothing stays pending or processing forever; a dead worker's session runs again."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta

from bot.catalog import display_name
from bot.models import Session, State
from bot.progress import Progress
from bot.queue import Queue
from bot.reporting import channel_for, report_end, session_url
from bot.services import Services

log = logging.getLogger(__name__)
PENDING_GRACE = timedelta(seconds=30)
# What else to do when the sweeper ends a session (the composition root wires the workspace's removal).
EndHook = Callable[[Services, str], Awaitable[None]]


async def sweep(services: Services, queue: Queue, pending_grace: timedelta | None = None,
                on_end: EndHook | None = None) -> dict[str, int]:
    """Retry or end sessions whose worker died (lease expired); re-enqueue pending sessions older than
    pending_grace (default SWEEP_PENDING_GRACE)."""
    if pending_grace is None:
        pending_grace = timedelta(seconds=int(services.settings.SWEEP_PENDING_GRACE or PENDING_GRACE.seconds))
    pending, expired = await services.sessions.stale(pending_grace)
    for session_id in expired:
        await worker_lost(services, queue, session_id, on_end)
    for session_id, attempts in pending:
        await queue.enqueue(session_id, attempts + 1)
    return {"pending": len(pending), "expired": len(expired)}


async def worker_lost(services: Services, queue: Queue, session_id: str, on_end: EndHook | None = None) -> None:
    """Its worker stopped renewing the lease: the next attempt is enqueued, or the session ends."""
    limit = max(int(services.settings.SESSION_MAX_ATTEMPTS), 1)
    session = await services.sessions.release_expired(session_id, limit)
    if session is None:
        return
    await queue.forget(session_id, session.attempts)
    if session.state == State.PENDING.value:
        attempt = session.attempts + 1
        log.warning("session %s: its worker stopped; retrying, attempt %d of %d", session_id, attempt, limit)
        await tell(services, session, f"the worker running this stopped; retrying, attempt {attempt} of {limit}")
        await queue.enqueue(session_id, attempt)
    else:
        log.warning("session %s: its worker stopped; ended %s", session_id, session.state)
        _ended(services, session_id, on_end)


def _ended(services: Services, session_id: str, on_end: EndHook | None) -> None:
    """Run the wired hook (the workspace's removal), then report the end like the pipeline does (the
    channel's publish of a final Progress, retried); in the background, so a slow GitHub never holds
    up a sweep."""
    async def report() -> None:
        if on_end is not None:
            try:
                await on_end(services, session_id)
            except Exception:
                log.exception("cleaning up after session %s failed", session_id)
        await report_end(services, session_id)

    services.background.spawn(report(), name=f"report-end-{session_id}")


async def tell(services: Services, session: Session, note: str | None) -> None:
    """Show the sweeper's news in the session's progress message (best effort: the row is the truth)."""
    try:
        channel = await channel_for(services, session)
        progress = Progress(session.id, session.title or session.prompt[:80], display_name(session.agent),
                            session_url(services, session.id), state=session.state, warning=note)
        if State(session.state).final:
            progress.finish(session.state, None, session.error)
        await channel.publish(progress)
    except Exception as exc:
        log.warning("could not update the progress message of session %s: %s", session.id, exc)


async def run_forever_sweeper(services: Services, queue: Queue, every: float | None = None,
                              on_end: EndHook | None = None) -> None:
    """The web process's own sweeper, so nothing pending is lost while Redis was down; every
    SWEEP_INTERVAL seconds unless told otherwise."""
    every = float(every or services.settings.SWEEP_INTERVAL or 30)
    while True:
        try:
            await sweep(services, queue, on_end=on_end)
        except Exception:
            log.exception("sweeper pass failed")
        await asyncio.sleep(every)
