"""POST /webhooks/github: verify, record the delivery, route to one Router per feature."""

from __future__ import annotations

import logging

from aiohttp import web
from gidgethub import BadRequest, ValidationFailure, routing, sansio

from webhooks.app import QUEUE, SERVICES
from webhooks.github import comments, installations, issues
from webhooks.github.intake import Intake

log = logging.getLogger(__name__)
router = routing.Router(comments.router, issues.router, installations.router)


def parse_event(request: web.Request, body: bytes, secret: str) -> sansio.Event:
    """Verify the signature and parse; a clear 401/400 on anything wrong."""
    if "x-hub-signature-256" not in request.headers:
        raise web.HTTPUnauthorized(text="missing X-Hub-Signature-256\n")
    try:
        return sansio.Event.from_http(request.headers, body, secret=secret)
    except ValidationFailure:
        raise web.HTTPUnauthorized(text="signature does not match\n") from None
    except BadRequest as exc:
        raise web.HTTPBadRequest(text=f"{exc}\n") from None
    except (ValueError, UnicodeDecodeError):
        raise web.HTTPBadRequest(text="the body is not valid JSON\n") from None


async def receive(request: web.Request) -> web.Response:
    """202 as soon as the delivery is recorded and any session enqueued."""
    services = request.app[SERVICES]
    body = await request.read()
    event = parse_event(request, body, services.settings.GITHUB_WEBHOOK_SECRET)
    if event.event == "ping":
        return web.json_response({"msg": "pong"})
    if not isinstance(event.data, dict) or not event.delivery_id:
        raise web.HTTPBadRequest(text="a delivery needs a JSON object body and X-GitHub-Delivery\n")
    if not await services.sessions.record_delivery(event.delivery_id, "github", event.event):
        return web.json_response({"status": "duplicate delivery"}, status=202)
    intake = Intake(services, request.app[QUEUE])
    try:
        await router.dispatch(event, intake=intake)
    except Exception:
        # Forget the delivery so that GitHub's "redeliver" button runs it again.
        await services.sessions.forget_delivery(event.delivery_id)
        log.exception("delivery %s (%s) failed", event.delivery_id, event.event)
        return web.json_response({"status": "error"}, status=500)
    return web.json_response({"status": "accepted", **intake.outcome}, status=202)


def setup(app: web.Application) -> None:
    """Mount the endpoint when the App's webhook secret is configured."""
    if app[SERVICES].settings.get("GITHUB_WEBHOOK_SECRET"):
        app.router.add_post("/webhooks/github", receive)


__all__ = ["setup", "router"]
