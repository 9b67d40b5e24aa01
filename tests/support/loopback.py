"""Serving a fake's aiohttp app on a free loopback port: the one place every fake starts from."""

from __future__ import annotations

from aiohttp import web


async def serve_on_loopback(app: web.Application, shutdown_timeout: float = 60.0) -> tuple[web.AppRunner, str]:
    """Start app on 127.0.0.1 with a free port; the runner (for cleanup) and the base URL."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"
