"""What every REST resource checks a request with: JSON bodies, text fields, the Idempotency-Key, and
errors as `{"error": ...}` JSON."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from aiohttp import web

from bot.models import Session
from bot.session_input import InputError
from webhooks.json_text import LONE_SURROGATE, is_text
from webhooks.keys import SERVICES

MAX_PROMPT = 50_000
MAX_MODEL = 128  # Session.model's column
MAX_KEY = 200  # an Idempotency-Key: the trigger key column holds 255 with the "api:" prefix
IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1," + str(MAX_KEY) + "}$")


def bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": message}), content_type="application/json")


def input_error(exc: InputError) -> web.HTTPBadRequest:
    """A 400 carrying the checker's sentence (the one `sesame run` prints) and the field it is about."""
    return web.HTTPBadRequest(text=json.dumps({"error": str(exc), "field": exc.field}),
                              content_type="application/json")


async def read_json(request: web.Request) -> dict[str, Any]:
    """The JSON object body, or a clear 400. Only application/json is read: a page elsewhere cannot send
    that to us without a CORS preflight, which this server never answers (no cross-site session starts)."""
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(text=json.dumps({"error": "send the body as application/json"}),
                                           content_type="application/json")
    try:
        body = await request.json()
        text = is_text(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise bad_request("the body is not valid JSON") from None
    except RecursionError:
        raise bad_request("the body is not valid JSON: nested too deep") from None
    if not text:
        raise bad_request(LONE_SURROGATE)
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object")
    return body


async def session_or_404(request: web.Request) -> Session:
    row = await request.app[SERVICES].sessions.get(request.match_info["id"])
    if row is None:
        raise web.HTTPNotFound(text=json.dumps({"error": "no such session"}), content_type="application/json")
    return row


def text_field(body: dict[str, Any], name: str, required: bool = False, limit: int = 255) -> str | None:
    value = body.get(name)
    if value is None or value == "":
        if required:
            raise bad_request(f"{name} is required")
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise bad_request(f"{name} must be text of at most {limit} characters")
    if "\x00" in value:  # PostgreSQL stores no NUL in text
        raise bad_request(f"{name} must not contain NUL characters")
    return value


def idempotency_key(request: web.Request, body: dict[str, Any] | None = None) -> str:
    """The client's Idempotency-Key (header, or idempotencyKey in the body), or a fresh one."""
    key = request.headers.get("Idempotency-Key") or (
        text_field(body, "idempotencyKey", limit=MAX_KEY) if body else None)
    if key is None:
        return str(uuid.uuid4())
    if not IDEMPOTENCY_KEY.match(key):
        raise bad_request(f"Idempotency-Key must be 1 to {MAX_KEY} printable ASCII characters without spaces")
    return key
