"""REST API: sessions, SSE replay, settings locks, credentials, Basic auth, bad input."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.cli import build_web_app
from bot.cli.wiring import open_services
from bot.services import Services
from bot.violation_counts import ViolationCount


class RecordingQueue:
    """A queue that only remembers what was enqueued (intake tests need no worker)."""

    kind = "recording"
    posts_queued_comments = False  # as the in-process queue: the web process posts them

    def __init__(self) -> None:
        self.ids: list[str] = []

    async def enqueue(self, session_id: str, attempt: int = 1, *, queued_comment: bool = False) -> bool:
        assert not queued_comment, "a queue that does not post queued comments is never handed one"
        self.ids.append(session_id)
        return True

    async def health(self) -> dict[str, Any]:
        return {"kind": self.kind, "ok": True}

    async def close(self) -> None:
        pass


@pytest.fixture
async def api(services: Services, aiohttp_client, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A client of the app on a recording queue; `api.repo` is a real git repository it may use."""
    from tests.support.gitrepo import git

    repo = tmp_path / "repo"
    repo.mkdir()
    git("init", "--quiet", "--bare", cwd=repo)
    services.settings.values["API_REPOS"] = "local"
    queue = RecordingQueue()
    client = await aiohttp_client(build_web_app(services, queue))
    client.queue, client.repo = queue, str(repo)
    return client


async def test_create_get_list_and_idempotency(api) -> None:  # type: ignore[no-untyped-def]
    body = {"repo": api.repo, "prompt": "fix the flaky retry test", "agent": "command"}
    first = await api.post("/api/session", json=body, headers={"Idempotency-Key": "abc-1"})
    assert first.status == 201
    created = await first.json()
    again = await api.post("/api/session", json=body, headers={"Idempotency-Key": "abc-1"})
    assert again.status == 200 and (await again.json())["id"] == created["id"]
    assert api.queue.ids == [created["id"]]
    got = await (await api.get(f"/api/session/{created['id']}")).json()
    assert got["state"] == "pending" and got["title"] == "fix the flaky retry test"
    listing = await (await api.get("/api/session?limit=200")).json()
    assert created["id"] in [s["id"] for s in listing["sessions"]]


@pytest.mark.parametrize("payload,needle", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "JSON object"),
    (json.dumps({"prompt": "x"}).encode(), "repo is required"),
    (json.dumps({"repo": "r"}).encode(), "prompt is required"),
    (json.dumps({"repo": "r", "prompt": "p", "agent": "rm -rf"}).encode(), "unknown agent"),
    (json.dumps({"repo": "r", "prompt": "p", "baseBranch": "--upload-pack=x"}).encode(), "safe git ref"),
    (json.dumps({"repo": "r", "prompt": "p", "baseBranch": "a..b"}).encode(), "safe git ref"),
    (json.dumps({"repo": "r", "prompt": 42}).encode(), "prompt must be text"),
    (json.dumps({"repo": "r", "prompt": "p", "budget": -1}).encode(), "budget must be a number of USD"),
    (json.dumps({"repo": "r", "prompt": "p", "budget": "2.50"}).encode(), "budget must be a number of USD"),
    (json.dumps({"repo": "r", "prompt": "p", "budget": True}).encode(), "budget must be a number of USD"),
    pytest.param(b'{"repo": "r", "prompt": "fix \\ud800 this"}', "lone surrogate", id="lone-surrogate"),
    pytest.param(b'{"repo": "r", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deep", id="deep"),
])
async def test_bad_input_is_a_clear_400(api, payload: bytes, needle: str) -> None:  # type: ignore[no-untyped-def]
    response = await api.post("/api/session", data=payload, headers={"Content-Type": "application/json"})
    assert response.status == 400
    assert needle in (await response.json())["error"]
    assert api.queue.ids == []


async def test_stop_follow_up_and_delete(api) -> None:  # type: ignore[no-untyped-def]
    created = await (await api.post("/api/session", json={"repo": api.repo, "prompt": "p", "agent": "command"})).json()
    busy = await api.delete(f"/api/session/{created['id']}")
    assert busy.status == 409
    follow = await api.patch(f"/api/session/{created['id']}", json={"message": "and the docs"})
    child = await follow.json()
    assert follow.status == 201 and child["parentId"] == created["id"]
    stopped = await (await api.patch(f"/api/session/{created['id']}", json={"action": "stop"})).json()
    assert stopped["state"] == "stopped"
    assert (await api.delete(f"/api/session/{created['id']}")).status == 409  # the child still references it
    assert (await api.patch(f"/api/session/{child['id']}", json={"action": "stop"})).status == 200
    assert (await api.delete(f"/api/session/{child['id']}")).status == 204
    assert (await api.get(f"/api/session/{child['id']}")).status == 404


