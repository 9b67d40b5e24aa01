"""Writes that must land: retried with backoff while the database is unreachable, for a grace period."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError

log = logging.getLogger(__name__)
T = TypeVar("T")
# A dead or refused connection: asyncpg's errors arrive wrapped in DBAPIError, a refused connect as OSError.
DB_DOWN_ERRORS = (DBAPIError, OSError, TimeoutError)
FIRST_DELAY = 0.2
MAX_DELAY = 5.0


async def until_stored(write: Callable[[], Awaitable[T]], grace: float, what: str) -> T:
    """Run `write`, retrying with backoff while the database is down, for up to `grace` seconds."""
    deadline = time.monotonic() + grace
    delay, failed_at = FIRST_DELAY, 0.0
    while True:
        try:
            result = await write()
        except DB_DOWN_ERRORS as exc:
            if time.monotonic() + delay > deadline:
                log.error("the database stayed unreachable for %.0f s; %s is not stored: %s", grace, what, exc)
                raise
            if not failed_at:
                failed_at = time.monotonic()
                log.warning("the database is unreachable (%s); storing %s again with backoff for up to %.0f s",
                            str(exc).splitlines()[0] if str(exc) else type(exc).__name__, what, grace)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_DELAY)
            continue
        if failed_at:
            log.warning("the database is back; %s stored after %.1f s", what, time.monotonic() - failed_at)
        return result
