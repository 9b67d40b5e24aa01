"""The session form, /sessions/new, on the real app and its own SQLite database: what it offers (installed agents,
"Authenticate..." for one without a credential, models from SESAME_API_URL or the built-in catalogue, the sandbox
default, the picker of installed repositories), the session it records (as POST /api/session does), its refusals
next to their fields, and the list's event stream."""

from __future__ import annotations

import html
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web as aioweb

from bot.catalog import CATALOG
from bot.cli import build_web_app
from bot.cli.wiring import open_services
from bot.models import State
from bot.sessions import NewSession
from tests.support.fake_github import FakeGitHub
from tests.support.gitrepo import make_repo
from tests.support.loopback import serve_on_loopback
from tests.test_api import RecordingQueue
from tests.webhooks.test_pages import csrf_of, page
from webhooks.app import QUEUE

NOWHERE = "http://127.0.0.1:9"  # SESAME_API_URL that refuses at once: the form falls back to its catalogue


def install_stub(data_dir: Path, agent: str) -> None:
    """An executable where `sesame agents install` puts the agent's CLI: the form then counts it installed."""
    binary = data_dir / "agents" / agent / "node_modules" / ".bin" / CATALOG[agent].binary
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\nexit 1\n")
    binary.chmod(0o755)


@pytest.fixture
async def form_web(settings_for: Any, aiohttp_client: Any, tmp_path: Path) -> AsyncIterator[Any]:
    settings = settings_for(BASE_URL="http://127.0.0.1:1", SESAME_API_URL=NOWHERE, API_REPOS="any",
                            AGENT_COMMAND="true", SESAME_DEFAULT_AGENT="claude")
    install_stub(settings.data_dir, "claude")
    services = await open_services(settings, auto_migrate=True)
    client = await aiohttp_client(build_web_app(services, RecordingQueue()))
    client.services, client.repo = services, make_repo(tmp_path / "origin")
    yield client
    await client.close()  # the server's handlers (an event stream) end before the database closes
    await services.close()


async def test_the_form_offers_installed_agents_and_authenticate_for_one_without_a_credential(form_web: Any) -> None:
    html = await page(form_web, "/sessions/new")
    claude = html[html.index('data-agent="claude"'):]
    claude = claude[: claude.index("</div>")]
    assert 'href="/settings/credentials#agent-claude"' in claude and "Authenticate..." in claude
    assert "disabled" in claude  # not choosable until it has a credential
    codex = html[html.index('data-agent="codex"'):]
    assert "not installed" in codex[: codex.index("</div>")]
    command = html[html.index('data-agent="command"'):]
    assert "checked" in command[: command.index("</div>")] and "Authenticate" not in command[: command.index("</div>")]
    assert 'id="sandbox" checked' in html and "Models from the built-in catalogue." in html
    await form_web.services.credentials.put("claude", "api_key", "sk-ant-stored-key-123456")
    html = await page(form_web, "/sessions/new")
    claude = html[html.index('data-agent="claude"'):]
    claude = claude[: claude.index("</div>")]
    assert "Authenticate" not in claude and "credential: stored" in claude and "disabled" not in claude
    assert '<option value="claude-sonnet-4-5"' in html  # the built-in catalogue, now that claude can run
    assert "sk-ant-stored-key-123456" not in html


async def test_models_come_from_the_sesame_api_when_it_answers(settings_for: Any, aiohttp_client: Any) -> None:
    asked: list[str] = []

    async def models(request: aioweb.Request) -> aioweb.Response:
        asked.append(request.path)
        return aioweb.json_response({"models": [{"id": "claude-from-api-1", "agent": "claude"},
                                                {"id": "<script>", "agent": "claude"}, {"id": "x", "agent": "nope"}]})

    upstream = aioweb.Application()
    upstream.router.add_get("/models", models)
    runner, url = await serve_on_loopback(upstream)
    settings = settings_for(BASE_URL="http://127.0.0.1:1", SESAME_API_URL=url, ANTHROPIC_API_KEY="sk-ant-env-key-98765")
    install_stub(settings.data_dir, "claude")
    services = await open_services(settings, auto_migrate=True)
    try:
        client = await aiohttp_client(build_web_app(services, RecordingQueue()))
        html = await page(client, "/sessions/new")
        await page(client, "/sessions/new")
        claude = html[html.index('data-agent="claude"'):]
        assert "checked" in claude[: claude.index("</div>")]  # the default agent, usable
        assert 'value="claude-from-api-1"' in html and "claude-sonnet-4-5" not in html and "<script>" not in html
        assert "Models from the Sesame API." in html and "credential: environment" in html
        assert asked == ["/models"]  # cached: the second page did not ask again
        assert "sk-ant-env-key-98765" not in html
    finally:
        await services.close()
        await runner.cleanup()


