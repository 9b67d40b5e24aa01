"""The whole product in one process for a test: migrated services, sessions run in-process by an
InlineQueue (the embedded default), the web app on a TestServer; closed in reverse."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bot.cli.wiring import open_services
from bot.queue import InlineQueue
from bot.services import Services
from bot.settings import Settings
from runner.worker import run_session
from webhooks import slack as slack_intake
from webhooks.app import create_app

Running = tuple[TestClient, InlineQueue, Services]
AppFactory = Callable[[Services, InlineQueue], web.Application]


def slack_app(services: Services, queue: InlineQueue) -> web.Application:
    """The web app with Slack mounted."""
    return create_app(services, queue, extra_setup=[slack_intake.setup])


@asynccontextmanager
async def inline_stack(settings: Settings, app: AppFactory = slack_app,
                       progress_interval: float = 0.2) -> AsyncIterator[Running]:
    """The web app built by `app`, with sessions running in-process; progress every `progress_interval` s."""
    services = replace(await open_services(settings, auto_migrate=True), progress_interval=progress_interval)
    queue = InlineQueue(lambda sid: run_session(services, sid))
    client: TestClient = TestClient(TestServer(app(services, queue)))
    await client.start_server()
    try:
        yield client, queue, services
    finally:
        await client.close()
        await queue.close()
        await services.close()
