"""The notifier lane (issue 16): a worker posts the queued comments the web processes hand it.

With Redis, intake posts no comment: the enqueue script pushes a new GitHub session's id on QUEUED_COMMENTS
(bot/queue.py) in the same round trip, and every worker runs this lane beside arq. It pops the ids (BLPOP)
and posts each comment (bot/queued_comment.py), up to LANE_POSTS at once. A claim per session (SET NX with a
TTL) keeps two lanes from posting one comment twice (a session handed off twice). A session that ended,
already has its comment, or whose `comment_due` is too near is skipped: the worker's GitHubChannel waits
for the comment only until that due time, then posts its own, so there is one comment and never a stale
one. A comment waits in Redis while no worker runs. The lane waits out a Redis outage (backoff, said once)
and stops with the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import redis.asyncio as aioredis

from bot.github_channel import COMMENT_GRACE, github_factory
from bot.models import Session, State
from bot.queue import QUEUED_COMMENTS
from bot.queued_comment import QueuedSession, post_queued_comment, release
from bot.services import Services
from runner.reconnecting import BACKOFF_FIRST, REDIS_ERRORS, next_delay

log = logging.getLogger(__name__)
LANE_POSTS = 8  # queued comments a lane posts at once
CLAIM_PREFIX = "sesame:queued-comment:"  # + session id: the lane posting it (SET NX)
CLAIM_TTL = int(2 * COMMENT_GRACE)  # longer than any post may take; by then the comment's due time has passed
# A lane that finds less than this before the due time leaves the comment to the worker: what it posts must
# be recorded before the worker (another machine, another clock) stops waiting for it.
LEAST_LEFT = COMMENT_GRACE / 4
POP_WAIT = 5  # seconds a BLPOP waits on an empty list before asking again (a dead connection shows by then)
STOP_WAIT = 5.0  # seconds a stopping lane lets the posts under way finish


def skip_reason(row: Session | None, now: float) -> str | None:
    """Why the lane leaves a session's queued comment alone, or None to post it."""
    if row is None:
        return "gone"
    if State(row.state).final:
        return f"already {row.state}"
    report = row.report or {}
    if report.get("comment_id"):
        return "already commented"
    due = QueuedSession.of_row(row).due
    if due - now < LEAST_LEFT:
        return "the worker posts it (its due time is near or past)"
    return None


class NotifierLane:
    """Pops QUEUED_COMMENTS and posts each session's queued comment; `start()` then `stop()`."""

    def __init__(self, services: Services, redis_url: str, posts: int = LANE_POSTS) -> None:
        self.services = services
        self.redis = aioredis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=POP_WAIT + 5)
        self.posted = 0  # comments this lane created
        self._slots = asyncio.Semaphore(posts)
        self._posting: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._down_since: float | None = None

    @property
    def busy(self) -> int:
        """Posts under way."""
        return len(self._posting)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="notifier-lane")

    async def run(self) -> None:
        """Pop and post until cancelled; Redis outages are waited out with backoff."""
        delay = BACKOFF_FIRST
        while True:
            await self._slots.acquire()
            try:
                popped = await self.redis.blpop([QUEUED_COMMENTS], timeout=POP_WAIT)
            except REDIS_ERRORS as exc:
                self._slots.release()
                self._went_down(exc)
                await asyncio.sleep(delay)
                delay = next_delay(delay)
                continue
            except BaseException:
                self._slots.release()
                raise
            self._came_back()
            delay = BACKOFF_FIRST
            if popped is None:
                self._slots.release()
                continue
            task = asyncio.create_task(self._post(popped[1].decode()), name="queued-comment")
            self._posting.add(task)
            task.add_done_callback(self._posted)

    def _posted(self, task: asyncio.Task[None]) -> None:
        self._posting.discard(task)
        self._slots.release()

    async def _post(self, session_id: str) -> None:
        try:
            if not await self.redis.set(CLAIM_PREFIX + session_id, "1", nx=True, ex=CLAIM_TTL):
                log.debug("queued comment of %s: another lane posts it", session_id)
                return
            row = await self.services.sessions.get(session_id)
            reason = skip_reason(row, time.time())
            if reason is not None or row is None:
                log.debug("queued comment of %s skipped: %s", session_id, reason)
                return
            session = QueuedSession.of_row(row)
            try:
                gh = await github_factory(self.services).installation_client(
                    int(session.report["installation_id"]), repositories=[session.repo], lazy=True)
            except Exception as exc:  # no token: the worker need not wait for a comment that will not come
                log.warning("queued comment of %s not posted (the worker will): %s", session_id, exc)
                await release(self.services, session_id, session.report)
                return
            if await post_queued_comment(self.services, gh, session):
                self.posted += 1
        except REDIS_ERRORS as exc:  # the claim failed: the worker posts the comment after its due time
            log.warning("queued comment of %s left to the worker (Redis: %s)", session_id, exc)
        except Exception:
            log.exception("queued comment of %s failed", session_id)

    async def stop(self, wait: float = STOP_WAIT) -> None:
        """Pop nothing more; let the posts under way finish within `wait` seconds, cancel the rest (those
        sessions' workers post their comments after the due time)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._posting:
            _done, left = await asyncio.wait(list(self._posting), timeout=wait)
            for task in left:
                task.cancel()
            await asyncio.gather(*left, return_exceptions=True)
        with contextlib.suppress(*REDIS_ERRORS):
            await self.redis.aclose()

    def _went_down(self, exc: BaseException) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("Redis unreachable (%s); queued comments wait there until it is back",
                        str(exc) or type(exc).__name__)

    def _came_back(self) -> None:
        if self._down_since is not None:
            log.warning("Redis is back after %.1f s; the notifier lane posts queued comments again",
                        time.monotonic() - self._down_since)
            self._down_since = None