async def test_events_replay_from_last_event_id(api, services: Services) -> None:  # type: ignore[no-untyped-def]
    created = await (await api.post("/api/session", json={"repo": api.repo, "prompt": "p", "agent": "command"})).json()
    for n in range(3):
        await services.sessions.add_event(created["id"], "message", {"summary": f"line {n}"})
    await services.sessions.add_violation(created["id"], "network", "evil.invalid:443", "connect")
    await services.sessions.request_stop(created["id"])
    response = await api.get(f"/api/session/{created['id']}/events", headers={"Last-Event-ID": "2"})
    assert response.headers["Content-Type"].startswith("text/event-stream")
    text = await response.text()
    ids = [int(line[4:]) for line in text.splitlines() if line.startswith("id: ")]
    assert ids == [3, 4, 5, 6]
    assert "event: violation" in text and "evil.invalid:443" in text
    assert text.rstrip().endswith("data: {}")


async def test_violations_endpoint_shows_counts_and_times(api, services: Services) -> None:  # type: ignore[no-untyped-def]
    created = await (await api.post("/api/session", json={"repo": api.repo, "prompt": "p", "agent": "command"})).json()
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    await services.sessions.add_violations(created["id"], [
        ViolationCount("network", "flood.invalid:53", "dns", "no DNS", 20_000, t0, t0 + timedelta(seconds=9))])
    await services.sessions.add_violation(created["id"], "filesystem", "/etc/shadow", "read", "hidden")
    body = await (await api.get(f"/api/session/{created['id']}/violations")).json()
    assert body["total"] == 20_001
    assert body["violations"][0] == {"kind": "network", "resource": "flood.invalid:53", "operation": "dns",
                                     "reason": "no DNS", "count": 20_000, "firstAt": "2026-01-01T00:00:00+00:00",
                                     "lastAt": "2026-01-01T00:00:09+00:00"}
    assert body["violations"][1]["count"] == 1
    assert (await api.get("/api/session/nope/violations")).status == 404
    for bad in ("nope%00", f"{created['id']}%00"):  # a NUL PostgreSQL cannot compare: still no such session
        for path in (f"/api/session/{bad}", f"/api/session/{bad}/violations", f"/api/session/{bad}/events"):
            response = await api.get(path)
            assert response.status == 404 and "no such session" in await response.text(), path
    await services.sessions.request_stop(created["id"])  # the stream ends with the session
    events = await (await api.get(f"/api/session/{created['id']}/events")).text()
    assert '"count": 20000' in events


async def test_session_page_escapes_user_text(api) -> None:  # type: ignore[no-untyped-def]
    created = await (await api.post("/api/session", json={
        "repo": api.repo, "prompt": "<script>alert(1)</script>", "agent": "command"})).json()
    page = await api.get(f"/sessions/{created['id']}")
    text = await page.text()
    assert page.status == 200 and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "<script>alert(1)" not in text


async def test_credentials_are_never_returned(api) -> None:  # type: ignore[no-untyped-def]
    put = await api.put("/api/credentials/claude", json={"kind": "api_key", "value": "sk-ant-secret-value"})
    assert put.status == 200
    got = await api.get("/api/credentials/claude")
    text = await got.text()
    assert "sk-ant-secret-value" not in text and json.loads(text)["stored"] == ["api_key"]
    assert (await (await api.delete("/api/credentials/claude")).json())["removed"] == 1
    bad = await api.put("/api/credentials/claude", json={"kind": "root", "value": "x"})
    assert bad.status == 400


