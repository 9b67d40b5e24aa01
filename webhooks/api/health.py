"""GET /api/health: database, queue and sandbox status, and the version (every app has it, unauthenticated)."""

from __future__ import annotations

from aiohttp import web

from bot import __version__
from webhooks.keys import QUEUE, SANDBOX_STATUS, SERVICES


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
