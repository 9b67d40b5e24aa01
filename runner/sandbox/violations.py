"""Violations counted in memory per (kind, resource, operation) and written in batches."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from runner.sandbox.base import Violation

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 1.0  # seconds between batch writes: a flood costs one transaction per interval
ROWS_PER_SECOND = 20.0  # a batch of n rows delays the next by n / this (many distinct resources)
MAX_INTERVAL = 10.0  # ... but never longer than this
MAX_RESOURCES = 200  # distinct (kind, resource, operation) keys per session; the rest fold into one
MAX_OTHER = 16  # 'other resources' keys, one per (kind, operation); past it the operation folds too
OTHER_OPERATION = "other"
OTHER_RESOURCES = "(other resources, over the limit of {limit} per session)"


@dataclass
class Aggregate:
    """Violations of one key since the last write: how many, first and last time (UTC)."""

    kind: str
    resource: str
    operation: str
    reason: str | None
    count: int
    first_at: datetime
    last_at: datetime


Writer = Callable[[list[Aggregate]], Awaitable[None]]


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


class ViolationAggregator:
    """add() is O(1) and never waits; a background task hands each interval's aggregates to write.

    Memory is bounded: at most max_resources distinct keys per session, after which new resources
    of a (kind, operation) are counted under one 'other resources' key. Rows are rate-limited too: a
    batch of n rows puts the next write n / rows_per_second seconds away (at most MAX_INTERVAL), so a
    flood cycling through many resources costs about rows_per_second rows (and events) a second. A
    failed write keeps its aggregates for the next one, so counts are not lost to a database hiccup.
    """

    def __init__(self, write: Writer, interval: float = FLUSH_INTERVAL, max_resources: int = MAX_RESOURCES,
                 rows_per_second: float = ROWS_PER_SECOND) -> None:
        self.write = write
        self.interval = interval
        self.rows_per_second = rows_per_second
        self.rows = 0  # rows (aggregates) written, summed over batches
        self.max_resources = max_resources
        self.total = 0  # violations seen
        self.written = 0  # violations stored
        self.batches = 0  # successful writes
        self._keys: set[tuple[str, str, str]] = set()
        self._other: set[tuple[str, str, str]] = set()
        self._pending: dict[tuple[str, str, str], Aggregate] = {}
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin writing every interval (call on the event loop)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    def add(self, violation: Violation) -> None:
        """Count one violation; safe to call for every datagram of a flood."""
        self.total += 1
        key = self._key(violation)
        item = self._pending.get(key)
        if item is None:
            at = _utc(violation.at)
            self._pending[key] = Aggregate(*key, violation.reason, 1, at, at)
            return
        item.count += 1
        if violation.at > item.last_at.timestamp():
            item.last_at = _utc(violation.at)

    def _key(self, violation: Violation) -> tuple[str, str, str]:
        """The violation's own key while under the limit, else its kind's 'other resources' key."""
        key = (violation.kind, violation.resource, violation.operation)
        if key in self._keys:
            return key
        if len(self._keys) < self.max_resources:
            self._keys.add(key)
            return key
        other = (violation.kind, OTHER_RESOURCES.format(limit=self.max_resources), violation.operation)
        if other in self._other or len(self._other) < MAX_OTHER:
            self._other.add(other)
            return other
        return other[0], other[1], OTHER_OPERATION

    @property
    def pending(self) -> int:
        """Violations counted but not yet stored."""
        return sum(item.count for item in self._pending.values())

    async def flush(self) -> int:
        """Write what was counted since the last write, in one call; the number of rows written."""
        async with self._lock:
            batch, self._pending = list(self._pending.values()), {}
            if not batch:
                return 0
            try:
                await self.write(batch)
            except Exception as exc:
                log.warning("storing %d violations failed (%s); retrying with the next batch",
                            sum(i.count for i in batch), exc)
                self._requeue(batch)
                raise
            self.written += sum(item.count for item in batch)
            self.batches += 1
            self.rows += len(batch)
            return len(batch)

    def _requeue(self, batch: list[Aggregate]) -> None:
        """Put a batch that was not written back in front of what came since."""
        for item in batch:
            key = (item.kind, item.resource, item.operation)
            newer = self._pending.get(key)
            if newer is not None:
                item.count += newer.count
                item.last_at = max(item.last_at, newer.last_at)
            self._pending[key] = item

    async def _run(self) -> None:
        wait = self.interval
        while True:
            await asyncio.sleep(wait)
            try:  # shielded: close() cancelling the timer must not drop a batch whose write is under way
                rows = await asyncio.shield(self.flush())
            except Exception:
                rows = 0  # logged by flush; kept for the next tick
            wait = min(max(self.interval, rows / self.rows_per_second), max(MAX_INTERVAL, self.interval))

    async def close(self, timeout: float) -> None:
        """Stop the timer and write what is left (after a write already under way), within timeout seconds
        (then what is left is lost, logged)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        try:
            await asyncio.wait_for(self.flush(), timeout)
        except Exception as exc:
            log.warning("%d violations were not stored at cleanup: %s", self.pending or self.total - self.written,
                        exc or type(exc).__name__)
