"""REST API, one module per resource: sessions (`sessions`), their events over SSE (`events`), best-of-N
groups (`best_of`), settings (`settings`), credentials (`credentials`), the Sesame API proxy (`upstream`) and
health (`health`, which `webhooks.app` mounts on every app); `common` checks requests for all of them. `setup`
mounts them."""

from __future__ import annotations

from aiohttp import web

from webhooks.api import best_of, credentials, events, models, sessions, settings, upstream
from webhooks.api.common import MAX_KEY, MAX_MODEL, MAX_PROMPT, idempotency_key
from webhooks.api.events import MAX_AFTER
from webhooks.api.sessions import (
    LIST_FILTERS,
    MAX_LIMIT,
    STATES,
    check_agent,
    decode_cursor,
    encode_cursor,
    start_follow_up,
)

# webhooks/pages.py reads the listing's query as the API does, under these names
_choice, _limit = sessions.choice, sessions.limit_param

__all__ = ["LIST_FILTERS", "MAX_AFTER", "MAX_KEY", "MAX_LIMIT", "MAX_MODEL", "MAX_PROMPT", "STATES", "_choice",
           "_limit", "check_agent", "decode_cursor", "encode_cursor", "idempotency_key", "setup", "start_follow_up"]


def setup(app: web.Application) -> None:
    """Mount the REST API (routes in the order they were always added)."""
    models.setup(app)
    app.router.add_get("/api/sesame/{path:.+}", upstream.sesame_api)
    app.router.add_get("/api/session", sessions.list_sessions)
    app.router.add_post("/api/session", sessions.create_session)
    app.router.add_get("/api/session/{id}", sessions.get_session)
    app.router.add_patch("/api/session/{id}", sessions.patch_session)
    app.router.add_delete("/api/session/{id}", sessions.delete_session)
    app.router.add_get("/api/session/{id}/events", events.session_events)
    app.router.add_get("/api/session/{id}/violations", sessions.session_violations)
    app.router.add_get("/api/best-of/{group}", best_of.get_group)
    app.router.add_post("/api/best-of/{group}/pick", best_of.pick)
    app.router.add_get("/api/settings", settings.get_settings)
    app.router.add_put("/api/settings", settings.put_settings)
    app.router.add_get("/api/credentials/{agent}", credentials.get_credentials)
    app.router.add_put("/api/credentials/{agent}", credentials.put_credentials)
    app.router.add_delete("/api/credentials/{agent}", credentials.delete_credentials)
