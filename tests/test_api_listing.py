"""Listing sessions: checked filters, agent and source, limit bounds, cursor pages; Idempotency-Key reuse; health."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest

from bot.models import State
from bot.queue import InlineQueue
from bot.services import Services
from bot.sessions import NewSession
from tests.test_api import api  # noqa: F401  (the fixture)


async def listing(api: Any, query: str) -> tuple[int, dict[str, Any]]:
    response = await api.get(f"/api/session{query}")
    return response.status, await response.json()


async def start(api: Any, prompt: str, **extra: Any) -> dict[str, Any]:
    response = await api.post("/api/session", json={"repo": api.repo, "prompt": prompt, "agent": "command", **extra})
    assert response.status == 201, await response.text()
    body: dict[str, Any] = await response.json()
    return body


@pytest.mark.parametrize("query,needles", [
    ("?agnet=claude", ["agnet", "state, agent, source, limit, cursor"]),
    ("?state=bogus", ["state", "pending, processing, completed, error, stopped"]),
    ("?agent=gpt", ["agent", "claude", "command"]),
    ("?source=email", ["source", "github, slack, api, cli"]),
    ("?limit=0", ["limit", "1 to 200"]),
    ("?limit=-1", ["limit", "1 to 200"]),
    ("?limit=201", ["limit", "1 to 200"]),
    ("?limit=lots", ["limit", "1 to 200"]),
    ("?cursor=not-a-cursor", ["cursor"]),
    # a cursor naming a lone surrogate as its last id, and one nested deeper than json decodes (500s before)
    pytest.param("?cursor=" + base64.urlsafe_b64encode(b'["2026-01-01T00:00:00", "\\ud800"]').decode(), ["cursor"],
                 id="cursor-lone-surrogate"),
    pytest.param("?cursor=" + base64.urlsafe_b64encode(b'["2026-01-01T00:00:00", "a\\u0000b"]').decode(), ["cursor"],
                 id="cursor-nul"),
    pytest.param("?cursor=" + base64.urlsafe_b64encode(b"[" * 3000 + b"]" * 3000).decode(), ["cursor"],
                 id="cursor-too-deep"),
])
async def test_bad_filters_are_a_400_naming_the_filter_and_its_values(api: Any, query: str,
                                                                      needles: list[str]) -> None:
    status, body = await listing(api, query)
    assert status == 400
    for needle in needles:
        assert needle in body["error"]


async def test_agent_and_source_filters(api: Any, services: Services) -> None:
    mine = await start(api, "from the api")
    other, _ = await services.sessions.create(NewSession(trigger_key="cli:x", prompt="from the terminal",
                                                         agent="claude", repo=api.repo, source="cli"))
    # PostgreSQL's database is shared by the run's tests: every row must match, ours must be there
    _, by_agent = await listing(api, "?agent=command&limit=200")
    assert {s["agent"] for s in by_agent["sessions"]} == {"command"}
    assert mine["id"] in [s["id"] for s in by_agent["sessions"]] and other.id not in by_agent["sessions"]
    _, by_source = await listing(api, "?source=cli&limit=200")
    assert {s["source"] for s in by_source["sessions"]} == {"cli"}
    assert other.id in [s["id"] for s in by_source["sessions"]]
    _, both = await listing(api, "?source=cli&agent=command&limit=200")
    assert {(s["source"], s["agent"]) for s in both["sessions"]} <= {("cli", "command")}
    assert other.id not in [s["id"] for s in both["sessions"]]
    _, pending = await listing(api, "?state=pending&limit=200")
    assert {s["state"] for s in pending["sessions"]} == {"pending"}
    assert {mine["id"], other.id} <= {s["id"] for s in pending["sessions"]}


async def test_cursor_pages_are_newest_first_and_stable_under_inserts(api: Any) -> None:
    # agent=amp: PostgreSQL's database is shared by the run's tests, and none of the others starts amp
    made = [(await start(api, f"session {n}", agent="amp"))["id"] for n in range(7)]
    status, first = await listing(api, "?limit=3&agent=amp")
    assert status == 200 and [s["id"] for s in first["sessions"]] == made[::-1][:3]
    newer = (await start(api, "made while paging", agent="amp"))["id"]
    seen = [s["id"] for s in first["sessions"]]
    cursor = first["cursor"]
    while cursor:
        status, page = await listing(api, f"?limit=3&agent=amp&cursor={cursor}")
        assert status == 200
        seen += [s["id"] for s in page["sessions"]]
        cursor = page["cursor"]
    assert seen == made[::-1] and newer not in seen
    _, again = await listing(api, "?limit=200&agent=amp")
    assert [s["id"] for s in again["sessions"]] == [newer, *made[::-1]] and again["cursor"] is None


async def test_an_idempotency_key_reused_with_another_body_is_a_422(api: Any) -> None:
    body = {"repo": api.repo, "prompt": "fix it", "agent": "command"}
    first = await api.post("/api/session", json=body, headers={"Idempotency-Key": "k-1"})
    assert first.status == 201
    created = await first.json()
    same = await api.post("/api/session", json={**body, "prompt": "  fix it "}, headers={"Idempotency-Key": "k-1"})
    assert same.status == 200 and (await same.json())["id"] == created["id"]
    other = await api.post("/api/session", json={**body, "prompt": "do something else"},
                           headers={"Idempotency-Key": "k-1"})
    assert other.status == 422
    answer = await other.json()
    assert "Idempotency-Key" in answer["error"] and created["id"] in answer["error"]
    follow = await api.patch(f"/api/session/{created['id']}", json={"message": "more"}, headers={"Idempotency-Key": "k-1"})
    assert follow.status == 422
    assert api.queue.ids == [created["id"]]


async def test_health_counts_queued_and_running_apart(api: Any, services: Services) -> None:
    before = (await (await api.get("/api/health")).json())["sessions"]  # PostgreSQL's is shared by the run
    running = await start(api, "one")
    await start(api, "two")
    await services.sessions.claim(running["id"], "test")
    after = (await (await api.get("/api/health")).json())["sessions"]
    # ended, so no sweeper of a later test on the shared database finds a lapsed lease of ours
    await services.sessions.finish(running["id"], State.COMPLETED)
    assert after == {"queued": before["queued"] + 1, "running": before["running"] + 1}


async def test_the_inline_queue_reports_waiting_sessions_as_queued() -> None:
    release = asyncio.Event()

    async def job(_session_id: str) -> None:
        await release.wait()

    queue = InlineQueue(job, concurrency=1)
    for n in range(3):
        await queue.enqueue(f"s{n}")
    await asyncio.sleep(0.05)
    health = await queue.health()
    assert health["running"] == 1 and health["queued"] == 2
    release.set()
    await queue.join()
    assert (await queue.health())["running"] == 0


@pytest.mark.parametrize("case", ["long-key", "long-model", "nul", "last-event-id", "superscript-limit"])
async def test_input_beyond_the_columns_is_a_400_not_a_database_error(api: Any, case: str) -> None:
    body = {"repo": api.repo, "prompt": "p", "agent": "command"}
    if case == "long-key":
        response = await api.post("/api/session", json=body, headers={"Idempotency-Key": "k" * 300})
    elif case == "long-model":
        response = await api.post("/api/session", json={**body, "model": "m" * 200})
    elif case == "nul":
        response = await api.post("/api/session", json={**body, "prompt": "fix\x00it"})
    elif case == "last-event-id":
        created = await start(api, "p")
        response = await api.get(f"/api/session/{created['id']}/events", headers={"Last-Event-ID": "9" * 12})
    else:
        response = await api.get("/api/session?limit=\u00b2")
    assert response.status == 400
    assert (await response.json())["error"]
