"""bot/intake_store.py on PostgreSQL: the one-statement lookup, the insert, and batched reports."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from bot.services import Services, open_services
from bot.sessions import NewSession


@pytest.fixture
async def pg_services(pg_database: str, settings_for) -> AsyncIterator[Services]:  # type: ignore[no-untyped-def]
    services = await open_services(settings_for(DATABASE_URL=pg_database, BASE_URL="http://127.0.0.1:1"),
                                   auto_migrate=True)
    yield services
    await services.close()


def new(repo: str, issue: int, branch: str | None = None) -> NewSession:
    return NewSession(trigger_key=f"github:{uuid.uuid4()}", prompt="fix it", agent="command", repo=repo,
                      source="github", issue_number=issue, branch=branch, report={"issue_number": issue})


async def test_lookup_finds_the_redelivery_the_recorded_delivery_and_the_parent(pg_services: Services) -> None:
    sessions, repo = pg_services.sessions, f"acme/store-{uuid.uuid4().hex[:8]}"
    first = new(repo, 7, branch="sesame/first")
    row, created = await sessions.create(first)
    assert created
    again, created_again = await sessions.create(first)  # the same trigger key: the existing row
    assert not created_again and again.id == row.id
    found = await sessions.intake_lookup(first.trigger_key, "unseen", repo, 7)
    assert found.existing == row.id and not found.seen
    assert found.parent is not None and (found.parent.id, found.parent.branch) == (row.id, "sesame/first")
    delivery = str(uuid.uuid4())
    assert await sessions.record_delivery(delivery, "github", "issue_comment")
    other = await sessions.intake_lookup(f"github:{uuid.uuid4()}", delivery, repo, 8)
    assert other.existing is None and other.seen and other.parent is None
    await sessions.delete(row.id)


async def test_reports_written_together_each_land_on_its_own_row(pg_services: Services) -> None:
    sessions, repo = pg_services.sessions, f"acme/store-{uuid.uuid4().hex[:8]}"
    rows = [(await sessions.create(new(repo, i)))[0] for i in range(12)]
    await asyncio.gather(*(sessions.set_intake_report(r.id, {"issue_number": i, "comment_id": 1000 + i})
                           for i, r in enumerate(rows)))
    for i, r in enumerate(rows):
        stored = await sessions.get(r.id)
        assert stored is not None and stored.report == {"issue_number": i, "comment_id": 1000 + i}
        await sessions.delete(r.id)


async def test_a_cache_entry_expiring_under_load_is_loaded_once() -> None:
    from bot.services import TTLCache

    cache: TTLCache[int, bool] = TTLCache()
    loads = 0

    async def load() -> bool:
        nonlocal loads
        loads += 1
        await asyncio.sleep(0.05)
        return True

    assert all(await asyncio.gather(*(cache.get(1, 10, load) for _ in range(50))))
    assert loads == 1 and not cache.loading
    assert await cache.get(1, 10, load) and loads == 1
