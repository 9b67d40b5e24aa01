"""An arq worker that waits out a Redis outage (backoff, logged) instead of exiting, and learns of a job
when it is enqueued (a wake-up on Redis pub/sub) instead of polling every half second."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time

from arq.connections import create_pool
from arq.utils import timestamp_ms
from arq.worker import Worker
from redis.exceptions import RedisError

from bot.queue import WAKE_CHANNEL, WORKER_KEY_PREFIX, WORKER_KEY_TTL

log = logging.getLogger(__name__)
REDIS_ERRORS = (RedisError, OSError, TimeoutError)
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 5.0
HEARTBEAT_EVERY = 10.0


def next_delay(delay: float) -> float:
    """Exponential backoff, capped: a short outage is noticed in well under a second."""
    return min(delay * 2, BACKOFF_MAX)


class ReconnectingWorker(Worker):
    """arq's Worker, but a lost Redis means waiting for it (running sessions carry on), not exiting.

    Its loop polls the queue when woken, not every poll_delay: by a message on WAKE_CHANNEL (each enqueue
    publishes one), by the end of one of its jobs (a slot is free), at the score of the earliest deferred
    job (arq's cron jobs), and at the latest every poll_delay seconds (the fallback: a wake-up lost while
    Redis restarted or before the subscription, a job enqueued by a client that does not publish)."""

    name = f"{socket.gethostname()}:{os.getpid()}"
    down_since: float | None = None
    _last_heartbeat = 0.0
    _wake: asyncio.Event | None = None

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
        self.ctx["redis"] = self.pool
        if self.on_startup:
            await self.on_startup(self.ctx)
        self._wake = asyncio.Event()
        listener = asyncio.create_task(self._listen(), name="worker-wake")
        try:
            await self._loop()
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)

    async def _loop(self) -> None:
        """arq's poll loop, waiting for a wake-up between iterations instead of a fixed sleep."""
        assert self._wake is not None
        while True:
            self._wake.clear()  # a wake-up from now on is seen by the wait below
            await self._poll_iteration()
            if self.burst:
                if 0 <= self.max_burst_jobs <= self._jobs_started():
                    await asyncio.gather(*self.tasks.values())
                    return
                if await self.pool.zcard(self.queue_name) == 0:
                    await asyncio.gather(*self.tasks.values())
                    return
            await self._wait_for_wake(await self._next_due())

    async def _wait_for_wake(self, timeout: float) -> None:
        """Until a wake-up or `timeout`. Not asyncio.wait_for: on Python 3.11 it swallows a cancellation that
        arrives as the event is set (a job's end wakes the loop, and the SIGTERM hand-back cancels it at that
        very moment), and the worker then never exits; asyncio.wait always lets the cancellation through."""
        assert self._wake is not None
        waiter = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({waiter}, timeout=timeout)
        finally:
            waiter.cancel()

    async def _next_due(self) -> float:
        """Seconds until the next poll is due without a wake-up: poll_delay, or sooner when a deferred job
        (a cron job enqueued ahead of its time) becomes due."""
        timeout = self.poll_delay_s
        now = timestamp_ms()
        try:  # due jobs still in the queue are running (here or elsewhere): only later ones count
            earliest = await self.pool.zrangebyscore(self.queue_name, min=now + 1, max="+inf", start=0, num=1,
                                                     withscores=True)
        except REDIS_ERRORS:
            return timeout
        if earliest and self.job_counter < self.max_jobs:
            timeout = min(timeout, max(0.0, (earliest[0][1] - timestamp_ms()) / 1000))
        return timeout

    async def _listen(self) -> None:
        """Set the wake event on each message of WAKE_CHANNEL; resubscribe after a Redis outage."""
        delay = BACKOFF_FIRST
        while True:
            pubsub = self.pool.pubsub()
            try:
                await pubsub.subscribe(WAKE_CHANNEL)
                delay = BACKOFF_FIRST
                self._woken()  # what was published before the subscription: poll once more
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self._woken()
            except REDIS_ERRORS as exc:
                log.debug("wake-up subscription lost (%s); the worker polls every %.1f s meanwhile",
                          exc, self.poll_delay_s)
            finally:
                with contextlib.suppress(*REDIS_ERRORS):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(delay)
            delay = next_delay(delay)

    def _woken(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _release_sem_dec_counter_on_complete(self) -> None:
        super()._release_sem_dec_counter_on_complete()
        self._woken()  # a slot is free: take the next queued job now

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
