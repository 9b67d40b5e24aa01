"""A Sesame web app wired to the fake GitHub, on a repository and installation of each test's own."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from sqlalchemy import select

from bot.cli import build_web_app
from bot.cli.wiring import open_services
from bot.models import Session
from bot.services import Services
from tests.support.fake_github import FakeComment, FakeGitHub
from tests.test_api import RecordingQueue

WRITER = "alice"


@dataclass
class Hook:
    """The web app under test, the fake GitHub behind it, and this test's repository."""

    client: TestClient
    fake: FakeGitHub
    queue: Any
    services: Services
    repo: str
    installation_id: int

    async def send(self, event: str, payload: dict[str, Any], *, delivery_id: str | None = None,
                   secret: str | None = None) -> ClientResponse:
        """POST a delivery signed like GitHub's; returns once what it started after the 202 has ended."""
        headers, body = self.fake.delivery(event, payload, delivery_id=delivery_id, secret=secret)
        response = await self.client.post("/webhooks/github", data=body, headers=headers)
        await self.services.background.drain()
        return response

    async def comment(self, number: int, body: str, **kwargs: Any) -> ClientResponse:
        """An issue_comment.created delivery."""
        return await self.send("issue_comment", self.fake.issue_comment_payload(self.repo, number, body, **kwargs))

    async def sessions(self) -> list[Session]:
        """This test's sessions, oldest first."""
        async with self.services.sessions.sessionmaker() as db:
            query = select(Session).where(Session.repo == self.repo).order_by(Session.created_at)
            return list((await db.execute(query)).scalars())

    def bot_comments(self, number: int) -> list[FakeComment]:
        """What the App wrote on issue or PR `number`."""
        return [c for c in self.fake.comments_on(self.repo, number) if c.user.login == self.fake.bot_user.login]


def own_repo(fake: FakeGitHub) -> tuple[str, int]:
    """A repository on an installation of its own (the database may be shared between tests)."""
    account = f"acme-{secrets.token_hex(4)}"
    installation = fake.add_installation(account, id=secrets.randbelow(10**9) + 10**6)
    repo = f"{account}/widget"
    fake.add_repo(repo)
    fake.set_permission(repo, WRITER, "write")
    return repo, installation.id


async def github_services(settings_for: Any, db_url: str, fake: FakeGitHub, **env: Any) -> Services:
    """Migrated services whose GitHub settings point at the fake."""
    settings = settings_for(DATABASE_URL=db_url, BASE_URL="http://sesame.test", **fake.settings_env(), **env)
    return await open_services(settings, auto_migrate=True)


MakeHook = Callable[..., Awaitable[Hook]]


@pytest.fixture
async def make_hook(db_url: str, settings_for: Any, fake_github: FakeGitHub,
                    aiohttp_client: Any) -> AsyncIterator[MakeHook]:
    """Build a Hook with extra settings (e.g. GITHUB_ALLOW_FORK_PULL_REQUESTS=true)."""
    opened: list[Services] = []

    async def build(**env: Any) -> Hook:
        services = await github_services(settings_for, db_url, fake_github, **env)
        opened.append(services)
        queue = RecordingQueue()
        client = await aiohttp_client(build_web_app(services, queue))
        repo, installation_id = own_repo(fake_github)
        return Hook(client, fake_github, queue, services, repo, installation_id)

    yield build
    for services in opened:
        await services.close()


@pytest.fixture
async def hook(make_hook: MakeHook) -> Hook:
    """The web app with default settings, on sqlite and on PostgreSQL."""
    return await make_hook()
