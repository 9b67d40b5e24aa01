"""The aiohttp application: webhooks, Slack, REST API and pages."""

from __future__ import annotations

import base64
import hmac
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web

from bot import __version__
from bot.queue import Queue
from bot.services import Services

SERVICES = web.AppKey("services", Services)
QUEUE = web.AppKey("queue", Queue)
SANDBOX_STATUS = web.AppKey("sandbox_status", dict)


class Workspaces(Protocol):
    """The session directories on this host, for the API (the runner owns them; the composition root
    hands its implementation in)."""

    def kept(self, session_id: str) -> str | None:
        """The path of the session's directory if it is still on this host (keep alive, or work to push)."""

    async def remove(self, session_id: str) -> bool:
        """End what runs in it and delete it; False when there was none."""


WORKSPACES = web.AppKey("workspaces", Workspaces)
MAX_BODY = 25 * 1024 * 1024
OPEN_PREFIXES = ("/webhooks/", "/slack/", "/api/health")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def basic_auth_middleware(password: str) -> Any:
    """HTTP Basic on API and pages (any username); webhooks carry their own signatures."""
    expected = password.encode()

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(OPEN_PREFIXES):
            return await handler(request)
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            try:
                _user, _, given = base64.b64decode(header[6:]).decode().partition(":")
                if hmac.compare_digest(given.encode(), expected):
                    return await handler(request)
            except (ValueError, UnicodeDecodeError):
                pass
        raise web.HTTPUnauthorized(headers={"WWW-Authenticate": 'Basic realm="sesame"'},
                                   text="authentication required\n")

    return middleware


async def health(request: web.Request) -> web.Response:
    """Database, queue and sandbox status, and the version."""
    services, queue = request.app[SERVICES], request.app[QUEUE]
    database = await services.database_health()
    queue_status = await queue.health()
    sandbox = request.app[SANDBOX_STATUS]
    ok = database["ok"] and queue_status["ok"]
    body = {"status": "ok" if ok else "degraded", "version": __version__,
            "database": database, "queue": queue_status, "sandbox": sandbox}
    if database["ok"]:  # from the database: every process's sessions, not only this one's
        queued, running = await services.sessions.count_waiting_and_running()
        body["sessions"] = {"queued": queued, "running": running}
    return web.json_response(body, status=200 if ok else 503)


async def _drain_background(app: web.Application) -> None:
    """Replies and progress comments started after a 202 finish before the process exits."""
    await app[SERVICES].background.drain()


@web.middleware
async def live_settings_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The config file is re-read when it changed (a stat at most once a second), so a change made by
    another process or by hand applies without a restart."""
    request.app[SERVICES].settings.refresh()
    return await handler(request)


def create_app(services: Services, queue: Queue, sandbox_status: dict[str, Any] | None = None,
               extra_setup: list[Callable[[web.Application], None]] | None = None) -> web.Application:
    """Build the web application; no work happens at import time."""
    middlewares = []
    if services.settings.AUTH_PASSWORD:
        middlewares.append(basic_auth_middleware(services.settings.AUTH_PASSWORD))
    middlewares.append(live_settings_middleware)
    app = web.Application(client_max_size=MAX_BODY, middlewares=middlewares)
    app[SERVICES], app[QUEUE] = services, queue
    app[SANDBOX_STATUS] = sandbox_status or {"ok": False, "detail": "unknown"}
    app.router.add_get("/api/health", health)
    app.on_shutdown.append(_drain_background)
    for setup in extra_setup or []:
        setup(app)
    return app
