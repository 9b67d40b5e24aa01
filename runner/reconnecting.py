"""An arq worker that waits out a Redis outage (backoff, logged) instead of exiting."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time

from arq.connections import create_pool
from arq.worker import Worker
from redis.exceptions import RedisError

from bot.queue import WORKER_KEY_PREFIX, WORKER_KEY_TTL

log = logging.getLogger(__name__)
REDIS_ERRORS = (RedisError, OSError, TimeoutError)
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 5.0
HEARTBEAT_EVERY = 10.0


def next_delay(delay: float) -> float:
    """Exponential backoff, capped: a short outage is noticed in well under a second."""
    return min(delay * 2, BACKOFF_MAX)


class ReconnectingWorker(Worker):
    """arq's Worker, but a lost Redis means waiting for it (running sessions carry on), not exiting."""

    name = f"{socket.gethostname()}:{os.getpid()}"
    down_since: float | None = None
    _last_heartbeat = 0.0

    async def main(self) -> None:
        delay = BACKOFF_FIRST
        while self._pool is None:  # Redis down at start: wait for it like for any outage
            try:
                self._pool = await create_pool(self.redis_settings, job_deserializer=self.job_deserializer,
                                               job_serializer=self.job_serializer, default_queue_name=self.queue_name,
                                               expires_extra_ms=self.expires_extra_ms)
            except REDIS_ERRORS as exc:
                self._went_down(exc)
                await asyncio.sleep(delay)
                delay = next_delay(delay)
        self._came_back()
        await super().main()

    async def _poll_iteration(self) -> None:
        try:
            await super()._poll_iteration()
            await self._heartbeat()
        except REDIS_ERRORS as exc:
            self._went_down(exc)
            await self._wait_for_redis()
        self._came_back()

    async def _wait_for_redis(self) -> None:
        """Ping with backoff until Redis answers; the worker's running sessions do not need it."""
        delay = BACKOFF_FIRST
        while True:
            await asyncio.sleep(delay)
            try:
                await asyncio.wait_for(self.pool.ping(), BACKOFF_MAX)
                return
            except REDIS_ERRORS as exc:
                log.debug("Redis still unreachable: %s", exc)
                delay = next_delay(delay)

    async def _heartbeat(self) -> None:
        """A key per live worker, expiring on its own: the web's health counts them."""
        now = time.monotonic()
        if now - self._last_heartbeat >= HEARTBEAT_EVERY:
            running = sum(not t.done() for t in self.tasks.values())
            await self.pool.set(WORKER_KEY_PREFIX + self.name, str(running), ex=int(WORKER_KEY_TTL))
            self._last_heartbeat = now

    def _went_down(self, exc: BaseException) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()
            log.warning("Redis unreachable (%s); worker %s keeps its running sessions and reconnects "
                        "with backoff", str(exc) or type(exc).__name__, self.name)

    def _came_back(self) -> None:
        if self.down_since is not None:
            log.warning("Redis is back after %.1f s; worker %s takes work again",
                        time.monotonic() - self.down_since, self.name)
            self.down_since = None
            self._last_heartbeat = 0.0

    async def close(self) -> None:
        if self._pool is not None:
            try:  # leave the health count at once, not when the key expires
                await self.pool.delete(WORKER_KEY_PREFIX + self.name)
            except REDIS_ERRORS:
                pass
        await super().close()
