"""The settings pages on the real app and its own SQLite database, GitHub played by the loopback fake: /settings
(every key, source, lock, when it applies, refusals next to the field), /settings/credentials (stored masked,
removed, a PAT's identity), /admin/sandbox (the lists validated, agents' own domains), their CSRF checks, and no
secret in any page's HTML."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.cli import build_web_app
from bot.cli.wiring import open_services
from bot.secret import reveal
from bot.settings import KEYS
from tests.support.fake_github import FakeGitHub
from tests.test_api import RecordingQueue
from tests.webhooks.test_pages import csrf_of, page

SECRETS = {"SLACK_BOT_TOKEN": "xoxb-page-secret-4242", "GITHUB_WEBHOOK_SECRET": "whsec-page-secret-777",
           "ANTHROPIC_API_KEY": "sk-ant-env-secret-31337"}


@pytest.fixture
async def settings_web(settings_for: Any, aiohttp_client: Any, fake_github: FakeGitHub) -> AsyncIterator[Any]:
    settings = settings_for(BASE_URL="http://127.0.0.1:1", SESAME_API_URL="http://127.0.0.1:9",
                            GITHUB_API_URL=fake_github.url, SANDBOX_MAX_PROCESSES="512", **SECRETS)
    services = await open_services(settings, auto_migrate=True)
    client = await aiohttp_client(build_web_app(services, RecordingQueue()))
    client.services, client.fake = services, fake_github
    yield client
    await services.close()


def row_of(html: str, name: str) -> str:
    start = html.index(f'<tr data-key="{name}"')
    return html[start: html.index("</tr>", start)]


async def test_settings_shows_every_key_with_its_source_lock_and_when_it_applies(settings_web: Any) -> None:
    html = await page(settings_web, "/settings")
    for key in KEYS:
        assert f'<tr data-key="{key.name}"' in html, key.name
    locked = row_of(html, "SANDBOX_MAX_PROCESSES")
    assert "disabled" in locked and "set by the environment variable SANDBOX_MAX_PROCESSES" in locked
    assert "environment (<code>SANDBOX_MAX_PROCESSES</code>)" in locked
    assert "disabled" not in row_of(html, "SESSION_TIMEOUT") and "default" in row_of(html, "SESSION_TIMEOUT")
    assert "after a restart" in row_of(html, "WORKER_CONCURRENCY") and "at once" in row_of(html, "SESSION_TIMEOUT")
    assert 'value="********"' in row_of(html, "SLACK_BOT_TOKEN")
    for secret in SECRETS.values():
        assert secret not in html


async def test_a_changed_setting_is_written_and_applies_and_a_locked_or_invalid_one_is_refused(
        settings_web: Any) -> None:
    services = settings_web.services
    token = csrf_of(await page(settings_web, "/settings"))
    saved = await settings_web.post("/settings", data={"csrf": token, "SESSION_TIMEOUT": "120",
                                                       "WORKER_CONCURRENCY": "8", "AI_MODEL": "gpt-5-nano"},
                                    allow_redirects=False)
    assert saved.status == 303 and saved.headers["Location"] == "/settings?done=saved"
    config = Path(services.settings.cwd or ".") / "config.json"
    assert json.loads(config.read_text())["sessions"]["timeoutSeconds"] == 120
    assert services.settings.SESSION_TIMEOUT == 120 and services.settings.WORKER_CONCURRENCY == 4  # after a restart
    html = await page(settings_web, "/settings?done=saved")
    assert "Settings saved." in html and "file" in row_of(html, "SESSION_TIMEOUT")
    assert "after a restart (the file holds 8)" in row_of(html, "WORKER_CONCURRENCY")
    assert "ai" not in json.loads(config.read_text())  # an unchanged field is not written

    before = config.read_text()
    locked = await settings_web.post("/settings", data={"csrf": token, "SANDBOX_MAX_PROCESSES": "2"})
    text = await locked.text()
    assert locked.status == 409 and 'id="error-SANDBOX_MAX_PROCESSES"' in text and "locked by the environment" in text
    invalid = await settings_web.post("/settings", data={"csrf": token, "SESSION_TIMEOUT": "soon"})
    text = await invalid.text()
    assert invalid.status == 400 and "is not a number" in row_of(text, "SESSION_TIMEOUT")
    assert 'value="soon"' in row_of(text, "SESSION_TIMEOUT")
    secret = await settings_web.post("/settings", data={"csrf": token, "SLACK_BOT_TOKEN": "xoxb-other"})
    assert secret.status == 400 and "can only be set in the environment" in await secret.text()
    assert config.read_text() == before and services.settings.SESSION_TIMEOUT == 120
    assert services.settings.SANDBOX_MAX_PROCESSES == 512


async def test_a_credential_with_invisible_or_control_characters_is_refused(settings_web: Any) -> None:
    token = csrf_of(await page(settings_web, "/settings/credentials"))
    for value in ("AIza-\u200bpasted", "AIza-pasted\x00", "AIza-\x1b[0mpasted", "AIza pasted", "AIza-\ufeffpasted"):
        refused = await settings_web.post("/settings/credentials/gemini", allow_redirects=False,
                                          data={"csrf": token, "kind": "api_key", "value": value})
        assert refused.status == 400 and "invisible characters" in await refused.text(), repr(value)
    assert await settings_web.services.credentials.get("gemini", "api_key") is None


async def test_a_credential_is_stored_masked_and_removed_and_a_pat_shows_its_identity(settings_web: Any) -> None:
    services, fake = settings_web.services, settings_web.fake
    html = await page(settings_web, "/settings/credentials")
    claude = html[html.index('id="agent-claude"'):]
    claude = claude[: claude.index("</section>")]
    assert "Subscription" in claude and claude.index("Subscription") < claude.index("API key")  # tabs, Subscription first
    assert "from the environment" in claude and "ANTHROPIC_API_KEY" in claude
    gemini = html[html.index('id="agent-gemini"'):]
    assert "Not connected" in gemini[: gemini.index("</section>")] and 'class="tabs"' not in gemini[
        : gemini.index("</section>")]  # API key only: the form without tabs
    tab = await page(settings_web, "/settings/credentials?agent=claude&tab=api_key")
    claude = tab[tab.index('id="agent-claude"'):]
    assert 'name="kind" value="api_key"' in claude[: claude.index("</section>")]

    token = csrf_of(html)
    stored = await settings_web.post("/settings/credentials/gemini", allow_redirects=False,
                                     data={"csrf": token, "kind": "api_key", "value": "AIza-stored-secret-5150"})
    assert stored.status == 303
    assert (await services.credentials.get("gemini", "api_key")).value == "AIza-stored-secret-5150"
    html = await page(settings_web, "/settings/credentials?done=stored")
    gemini = html[html.index('id="agent-gemini"'):]
    gemini = gemini[: gemini.index("</section>")]
    assert "Connected" in gemini and "<code>********</code>" in gemini and "AIza-stored-secret-5150" not in html
    wrong_kind = await settings_web.post("/settings/credentials/gemini",
                                         data={"csrf": token, "kind": "subscription", "value": "x"})
    assert wrong_kind.status == 400
    removed = await settings_web.post("/settings/credentials/gemini/remove", data={"csrf": token},
                                      allow_redirects=False)
    assert removed.status == 303 and await services.credentials.kinds("gemini") == []

    pat = fake.add_pat("octocat", name="The Octocat")
    refused = await settings_web.post("/settings/credentials/github",
                                      data={"csrf": token, "kind": "github_pat", "value": "ghp_not_a_real_one"})
    assert refused.status == 400 and "GitHub refused this token" in await refused.text()
    assert await services.credentials.kinds("github") == []
    ok = await settings_web.post("/settings/credentials/github", data={"csrf": token, "kind": "github_pat",
                                                                       "value": pat})
    html = await ok.text()
    assert ok.status == 200 and '<b id="pat-login">octocat</b>' in html and pat not in html


async def test_the_sandbox_page_validates_the_lists_and_shows_agents_own_domains(settings_web: Any) -> None:
    services = settings_web.services
    html = await page(settings_web, "/admin/sandbox")
    assert "<code>api.anthropic.com</code>" in html and "<code>*.githubcopilot.com</code>" in html
    assert 'name="SANDBOX_DENIED_DOMAINS"' in html and "api.anthropic.com" not in html.split('id="agent-domains"')[0]
    token = csrf_of(html)
    bad = await settings_web.post("/admin/sandbox", data={"csrf": token, "SANDBOX_SECURITY_ENABLED": "true",
                                                          "SANDBOX_ALLOWED_DOMAINS": "",
                                                          "SANDBOX_DENIED_DOMAINS": "ok.invalid\nnot a domain"})
    text = await bad.text()
    assert bad.status == 400 and 'id="error-SANDBOX_DENIED_DOMAINS"' in text and "not a domain pattern" in text
    assert "not a domain" in text and services.settings.SANDBOX_DENIED_DOMAINS == []
    good = await settings_web.post("/admin/sandbox", allow_redirects=False, data={
        "csrf": token, "SANDBOX_SECURITY_ENABLED": "true", "SANDBOX_ALLOWED_DOMAINS": "pypi.org\n*.pythonhosted.org",
        "SANDBOX_DENIED_DOMAINS": " evil.invalid \n\n*.tracker.invalid:443"})
    assert good.status == 303
    assert services.settings.SANDBOX_DENIED_DOMAINS == ["evil.invalid", "*.tracker.invalid:443"]
    assert services.settings.SANDBOX_ALLOWED_DOMAINS == ["pypi.org", "*.pythonhosted.org"]
    html = await page(settings_web, "/admin/sandbox?done=saved")
    assert "evil.invalid\n*.tracker.invalid:443</textarea>" in html


async def test_every_settings_form_refuses_a_post_without_the_token(settings_web: Any) -> None:
    await page(settings_web, "/settings")  # the cookie is set
    for path, data in (("/settings", {"SESSION_TIMEOUT": "7"}), ("/admin/sandbox", {"SANDBOX_DENIED_DOMAINS": "a.b"}),
                       ("/settings/credentials/gemini", {"kind": "api_key", "value": "AIza-x"}),
                       ("/settings/credentials/claude/remove", {})):
        refused = await settings_web.post(path, data=data)
        assert refused.status == 403, path
        cross = await settings_web.post(path, data=data | {"csrf": settings_web.session.cookie_jar.filter_cookies(
            settings_web.make_url("/"))["sesame_csrf"].value}, headers={"Origin": "https://evil.invalid"})
        assert cross.status == 403, path
    assert settings_web.services.settings.SESSION_TIMEOUT != 7 and await settings_web.services.credentials.kinds(
        "gemini") == []


async def test_no_page_shows_a_secret(settings_web: Any) -> None:
    services = settings_web.services
    await services.credentials.put("claude", "subscription", "sk-ant-oat-stored-secret-8080")
    await services.credentials.put("ai", "api_key", "sk-utility-stored-secret-9090")
    secrets = [*SECRETS.values(), "sk-ant-oat-stored-secret-8080", "sk-utility-stored-secret-9090",
               reveal(services.settings.ENCRYPTION_KEY)]
    for path in ("/", "/sessions", "/sessions/new", "/settings", "/settings/credentials", "/admin/sandbox"):
        html = await page(settings_web, path)
        leaked = [s for s in secrets if s and s in html]
        assert leaked == [], path
        assert re.findall(r"<script[^>]*>", html) == ['<script src="/static/live.js" defer>'], path


async def test_auth_password_guards_every_new_page(settings_for: Any, aiohttp_client: Any) -> None:
    services = await open_services(settings_for(AUTH_PASSWORD="hunter2-long", BASE_URL="http://127.0.0.1:1"),
                                   auto_migrate=True)
    try:
        client = await aiohttp_client(build_web_app(services, RecordingQueue()))
        for path in ("/sessions/new", "/settings", "/settings/credentials", "/admin", "/admin/sandbox",
                     "/static/sesame.css", "/favicon.ico"):
            assert (await client.get(path)).status == 401, path
        for path in ("/sessions/new", "/settings", "/admin/sandbox", "/settings/credentials/claude"):
            assert (await client.post(path, data={})).status == 401, path
    finally:
        await services.close()
