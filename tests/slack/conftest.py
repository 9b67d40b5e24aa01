"""Fixtures for the Slack tests: the fake Slack and GitHub, the web app on real databases."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from bot.cli.wiring import open_services
from bot.models import Session
from bot.services import Services
from tests.support.fake_github import FakeGitHub
from tests.support.fake_slack import FakeSlack
from webhooks import slack as slack_intake
from webhooks.app import create_app


@dataclass
class RecordingQueue:
    """A queue that only remembers what was enqueued (intake tests run no sessions)."""

    kind: str = "recording"
    enqueued: list[str] = field(default_factory=list)

    async def enqueue(self, session_id: str) -> bool:
        self.enqueued.append(session_id)
        return True

    async def health(self) -> dict[str, Any]:
        return {"kind": self.kind, "ok": True}

    async def close(self) -> None:
        return None


@dataclass
class SlackHarness:
    """The web app with Slack mounted, and ways to send it what Slack sends."""

    client: TestClient
    slack: FakeSlack
    github: FakeGitHub
    services: Services
    queue: RecordingQueue

    async def post(self, body: str, headers: dict[str, str], content_type: str) -> tuple[int, Any]:
        response = await self.client.post("/slack/events", data=body.encode(),
                                          headers={**headers, "Content-Type": content_type})
        text = await response.text()
        await self.drain()
        try:
            return response.status, await response.json(content_type=None) if text else None
        except ValueError:
            return response.status, text

    async def command(self, text: str, *, retry_num: int | None = None, body: str | None = None,
                      **kwargs: Any) -> tuple[int, Any]:
        """Run `/sesame text`; the status and the ack's body."""
        body = body or self.slack.command_body(text, **kwargs)
        return await self.post(body, self.slack.signed_headers(body, retry_num=retry_num),
                               "application/x-www-form-urlencoded")

    async def event(self, event: dict[str, Any], *, event_id: str | None = None,
                    retry_num: int | None = None) -> tuple[int, Any]:
        body = self.slack.event_body(event, event_id=event_id)
        return await self.post(body, self.slack.signed_headers(body, retry_num=retry_num), "application/json")

    async def press(self, body: str) -> tuple[int, Any]:
        return await self.post(body, self.slack.signed_headers(body), "application/x-www-form-urlencoded")

    async def drain(self) -> None:
        await self.client.app[slack_intake.SLACK_INTAKE].drain()


async def fetch(h: SlackHarness, session_id: str) -> Session:
    """A session that must exist."""
    row = await h.services.sessions.get(session_id)
    assert row is not None
    return row


SettingsFactory = Callable[..., Any]


@pytest.fixture
def slack_env() -> dict[str, str]:
    """Extra settings a test module or test may set before the harness starts."""
    return {}


@pytest_asyncio.fixture
async def harness(db_url: str, settings_for: SettingsFactory, fake_slack: FakeSlack,
                  fake_github: FakeGitHub, slack_env: dict[str, str]) -> AsyncIterator[SlackHarness]:
    """The app on each database, pointed at the fakes, with a recording queue."""
    settings = settings_for(DATABASE_URL=db_url, BASE_URL="http://sesame.test", **fake_slack.settings_env(),
                            **fake_github.settings_env(), **slack_env)
    services = await open_services(settings, auto_migrate=True)
    queue = RecordingQueue()
    app = create_app(services, queue, extra_setup=[slack_intake.setup])  # type: ignore[arg-type]
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield SlackHarness(client, fake_slack, fake_github, services, queue)
    finally:
        await client.close()
        await services.close()
