"""GET /metrics (Prometheus text, behind AUTH_PASSWORD like the API) and the count of GitHub deliveries."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from sqlalchemy import func, select

from bot import metrics
from bot.models import Session
from webhooks.app import QUEUE, SERVICES, Handler

log = logging.getLogger(__name__)
OUTCOMES = ("spooled", "duplicate", "refused", "stopped", "session", "help", "ignored", "installation")
# The request's key for what became of an accepted delivery (outcome_word of its answer), set by the handler
# so that counting it does not parse the answer again.
OUTCOME = "sesame.delivery_outcome"
_counters: dict[tuple[str, str], Any] = {}  # DELIVERIES' child per labels: labels() costs more than inc()


def outcome_word(answer: Mapping[str, Any]) -> str:
    """One word for an accepted delivery, from the keys of its answer."""
    return next((word for word in OUTCOMES if word in answer), "ignored")


def count_delivery(event: str, outcome: str) -> None:
    counter = _counters.get((event, outcome))
    if counter is None:
        counter = _counters[(event, outcome)] = metrics.DELIVERIES.labels(event, outcome)
    counter.inc()


def delivery_outcome(status: int, body: bytes | None) -> str:
    """One word for what became of a delivery, from the answer it got."""
    if status == 200:
        return "ping"
    if status >= 500:
        return "error"
    if status != 202:
        return "rejected"
    try:
        answer = json.loads(body or b"{}")
    except ValueError:
        return "accepted"
    return outcome_word(answer)


@web.middleware
async def count_deliveries(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path != "/webhooks/github" or request.method != "POST":
        return await handler(request)
    event = request.headers.get("X-GitHub-Event", "unknown")[:64]
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        count_delivery(event, delivery_outcome(exc.status, None))
        raise
    except Exception:
        count_delivery(event, "error")
        raise
    outcome = request.get(OUTCOME) if response.status == 202 else None
    if outcome is None:
        body = response.body if isinstance(response, web.Response) and isinstance(response.body, bytes) else None
        outcome = delivery_outcome(response.status, body)
    count_delivery(event, outcome)
    return response


async def scrape(request: web.Request) -> web.Response:
    """Every process's counters and histograms, plus the queue and the sessions as they stand now."""
    services, queue = request.app[SERVICES], request.app[QUEUE]
    live = []
    try:
        query = select(Session.state, Session.agent, func.count()).group_by(Session.state, Session.agent)
        async with services.sessions.autocommit() as db:
            rows = [(str(s), str(a), int(n)) for s, a, n in (await db.execute(query)).all()]
        live.append(metrics.sessions_gauge(rows))
    except Exception as exc:  # the counters still answer while the database is down
        log.warning("/metrics: sessions not counted: %s", exc)
    try:
        health = await queue.health()
        live.append(metrics.queue_gauge(int(health["queued"]) if "queued" in health else None))
    except Exception as exc:
        log.warning("/metrics: queue depth unknown: %s", exc)
    body = metrics.exposition(live)
    return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})


def setup(app: web.Application) -> None:
    app.router.add_get("/metrics", scrape)
    app.middlewares.append(count_deliveries)
