"""The web app's flows in a real browser (Debian's Chromium driven by Playwright, one browser for the module; never
`playwright install`), on a server that runs its sessions in-process with the `command` agent: start a session from
the form and follow its log live, Stop, a follow-up, the list following states over SSE; a setting changed and a
locked one refused; a credential added (masked) and removed; a denied domain refusing a new session's request in
its sandbox; a cross-site form refused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from playwright.async_api import async_playwright, expect

from bot.cli import build_web_app
from bot.cli.wiring import open_services
from bot.models import State
from bot.queue import InlineQueue
from bot.services import Services
from bot.sessions import NewSession
from runner.sandbox import check_sandbox_support
from runner.worker import run_session
from tests.conftest import own_database
from tests.support.gitrepo import make_repo
from tests.support.loopback import serve_on_loopback
from tests.webhooks.test_pages_new import install_stub

pytestmark = pytest.mark.asyncio(loop_scope="module")
CHROMIUM = "/usr/bin/chromium"
SANDBOX_OK, SANDBOX_DETAIL = check_sandbox_support()
# The command agent: a prompt saying fetch-blocked asks for a host through the sandbox's proxy, anything else counts slowly.
AGENT = ("sh -c 'case \"$SESAME_PROMPT\" in *fetch-blocked*) curl -sS -m 10 http://blocked.invalid/ ;; "
         "*) i=0; while [ $i -lt 600 ]; do i=$((i+1)); echo \"line $i\"; sleep 0.3; done ;; esac'")
SECRET = "sk-ant-browser-secret-2718"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Any]:
    async with async_playwright() as p:
        # --no-sandbox: the tests run as root, where Chromium's own sandbox refuses to start
        instance = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield instance
        finally:
            await instance.close()


@dataclass
class Site:
    url: str
    services: Services
    origin: Path


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL database of its own: the test runs sessions in-process (own_database), and SQLite's one writer
    lock made a Stop wait past a minute when other processes loaded the machine's two cores."""
    with own_database("sesame_pages") as url:
        yield url


@pytest_asyncio.fixture(loop_scope="module")
async def site(settings_for: Any, tmp_path: Path, pg_url: str) -> AsyncIterator[Site]:
    """The whole server on loopback: pages, API, and an in-process queue running sessions."""
    settings = settings_for(DATABASE_URL=pg_url, BASE_URL="http://127.0.0.1:1", SESAME_API_URL="http://127.0.0.1:9",
                            API_REPOS="any",
                            AGENT_COMMAND=AGENT, SESAME_DEFAULT_AGENT="command", SANDBOX_MAX_PROCESSES="512")
    install_stub(settings.data_dir, "claude")
    services = await open_services(settings, auto_migrate=True)
    queue = InlineQueue(lambda sid: run_session(services, sid))
    runner, url = await serve_on_loopback(build_web_app(services, queue), shutdown_timeout=1)
    try:
        yield Site(url.rstrip("/"), services, make_repo(tmp_path / "origin"))
    finally:
        for row in await services.sessions.recent(50):
            if not State(row.state).final:
                await services.sessions.request_stop(row.id)
        await asyncio.wait_for(queue.join(), 60)
        await queue.close()
        await runner.cleanup()
        await services.close()


async def new_page(browser: Any) -> tuple[Any, list[str]]:
    page = await browser.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    return page, problems


async def start(page: Any, site: Site, prompt: str, sandbox: bool) -> str:
    await page.goto(site.url + "/sessions/new")
    await page.fill("#repo", str(site.origin))
    await page.fill("#prompt", prompt)
    await page.check('input[name=agent][value="command"]')
    await (page.check("#sandbox") if sandbox else page.uncheck("#sandbox"))
    await page.click("#new-form button[type=submit]")
    await expect(page.locator(".notice")).to_have_text("Session started.")
    return str(page.url).split("/sessions/")[1].split("?")[0]


async def test_start_from_the_form_follow_the_log_stop_and_follow_up(browser: Any, site: Site) -> None:
    page, problems = await new_page(browser)
    sid = await start(page, site, "count slowly", sandbox=False)
    row = await site.services.sessions.get(sid)
    assert row is not None and row.sandbox_security is False and row.requested_by == "web"
    await expect(page.locator("#log li", has_text="line 3")).to_have_count(1, timeout=20_000)
    await expect(page.locator("#live-hint")).to_have_text("Following live.")
    await expect(page.locator("#log li", has_text="line 8")).to_have_count(1, timeout=30_000)  # grew, no reload

    listing, list_problems = await new_page(browser)
    await listing.goto(site.url + "/sessions")
    badge = listing.locator(f'tr[data-session="{sid}"] [data-state]')
    await expect(badge).to_have_text("processing")
    await page.click("#stop-form button")
    await expect(page.locator(".notice")).to_have_text("Stop requested.")
    await expect(page.locator("#state")).to_have_text("stopped", timeout=60_000)
    await expect(page.locator("#sandbox-state")).to_have_text("off (turned off for this session)")
    await expect(badge).to_have_text("stopped", timeout=10_000)  # the list followed it over SSE
    await expect(listing.locator('[data-count="stopped"]')).to_have_text("1")

    await page.fill("#follow-up-form textarea", "count again")
    await page.click("#follow-up-form button")
    await expect(page.locator(".notice")).to_contain_text("Follow-up queued")
    child = str(page.url).split("/sessions/")[1].split("?")[0]
    assert child != sid
    await expect(page.locator("#log li", has_text="line 2")).to_have_count(1, timeout=20_000)
    await page.click("#stop-form button")
    await expect(page.locator("#state")).to_have_text("stopped", timeout=60_000)
    follow = await site.services.sessions.get(child)
    assert follow is not None and follow.parent_id == sid and follow.prompt == "count again"
    assert problems == [] and list_problems == []


