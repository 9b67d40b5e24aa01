"""The violation aggregator: O(1) counting, bounded keys, batched writes that survive a failure."""

from __future__ import annotations

import asyncio

import pytest

from runner.sandbox.base import Violation
from runner.sandbox.violations import OTHER_RESOURCES, Aggregate, ViolationAggregator


class Store:
    """Records each batch; can be told to fail the next write."""

    def __init__(self) -> None:
        self.batches: list[list[Aggregate]] = []
        self.fail = False

    async def write(self, batch: list[Aggregate]) -> None:
        if self.fail:
            self.fail = False
            raise ConnectionError("database went away")
        self.batches.append(batch)

    def totals(self) -> dict[tuple[str, str, str], int]:
        out: dict[tuple[str, str, str], int] = {}
        for batch in self.batches:
            for a in batch:
                key = (a.kind, a.resource, a.operation)
                out[key] = out.get(key, 0) + a.count
        return out


def dns(name: str, at: float = 1000.0) -> Violation:
    return Violation("network", f"{name}:53", "dns", "no DNS", at)


async def test_a_flood_of_one_resource_is_one_aggregate_with_first_and_last_time() -> None:
    store = Store()
    agg = ViolationAggregator(store.write)
    for n in range(20_000):
        agg.add(dns("flood.invalid", 1000.0 + n / 1000))
    await agg.flush()
    assert len(store.batches) == 1 and len(store.batches[0]) == 1
    item = store.batches[0][0]
    assert item.count == 20_000 and item.reason == "no DNS"
    assert item.first_at.timestamp() == 1000.0 and item.last_at.timestamp() == pytest.approx(1019.999)
    assert agg.total == agg.written == 20_000


async def test_distinct_resources_past_the_limit_fold_into_other_resources() -> None:
    """20,000 different names cannot make 20,000 rows: memory and rows stay bounded."""
    store = Store()
    agg = ViolationAggregator(store.write, max_resources=50)
    for n in range(20_000):
        agg.add(dns(f"n{n}.flood.invalid"))
    agg.add(Violation("filesystem", "/etc/shadow", "read", "hidden"))
    await agg.flush()
    totals = store.totals()
    assert len(totals) == 52
    assert totals[("network", OTHER_RESOURCES.format(limit=50), "dns")] == 19_950
    assert totals[("filesystem", OTHER_RESOURCES.format(limit=50), "read")] == 1
    assert sum(totals.values()) == 20_001


async def test_a_failed_write_is_retried_with_the_next_batch() -> None:
    store = Store()
    agg = ViolationAggregator(store.write)
    agg.add(dns("a.invalid"))
    store.fail = True
    with pytest.raises(ConnectionError):
        await agg.flush()
    agg.add(dns("a.invalid", 2000.0))
    agg.add(dns("b.invalid"))
    await agg.flush()
    assert store.totals() == {("network", "a.invalid:53", "dns"): 2, ("network", "b.invalid:53", "dns"): 1}
    assert store.batches[0][0].last_at.timestamp() == 2000.0


async def test_the_timer_writes_in_batches_and_close_writes_the_rest() -> None:
    store = Store()
    agg = ViolationAggregator(store.write, interval=0.05)
    agg.start()
    agg.add(dns("a.invalid"))
    await asyncio.sleep(0.2)
    assert store.totals() == {("network", "a.invalid:53", "dns"): 1}
    agg.add(dns("a.invalid"))
    await agg.close(timeout=1)
    assert store.totals() == {("network", "a.invalid:53", "dns"): 2}
    assert agg.pending == 0


async def test_close_gives_up_after_its_timeout() -> None:
    """A hung database cannot hold the worker past the session's time."""
    async def hang(batch: list[Aggregate]) -> None:
        await asyncio.sleep(60)

    agg = ViolationAggregator(hang)
    agg.add(dns("a.invalid"))
    loop = asyncio.get_running_loop()
    started = loop.time()
    await agg.close(timeout=0.2)
    assert loop.time() - started < 2 and agg.written == 0


async def test_many_distinct_resources_slow_the_writes_down() -> None:
    """A batch of 150 rows at 1,500 rows/s puts the next write 0.1 s away, not one interval (0.01 s)."""
    store = Store()
    agg = ViolationAggregator(store.write, interval=0.01, rows_per_second=1500)
    agg.start()
    for _ in range(30):  # 0.3 s of a flood cycling through 150 names
        for n in range(150):
            agg.add(dns(f"n{n}.flood.invalid"))
        await asyncio.sleep(0.01)
    await agg.close(timeout=1)
    assert 2 <= len(store.batches) <= 6  # 30 at one write per interval
    assert sum(store.totals().values()) == 4500


async def test_memory_stays_bounded_whatever_the_operations() -> None:
    """Operations the agent picks (HTTP methods) cannot grow the keys past the limits either."""
    store = Store()
    agg = ViolationAggregator(store.write, max_resources=10)
    for n in range(5000):
        agg.add(Violation("network", f"h{n}.invalid:80", f"m{n}", "not allowed"))
    assert len(agg._pending) <= 10 + 16 + 1
    await agg.flush()
    assert sum(store.totals().values()) == 5000


async def test_closing_while_a_batch_is_being_written_loses_nothing() -> None:
    """The timer's write in flight when the session ends finishes; cancelling it lost the batch (a
    secret violation found at push time went missing that way)."""
    written: list[Aggregate] = []
    started, release = asyncio.Event(), asyncio.Event()

    async def slow_write(batch: list[Aggregate]) -> None:
        started.set()
        await release.wait()
        written.extend(batch)

    agg = ViolationAggregator(slow_write, interval=0.01)
    agg.start()
    agg.add(Violation("secret", "config/leak.txt", "push", "the stored API key of claude"))
    await started.wait()
    agg.add(dns("late.invalid"))
    closing = asyncio.create_task(agg.close(5.0))
    await asyncio.sleep(0.05)
    release.set()
    await closing
    assert sorted(a.resource for a in written) == ["config/leak.txt", "late.invalid:53"]
    assert agg.written == agg.total == 2
