"""POST /api/session on owner/name where the App is installed: the session runs through the installation
and ends in a pull request on the fake GitHub remote."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio

from bot.cli import build_web_app
from bot.models import Session
from tests.conftest import session_base
from tests.slack.test_end_to_end import AGENT
from tests.support.fake_github import FakeGitHub
from tests.support.gitrepo import git
from tests.support.stack import Running, inline_stack


@pytest_asyncio.fixture
async def running(db_url: str, settings_for: Any,
                  fake_github: FakeGitHub) -> AsyncIterator[Running]:
    settings = settings_for(DATABASE_URL=db_url, BASE_URL="http://sesame.test", SESSION_DIR_BASE=session_base(),
                            AGENT_COMMAND=AGENT, SESSION_TIMEOUT="120", API_REPOS="installed",
                            **fake_github.settings_env())
    async with inline_stack(settings, app=build_web_app) as stack:
        yield stack


async def test_an_api_session_on_an_installed_repository_opens_a_pull_request(
        running: Running, fake_github: FakeGitHub) -> None:
    client, queue, services = running
    installation = fake_github.installation_of("acme")
    assert installation is not None
    await services.installations.upsert(installation.id, "acme", repos=["acme/widget"])
    response = await client.post("/api/session", json={"repo": "acme/widget", "agent": "command",
                                                        "prompt": "make answer() return 42"})
    assert response.status == 201, await response.text()
    created = await response.json()
    await queue.join()
    row = await services.sessions.get(created["id"])
    assert row is not None and row.state == "completed" and row.branch, row.error
    [pull] = [p for p in fake_github.pulls if p.repo == "acme/widget" and p.head == row.branch]
    assert row.pr_number == pull.number and pull.base == "main"
    bare = fake_github.repos["acme/widget"].path
    assert git("show", f"{row.branch}:src/widget.py", cwd=bare).endswith("return 42")
    assert not fake_github.api_requests("POST", "/repos/acme/widget/issues")  # no comment: the API follows SSE


async def create(running: Running, fake_github: FakeGitHub,
                 body: dict[str, Any]) -> Session:
    """POST /api/session on acme/widget (installed), run to its end."""
    client, queue, services = running
    installation = fake_github.installation_of("acme")
    assert installation is not None
    await services.installations.upsert(installation.id, "acme", repos=["acme/widget"])
    response = await client.post("/api/session", json={"repo": "acme/widget", "prompt": "make answer() return 42",
                                                        **body})
    assert response.status == 201, await response.text()
    await queue.join()
    row = await services.sessions.get((await response.json())["id"])
    assert row is not None
    return row


async def test_a_request_naming_no_agent_runs_the_repositorys_agent_and_model(
        running: Running, fake_github: FakeGitHub) -> None:
    """The server's default is Claude (not runnable here); the base branch's config names `command`."""
    assert running[2].settings.SESAME_DEFAULT_AGENT == "claude"
    fake_github.commit_file("acme/widget", "main", {".github/sesame.yml": "agent: command\nmodel: m-1\n"})
    row = await create(running, fake_github, {})
    assert (row.agent, row.model, row.state) == ("command", "m-1", "completed"), row.error
    bare = fake_github.repos["acme/widget"].path
    assert git("show", f"{row.branch}:src/widget.py", cwd=bare).endswith("return 42")


async def test_an_agent_or_model_the_request_names_wins_over_the_repositorys(
        running: Running, fake_github: FakeGitHub) -> None:
    fake_github.commit_file("acme/widget", "main", {".github/sesame.yml": "agent: claude\nmodel: opus\n"})
    row = await create(running, fake_github, {"agent": "command"})
    assert (row.agent, row.model, row.state) == ("command", None, "completed"), row.error
    fake_github.commit_file("acme/widget", "main", {".github/sesame.yml": "model: m-2\n"})
    row = await create(running, fake_github, {"agent": "command", "model": "m-3"})
    assert (row.agent, row.model, row.state) == ("command", "m-3", "completed"), row.error