async def test_a_setting_changes_and_a_locked_one_is_refused(browser: Any, site: Site) -> None:
    page, problems = await new_page(browser)
    await page.goto(site.url + "/settings")
    await page.fill("#f-SESSION_TIMEOUT", "900")
    await page.click("#settings-form button[type=submit]")
    await expect(page.locator(".notice")).to_have_text("Settings saved.")
    assert site.services.settings.SESSION_TIMEOUT == 900
    await expect(page.locator('tr[data-key="SESSION_TIMEOUT"] [data-source]')).to_have_text("file")
    locked = page.locator("#f-SANDBOX_MAX_PROCESSES")
    await expect(locked).to_be_disabled()
    await expect(page.locator('tr[data-key="SANDBOX_MAX_PROCESSES"] [data-lock]')).to_contain_text(
        "set by the environment variable SANDBOX_MAX_PROCESSES")
    # a person who enables the field anyway is still refused by the server
    await locked.evaluate("field => { field.disabled = false; field.value = '3'; }")
    await page.click("#settings-form button[type=submit]")
    await expect(page.locator("#error-SANDBOX_MAX_PROCESSES")).to_contain_text("locked by the environment")
    assert site.services.settings.SANDBOX_MAX_PROCESSES == 512
    assert [p for p in problems if "409 (Conflict)" not in p] == []  # the browser logs the refusal's status


async def test_a_credential_is_added_masked_and_removed(browser: Any, site: Site) -> None:
    page, problems = await new_page(browser)
    await page.goto(site.url + "/sessions/new")
    await page.locator('[data-agent="claude"] a.authenticate').click()  # installed, without a credential
    await expect(page).to_have_url(site.url + "/settings/credentials#agent-claude")
    section = page.locator("#agent-claude")
    await expect(section.locator("[data-status]")).to_have_text("Not connected")
    await section.locator(".tabs a", has_text="API key").click()
    await page.fill("#value-claude", SECRET)
    await page.locator("#agent-claude form.store button").click()
    await expect(page.locator(".notice")).to_have_text("Credential stored.")
    await expect(section.locator("[data-status]")).to_have_text("Connected")
    await expect(section).to_contain_text("API key ********")
    assert SECRET not in await page.content()
    assert (await site.services.credentials.get("claude", "api_key")).value == SECRET  # type: ignore[union-attr]
    await section.locator("form.remove button").click()
    await expect(page.locator(".notice")).to_have_text("Credential removed.")
    await expect(section.locator("[data-status]")).to_have_text("Not connected")
    assert await site.services.credentials.kinds("claude") == []
    assert problems == []


@pytest.mark.skipif(not SANDBOX_OK, reason=f"bubblewrap sandbox unavailable here: {SANDBOX_DETAIL}")
async def test_a_denied_domain_blocks_a_new_sessions_request(browser: Any, site: Site) -> None:
    page, problems = await new_page(browser)
    await page.goto(site.url + "/admin/sandbox")
    await expect(page.locator("#agent-domains")).to_contain_text("api.anthropic.com")
    # allowed and denied: only the deny list can refuse it (deny wins)
    await page.fill("#f-SANDBOX_ALLOWED_DOMAINS", "blocked.invalid")
    await page.fill("#f-SANDBOX_DENIED_DOMAINS", "blocked.invalid\nnot a domain")
    await page.click("#sandbox-form button[type=submit]")
    await expect(page.locator("#error-SANDBOX_DENIED_DOMAINS")).to_contain_text("not a domain pattern")
    await page.fill("#f-SANDBOX_DENIED_DOMAINS", "blocked.invalid")
    await page.click("#sandbox-form button[type=submit]")
    await expect(page.locator(".notice")).to_have_text("Sandbox settings saved.")

    await start(page, site, "fetch-blocked", sandbox=True)
    await expect(page.locator("#state")).not_to_have_text("processing", timeout=60_000)
    await expect(page.locator("#state")).not_to_have_text("pending")
    violation = page.locator("#violations tbody tr")
    await expect(violation).to_contain_text("blocked.invalid:80")
    await expect(violation).to_contain_text("denied by the deny list")
    await expect(page.locator("#sandbox-state")).to_have_text("on, applied")  # what applied, not only what was asked
    assert [p for p in problems if "400 (Bad Request)" not in p] == []  # the malformed pattern's refusal


async def test_a_cross_site_form_without_the_token_is_refused(browser: Any, site: Site) -> None:
    row, _ = await site.services.sessions.create(NewSession(
        trigger_key="t:cross-site", prompt="keep running", agent="command", repo=str(site.origin), source="api"))
    await site.services.sessions.claim(row.id, "test")
    page, _ = await new_page(browser)
    await page.goto(site.url + "/sessions")  # the visitor has our cookie (and would have Basic auth)
    evil = web.Application()
    target = site.url + f"/sessions/{row.id}/stop"

    async def attack(request: web.Request) -> web.Response:
        return web.Response(content_type="text/html", text=f'<form method="post" action="{target}" id="f">'
                                                          '<input name="csrf" value="guess"><button>go</button></form>')

    evil.router.add_get("/", attack)
    runner, evil_url = await serve_on_loopback(evil)
    try:
        await page.goto(evil_url.replace("127.0.0.1", "localhost"))  # another site
        async with page.expect_response(target) as answer:
            await page.click("#f button")
        assert (await answer.value).status == 403
        await expect(page.locator("main")).to_contain_text("This form was refused")
    finally:
        await runner.cleanup()
    stopped = await site.services.sessions.get(row.id)
    assert stopped is not None and not stopped.stop_requested
    await site.services.sessions.finish(row.id, State.STOPPED)
