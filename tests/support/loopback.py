"""Serving a fake's aiohttp app on a free loopback port: the one place every fake starts from."""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Self

from aiohttp import web


async def serve_on_loopback(app: web.Application, shutdown_timeout: float = 60.0) -> tuple[web.AppRunner, str]:
    """Start app on 127.0.0.1 with a free port; the runner (for cleanup) and the base URL."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


@dataclass
class RecordedRequest:
    """A request as a fake received it: JSON body parsed (else decoded text, None when empty), and when
    (time.time(), once its body was read)."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    query: dict[str, str] = field(default_factory=dict)
    at: float = field(default_factory=time.time)


class LoopbackServer:
    """A fake service's aiohttp app on a free loopback port, used as an async context manager."""

    shutdown_timeout: float = 60.0

    def __init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> object:
        """Build the app and serve() it."""
        raise NotImplementedError

    async def serve(self, app: web.Application) -> str:
        """Listen on 127.0.0.1 with a free port; returns (and keeps in url) the base URL."""
        self._runner, self.url = await serve_on_loopback(app, shutdown_timeout=self.shutdown_timeout)
        return self.url

    async def close(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class LoopbackFake(LoopbackServer, ABC):
    """A scripted HTTP API on loopback that records every request and may demand an API key.

    Subclasses add their routes in routes() and refuse bad credentials in auth_error().
    """

    url_suffix: str = ""

    def __init__(self, *, api_key: str | None = None) -> None:
        """api_key, when set, is the credential auth_error() checks requests for."""
        super().__init__()
        self.api_key = api_key
        self.requests: list[RecordedRequest] = []
        self.base_url = ""

    @abstractmethod
    def routes(self, app: web.Application) -> None:
        """Add the fake's routes to app."""

    def auth_error(self, request: web.Request) -> web.Response | None:
        """The error to answer a request with bad credentials, or None to serve it."""
        return None

    async def start(self) -> str:
        """Listen on a free loopback port; returns the base URL (with url_suffix)."""
        app = web.Application(middlewares=[self._record])
        self.routes(app)
        self.base_url = await self.serve(app) + self.url_suffix
        return self.base_url

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        self.requests.append(RecordedRequest(request.method, request.path, dict(request.headers), body,
                                             dict(request.query)))
        error = self.auth_error(request)  # a Response is a mapping, falsy when empty: test against None
        if error is not None:
            return error
        return await handler(request)
