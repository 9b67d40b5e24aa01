"""POST /webhooks/github: verify, route to one Router per feature, answer 202."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson
from aiohttp import web
from gidgethub import BadRequest, ValidationFailure, routing, sansio

from bot.secret import reveal
from webhooks.app import QUEUE, SERVICES
from webhooks.github import checks, comments, installations, issues, spool
from webhooks.github.intake import Intake
from webhooks.json_text import LONE_SURROGATE, is_text
from webhooks.metrics import OUTCOME, outcome_word

log = logging.getLogger(__name__)
router = routing.Router(comments.router, issues.router, installations.router, checks.router)
REQUIRED_HEADERS = ("x-github-event", "x-github-delivery")


def parse_event(headers: Mapping[str, str], body: bytes, secret: str) -> sansio.Event:
    """Verify the signature and parse; a clear 401/400/415 on anything wrong."""
    if "x-hub-signature-256" not in headers:
        raise web.HTTPUnauthorized(text="missing X-Hub-Signature-256\n")
    if any(name not in headers for name in REQUIRED_HEADERS):
        raise web.HTTPBadRequest(text="a delivery needs X-GitHub-Event and X-GitHub-Delivery\n")
    try:
        data = _read_json(headers, body, secret)
        if data is not None:
            return sansio.Event(data, event=headers["x-github-event"], delivery_id=headers["x-github-delivery"])
        event = sansio.Event.from_http(headers, body, secret=secret)
    except ValidationFailure:
        raise web.HTTPUnauthorized(text="signature does not match\n") from None
    except (BadRequest, ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deep
        if headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise web.HTTPUnsupportedMediaType(text="send deliveries as application/json\n") from None
        raise web.HTTPBadRequest(text="the body is not valid JSON\n") from None
    _refuse_lone_surrogates(event.data)
    return event


def _refuse_lone_surrogates(data: Any) -> None:
    """A 400 unless every string is text (webhooks.json_text). Only bodies orjson refused or left to json get
    here; orjson refuses lone surrogates itself."""
    try:
        if is_text(data):
            return
    except RecursionError:
        raise web.HTTPBadRequest(text="the body is nested too deep\n") from None
    raise web.HTTPBadRequest(text=f"{LONE_SURROGATE}\n")


INT32 = 2**31 - 1  # PostgreSQL's integer: sessions.issue_number and pr_number
# The fields the handlers read, where present, with the kind of value GitHub sends: "text" (a string), "body"
# (a string or null), "id" (a whole number, not a boolean), "number" (one from 1 to INT32). Absent fields are the
# handlers' to judge, as before.
SHAPE: tuple[tuple[str, str, str], ...] = (
    ("repository", "full_name", "text"), ("sender", "login", "text"), ("installation", "id", "id"),
    ("issue", "number", "number"), ("issue", "title", "text"), ("issue", "body", "body"),
    ("pull_request", "number", "number"), ("pull_request", "body", "body"),
    ("comment", "id", "id"), ("comment", "body", "body"), ("review", "id", "id"), ("review", "body", "body"),
)
KIND_WORDS = {"text": "text", "body": "text", "id": "a whole number", "number": f"a whole number from 1 to {INT32}"}


def shape_problem(data: dict[str, Any]) -> str | None:
    """What in a delivery is of another kind than GitHub sends there ("issue.number is not a whole number..."),
    or None. Such a delivery used to fail deep in a handler (a 500 and a traceback), or, for a number beyond
    PostgreSQL's integer, be recorded on SQLite and fail on PostgreSQL."""
    for parent, name, kind in SHAPE:
        outer = data.get(parent)
        if outer is None:
            continue
        if not isinstance(outer, dict):
            return f"{parent} is not an object"
        if name not in outer:
            continue
        value = outer[name]
        if kind == "text":
            fits = isinstance(value, str)
        elif kind == "body":
            fits = value is None or isinstance(value, str)
        else:
            fits = isinstance(value, int) and not isinstance(value, bool) and (
                kind == "id" or 1 <= value <= INT32)
        if not fits:
            return f"{parent}.{name} is not {KIND_WORDS[kind]}"
    return None


