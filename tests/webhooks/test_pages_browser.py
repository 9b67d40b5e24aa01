"""The pages in a real browser (Debian's Chromium driven by Playwright; scripts/test.sh installs both, never
`playwright install`): the list loads, a running session's log grows live under the page's CSP, Stop is a form
that works with the browser's own cookie, and the page shows the end (Delete) when the session ends."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from playwright.async_api import async_playwright, expect

from bot.models import State
from bot.services import Services
from tests.webhooks.test_pages import make, services, web  # noqa: F401  (fixtures)
from tests.webhooks.test_pages_new import form_web  # noqa: F401  (fixture)

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with async_playwright() as p:
        # --no-sandbox: the tests run as root, where Chromium's own sandbox refuses to start
        instance = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield instance
        finally:
            await instance.close()


async def test_list_and_live_session_page_in_chromium(web: Any, services: Services, browser: Any) -> None:
    done = await make(services, "an ended <b>session</b>")
    await services.sessions.request_stop(done)
    live = await make(services, "a running session")
    await services.sessions.claim(live, "test")
    await services.sessions.add_event(live, "message", {"summary": "first line"})
    page = await browser.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    base = str(web.make_url("/")).rstrip("/")

    await page.goto(base + "/sessions")
    await expect(page.locator(f'tr[data-session="{live}"] [data-state]')).to_have_text("processing")
    await expect(page.locator(f'tr[data-session="{done}"] a')).to_have_text("an ended <b>session</b>")
    await page.click(f'tr[data-session="{live}"] a')
    await expect(page.locator("#prompt")).to_have_text("a running session")
    await expect(page.locator("#live-hint")).to_have_text("Following live.")  # live.js ran under the CSP
    await services.sessions.add_event(live, "tool_call", {"summary": "Bash: make test <now>"})
    await expect(page.locator("#log li").last).to_contain_text("Bash: make test <now>", timeout=10_000)

    await page.click("#stop-form button")
    await expect(page.locator(".notice")).to_have_text("Stop requested.")
    row = await services.sessions.get(live)
    assert row is not None and row.stop_requested
    await services.sessions.finish(live, State.STOPPED)
    await expect(page.locator("#delete-form")).to_be_visible(timeout=10_000)  # reloaded at the stream's end
    await expect(page.locator("#state")).to_have_text("stopped")
    assert problems == []


async def test_the_list_announces_sessions_created_after_it_loaded(web: Any, services: Services,
                                                                   browser: Any) -> None:
    """Every row shown has ended, and the list still follows: the counts, and a link to sessions created since."""
    ended = await make(services, "an ended session")
    await services.sessions.request_stop(ended)
    await services.sessions.finish(ended, State.STOPPED)
    page = await browser.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    await page.goto(str(web.make_url("/sessions")))
    await expect(page.locator("body")).to_have_attribute("data-live", "on")
    await expect(page.locator("#new-sessions")).to_be_hidden()
    pending = int(await page.locator('[data-count="pending"]').text_content() or "0")
    fresh = await make(services, "created after the page loaded")
    await expect(page.locator("#new-link")).to_have_text("1 new session: show", timeout=10_000)
    await expect(page.locator('[data-count="pending"]')).to_have_text(str(pending + 1))
    await page.click("#new-link")
    await expect(page.locator("tr[data-session]").first).to_have_attribute("data-session", fresh)
    assert problems == []


async def test_the_model_list_follows_the_chosen_agent(form_web: Any, browser: Any) -> None:
    """live.js offers only the chosen agent's models, and drops a model chosen for another agent."""
    await form_web.services.credentials.put("claude", "api_key", "sk-ant-test-browser-models")
    page = await browser.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    await page.goto(str(form_web.make_url("/sessions/new")))
    await expect(page.locator("#model")).to_have_attribute("data-narrowed", "on")
    await page.check('input[name="agent"][value="claude"]')
    offered = await page.locator("#model optgroup:not([disabled]) option").all_text_contents()
    assert offered and "claude-sonnet-4-5" in offered and "gpt-5.1-codex" not in offered
    await page.select_option("#model", "claude-sonnet-4-5")
    await page.check('input[name="agent"][value="command"]')
    assert await page.locator("#model").input_value() == ""  # claude's model is not the command agent's
    assert await page.locator("#model optgroup:not([disabled]) option").count() == 0
    assert problems == []