async def test_the_form_records_a_session_like_the_api_and_opens_its_page(form_web: Any) -> None:
    html = await page(form_web, "/sessions/new")
    key = re.search(r'name="key" value="([^"]+)"', html)
    assert key
    form = {"csrf": csrf_of(html), "key": key.group(1), "repo": str(form_web.repo), "prompt": "  add a README  ",
            "agent": "command", "model": "", "base": "main", "keep": "on"}  # sandbox unticked
    started = await form_web.post("/sessions/new", data=form, allow_redirects=False)
    assert started.status == 303, await started.text()
    sid = started.headers["Location"].split("/")[-1].split("?")[0]
    row = await form_web.services.sessions.get(sid)
    assert row is not None and row.prompt == "add a README" and row.repo == str(Path(form_web.repo).resolve())
    assert (row.agent, row.base_branch, row.source, row.requested_by) == ("command", "main", "api", "web")
    assert row.sandbox_security is False and row.keep_alive is True and row.state == "pending"
    queue = form_web.server.app[QUEUE]
    assert queue.ids == [sid]
    assert "Session started." in await page(form_web, started.headers["Location"])
    again = await form_web.post("/sessions/new", data=form, allow_redirects=False)  # a double click
    assert again.headers["Location"] == started.headers["Location"] and queue.ids == [sid]


async def test_refusals_are_shown_next_to_their_fields_with_the_values_kept(form_web: Any) -> None:
    html = await page(form_web, "/sessions/new")
    form = {"csrf": csrf_of(html), "repo": "relative/../path x", "prompt": " ", "agent": "nobody",
            "base": "-rf", "model": "bad model"}
    refused = await form_web.post("/sessions/new", data=form)
    text = await refused.text()
    assert refused.status == 400
    for field in ("repo", "prompt", "agent", "base", "model"):
        assert f'id="error-{field}"' in text, field
    assert "the prompt is empty" in text and "not a safe git ref name" in text
    assert 'value="relative/../path x"' in text
    assert await form_web.services.sessions.recent(5) == []
    no_token = await form_web.post("/sessions/new", data={**form, "csrf": ""})
    assert no_token.status == 403


async def test_with_the_app_the_form_picks_among_installed_repositories(
        settings_for: Any, aiohttp_client: Any, fake_github: FakeGitHub, tmp_path: Path) -> None:
    settings = settings_for(BASE_URL="http://127.0.0.1:1", SESAME_API_URL=NOWHERE, API_REPOS="installed",
                            AGENT_COMMAND="true", SESAME_DEFAULT_AGENT="command", **fake_github.settings_env())
    services = await open_services(settings, auto_migrate=True)
    try:
        await services.installations.upsert(9101, "acme-pick", repos=["acme-pick/widget", "acme-pick/gadget"])
        await services.installations.upsert(9102, "acme-gone", suspended=True, repos=["acme-gone/hidden"])
        client = await aiohttp_client(build_web_app(services, RecordingQueue()))
        html = await page(client, "/sessions/new")
        picker = html[html.index('<select name="repo"'): html.index("</select>", html.index('<select name="repo"'))]
        assert "<option>acme-pick/gadget</option>" in picker and "<option>acme-pick/widget</option>" in picker
        assert "acme-gone/hidden" not in picker
        form = {"csrf": csrf_of(html), "repo": "acme-pick/widget", "prompt": "fix it", "agent": "command"}
        started = await client.post("/sessions/new", data=form, allow_redirects=False)
        assert started.status == 303
        row = (await services.sessions.recent(1))[0]
        assert row.repo == "acme-pick/widget" and row.report == {"installation_id": 9101}
        local = await client.post("/sessions/new", data=form | {"repo": str(make_repo(tmp_path / "o"))})
        assert local.status == 400 and "does not start sessions on a local path" in await local.text()
        suspended = await client.post("/sessions/new", data=form | {"repo": "acme-gone/hidden"})
        assert suspended.status == 400 and "not installed on acme-gone/hidden" in await suspended.text()
    finally:
        await services.close()