# Each byte as "0" when it is a digit, else " ": a run of LONG_NUMBER digits in the body is found with `in`.
DIGITS = bytes(48 if 48 <= byte <= 57 else 32 for byte in range(256))
LONG_NUMBER = b"0" * 19  # an integer orjson reads as a float (beyond int64 below zero, uint64 above) has as many


def _read_json(headers: Mapping[str, str], body: bytes, secret: str) -> Any:
    """A verified `application/json` body (what GitHub sends) as orjson reads it, in half json's time (issue 16:
    json.loads was 6 % of the web process's CPU at 500 deliveries/s). orjson reads every JSON value as json
    does, except integers beyond 64 bits (as floats) and what it refuses (a lone surrogate, NaN, a BOM...):
    None for those, and for any other content type, and gidgethub's from_http verifies and parses it as before."""
    if headers.get("content-type") != "application/json" or LONG_NUMBER in body.translate(DIGITS):
        return None
    sansio.validate_event(body, signature=headers["x-hub-signature-256"], secret=secret)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


async def dispatch(event: sansio.Event, intake: Intake) -> int:
    """Run every matching handler; one failing handler does not skip the others. Returns failures."""
    failures = 0
    for handler in router.fetch(event):
        try:
            await handler(event, intake=intake)
        except Exception:
            log.exception("handler %s failed on delivery %s (%s)", handler.__name__, event.delivery_id,
                          event.event)
            failures += 1
    return failures


async def receive(request: web.Request) -> web.Response:
    """202 as soon as any session is recorded and enqueued."""
    services = request.app[SERVICES]
    secret = services.settings.GITHUB_WEBHOOK_SECRET
    if not secret:  # never parse a delivery unverified (gidgethub skips the check without a secret)
        raise web.HTTPServiceUnavailable(text="GITHUB_WEBHOOK_SECRET is not set on this server\n")
    body = await request.read()
    event = parse_event(request.headers, body, secret.reveal())
    if event.event == "ping":
        return web.json_response({"msg": "pong"})
    if not isinstance(event.data, dict):
        raise web.HTTPBadRequest(text="a delivery body is a JSON object\n")
    problem = shape_problem(event.data)
    if problem is not None:
        raise web.HTTPBadRequest(text=f"the delivery's {problem}, where GitHub sends one\n")
    intake = Intake(services, request.app[QUEUE], event)
    if await dispatch(event, intake):
        if not (await services.database_health())["ok"]:  # kept, and recorded when the database returns
            if spool.keep(services, event.delivery_id, dict(request.headers), body):
                return web.json_response({"status": "accepted", "spooled": True}, status=202)
        elif intake.claimed:  # forget it, so that GitHub's "redeliver" button runs it again
            await services.sessions.forget_delivery(event.delivery_id)
        return web.json_response({"status": "error"}, status=500)
    request[OUTCOME] = outcome_word(intake.outcome)
    return web.Response(body=orjson.dumps({"status": "accepted", **intake.outcome}), status=202,
                        content_type="application/json")


async def process_kept(app: web.Application, headers: dict[str, str], body: bytes) -> bool:
    """One spooled delivery through intake again; True once it is handled (or can never be)."""
    services = app[SERVICES]
    try:
        event = parse_event(headers, body, reveal(services.settings.GITHUB_WEBHOOK_SECRET) or "")
    except web.HTTPException:
        log.warning("a spooled delivery no longer verifies; dropped")
        return True
    if not isinstance(event.data, dict) or shape_problem(event.data) is not None:
        return True
    intake = Intake(services, app[QUEUE], event)
    if await dispatch(event, intake):
        if not (await services.database_health())["ok"]:
            return False  # still down: kept for the next pass
        log.error("spooled delivery %s failed for another reason than the database; dropped", event.delivery_id)
    return True


def setup(app: web.Application) -> None:
    """Mount the endpoint when the App's webhook secret is configured."""
    if app[SERVICES].settings.GITHUB_WEBHOOK_SECRET:
        app.router.add_post("/webhooks/github", receive)
        app.cleanup_ctx.append(_replay_spool)


async def _replay_spool(app: web.Application) -> AsyncIterator[None]:
    async with spool.replaying(app, process_kept):
        yield


__all__ = ["dispatch", "parse_event", "router", "setup"]