async def test_settings_api_marks_and_refuses_locked_keys(tmp_path: Path, aiohttp_client,  # type: ignore[no-untyped-def]
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from bot.settings import load_settings

    (tmp_path / "config.yaml").write_text("ai:\n  model: from-file\n")
    monkeypatch.chdir(tmp_path)
    env = {"SESAME_DATA_DIR": str(tmp_path / "d"), "ENCRYPTION_KEY": "ab" * 32, "AI_BASE_URL": "http://env.invalid"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings(env=env, cwd=tmp_path)
    services = await open_services(settings)
    try:
        client = await aiohttp_client(build_web_app(services, RecordingQueue()))
        body = await (await client.get("/api/settings")).json()
        assert body["settings"]["AI_BASE_URL"]["locked"] is True
        assert body["settings"]["AI_MODEL"] == {**body["settings"]["AI_MODEL"], "value": "from-file",
                                                "locked": False}
        ok = await client.put("/api/settings", json={"AI_MODEL": "new-model"})
        assert ok.status == 200
        assert "model: new-model" in (tmp_path / "config.yaml").read_text()
        locked = await client.put("/api/settings", json={"AI_BASE_URL": "http://other.invalid"})
        assert locked.status == 409 and "locked" in (await locked.json())["error"]
    finally:
        await services.close()


async def test_basic_auth_guards_api_but_not_webhooks_or_health(tmp_path: Path, aiohttp_client) -> None:  # type: ignore[no-untyped-def]
    from bot.settings import load_settings

    settings = load_settings(env={"SESAME_DATA_DIR": str(tmp_path / "d"), "ENCRYPTION_KEY": "ab" * 32,
                                  "AUTH_PASSWORD": "hunter2-long"}, cwd=tmp_path)
    services = await open_services(settings)
    try:
        client = await aiohttp_client(build_web_app(services, RecordingQueue()))
        assert (await client.get("/api/session")).status == 401
        wrong = base64.b64encode(b"any:wrong").decode()
        assert (await client.get("/api/session", headers={"Authorization": f"Basic {wrong}"})).status == 401
        right = base64.b64encode(b"anyone:hunter2-long").decode()
        assert (await client.get("/api/session", headers={"Authorization": f"Basic {right}"})).status == 200
        assert (await client.get("/api/health")).status == 200
    finally:
        await services.close()


async def test_events_follow_live_until_the_session_ends(api, services: Services) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    from bot.models import State

    created = await (await api.post("/api/session", json={"repo": api.repo, "prompt": "p", "agent": "command"})).json()
    response = await api.get(f"/api/session/{created['id']}/events")
    received: list[str] = []

    async def read() -> None:
        async for line in response.content:
            received.append(line.decode())

    reader = asyncio.create_task(read())
    await asyncio.sleep(0.3)
    await services.sessions.add_event(created["id"], "message", {"summary": "live line"})
    await services.sessions.claim(created["id"], "test")
    await services.sessions.finish(created["id"], State.COMPLETED)
    await asyncio.wait_for(reader, 10)
    text = "".join(received)
    assert "live line" in text and '"state": "completed"' in text
    assert text.rstrip().endswith("data: {}")


async def test_sesame_api_is_proxied(tmp_path: Path, aiohttp_client) -> None:  # type: ignore[no-untyped-def]
    from aiohttp import web

    from bot.settings import load_settings
    from tests.support.loopback import serve_on_loopback

    seen: list[str] = []

    async def models(request: web.Request) -> web.Response:
        seen.append(request.path_qs)
        return web.json_response({"models": [{"id": "claude-sonnet-4-5", "agent": "claude"}]})

    upstream = web.Application()
    upstream.router.add_get("/models", models)
    runner, url = await serve_on_loopback(upstream)
    settings = load_settings(env={"SESAME_DATA_DIR": str(tmp_path / "d"), "ENCRYPTION_KEY": "ab" * 32,
                                  "SESAME_API_URL": url}, cwd=tmp_path)
    services = await open_services(settings)
    try:
        client = await aiohttp_client(build_web_app(services, RecordingQueue()))
        got = await client.get("/api/sesame/models?agent=claude")
        assert got.status == 200 and (await got.json())["models"][0]["id"] == "claude-sonnet-4-5"
        assert seen == ["/models?agent=claude"]
        assert (await client.get("/api/sesame/..%2F..%2Fetc")).status in (400, 404)
        missing = await client.get("/api/sesame/nothing-here")  # aiohttp's 404 page is text, not JSON
        assert missing.status == 502 and "other than JSON" in (await missing.json())["error"]
        await runner.cleanup()
        down = await client.get("/api/sesame/models")
        assert down.status == 502 and "unreachable" in (await down.json())["error"]
    finally:
        await services.close()
