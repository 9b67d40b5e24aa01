"""What the web application carries for its handlers (typed keys), apart from the app that builds it, so
handler modules and `webhooks.app` import them without importing each other."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from aiohttp import web

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

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
