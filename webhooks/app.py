"""The aiohttp application: webhooks, Slack, REST API and pages."""

from __future__ import annotations

import base64
import hmac
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.web_log import AccessLogger
from aiohttp.web_request import BaseRequest

from bot.queue import Queue
from bot.services import Services
from webhooks.api.health import health
from webhooks.keys import QUEUE, SANDBOX_STATUS, SERVICES, WORKSPACES, Handler, Workspaces

__all__ = ["QUEUE", "SANDBOX_STATUS", "SERVICES", "WORKSPACES", "AccessLog", "Handler", "Workspaces", "create_app"]

MAX_BODY = 25 * 1024 * 1024
OPEN_PREFIXES = ("/webhooks/", "/slack/", "/api/health")


class AccessLog(AccessLogger):
    """aiohttp's access log, without a line per webhook delivery accepted (2xx): at hundreds a second those
    lines cost 56 µs of CPU each (issue 16), and sesame_github_deliveries_total counts
    them by event and outcome. Every other request, and every refused or failed delivery, keeps its line."""

    def log(self, request: BaseRequest, response: web.StreamResponse, time: float) -> None:
        if 200 <= response.status < 300 and request.path.startswith("/webhooks/"):
            return
        super().log(request, response, time)


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
        middlewares.append(basic_auth_middleware(services.settings.AUTH_PASSWORD.reveal()))
    middlewares.append(live_settings_middleware)
    app = web.Application(client_max_size=MAX_BODY, middlewares=middlewares)
    app[SERVICES], app[QUEUE] = services, queue
    app[SANDBOX_STATUS] = sandbox_status or {"ok": False, "detail": "unknown"}
    app.router.add_get("/api/health", health)
    app.on_shutdown.append(_drain_background)
    for setup in extra_setup or []:
        setup(app)
    return app