async def test_the_list_stream_sends_changed_rows_and_counts(form_web: Any) -> None:
    services = form_web.services
    repo = f"/srv/list-{uuid.uuid4().hex[:8]}"  # the page's filter: only this test's sessions count as new
    row, _ = await services.sessions.create(NewSession(trigger_key=f"t:{uuid.uuid4()}", prompt="p", agent="command",
                                                       repo=repo, source="api"))
    assert (await form_web.get("/sessions/live?ids=../etc")).status == 400
    assert (await form_web.get("/sessions/live?new=&state=bogus")).status == 400
    listing = await page(form_web, f"/sessions?repo={repo}")
    found = re.search(r'id="new-sessions" data-live="([^"]*)"', listing)
    assert found is not None
    live = html.unescape(found.group(1))
    assert f"ids={row.id}" in live and "new=" in live and "repo=" in live
    response = await form_web.get(f"/sessions/live?{live}")
    assert response.headers["Content-Type"] == "text/event-stream"
    seen = b""
    while b"event: counts" not in seen:
        seen += await response.content.readany()
    assert f'"id": "{row.id}", "state": "pending"'.encode() in seen and b"event: new" not in seen
    await services.sessions.claim(row.id, "test")
    while b'"state": "processing"' not in seen:
        seen += await response.content.readany()
    await services.sessions.finish(row.id, State.COMPLETED)
    while b'"state": "completed"' not in seen:
        seen += await response.content.readany()
    # every row shown has ended, and the stream goes on: counts change, and a session created since is announced
    seen = b""
    later, _ = await services.sessions.create(NewSession(trigger_key=f"t:{uuid.uuid4()}", prompt="q",
                                                         agent="command", repo=repo, source="api"))
    while b"event: new" not in seen:
        chunk = await response.content.readany()
        assert chunk, f"the stream ended: {seen!r}"
        seen += chunk
    assert b'event: new\ndata: {"count": 1, "more": false}' in seen and b"event: end" not in seen
    response.close()
    # reloaded, the list shows the new session first
    assert later.id in (await page(form_web, f"/sessions?repo={repo}")).split(row.id)[0]


async def test_a_model_of_another_agent_is_refused_next_to_the_field_and_by_the_api(form_web: Any) -> None:
    """Without JavaScript the form still offers every agent's models: the server refuses one that is not the
    chosen agent's, next to the model field; POST /api/session does the same check (issue 15)."""
    await form_web.services.credentials.put("claude", "api_key", "sk-ant-test-model-check")
    html = await page(form_web, "/sessions/new")
    assert '<optgroup label="Claude Code" data-agent="claude">' in html  # live.js narrows the list by this
    form = {"csrf": csrf_of(html), "repo": str(form_web.repo), "prompt": "add a README", "agent": "claude",
            "model": "gpt-5.1-codex"}
    refused = await form_web.post("/sessions/new", data=form)
    text = await refused.text()
    assert refused.status == 400
    error = re.search(r'id="error-model"[^>]*>([^<]*)<', text)
    assert error is not None and "gpt-5.1-codex" in error.group(1) and "claude" in error.group(1)
    assert await form_web.services.sessions.recent(5) == []
    body = {"repo": str(form_web.repo), "prompt": "p", "agent": "claude", "model": "gpt-5.1-codex"}
    api = await form_web.post("/api/session", json=body)
    answer = await api.json()
    assert api.status == 400 and answer["field"] == "model"
    assert "'gpt-5.1-codex'" in answer["error"] and "(claude)" in answer["error"]
    assert await form_web.services.sessions.recent(5) == []
    ok = await form_web.post("/sessions/new", data={**form, "model": "claude-sonnet-4-5"}, allow_redirects=False)
    assert ok.status == 303
    started = await form_web.post("/api/session", json={**body, "model": "claude-opus-4-5"})
    assert started.status == 201 and (await started.json())["model"] == "claude-opus-4-5"
    # a model nobody lists (a vendor's newer one) is the agent's business, not refused here
    newer = await form_web.post("/api/session", json={**body, "model": "claude-opus-9-test"})
    assert newer.status == 201 and (await newer.json())["model"] == "claude-opus-9-test"
