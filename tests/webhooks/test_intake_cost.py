"""What intake's CPU cuts (issue 16) must keep: the access log still has every line but accepted
deliveries', gidgethub parses content types as before, and redaction sees secrets set while running."""

from __future__ import annotations

import logging
from email.message import Message

import aiohttp
import gidgethub.sansio
import pytest
from aiohttp import web

import bot.github  # noqa: F401 - installs the cached content-type parser
from bot.settings import SECRET_NAMES, Settings
from tests.test_serve import free_port
from webhooks.app import AccessLog


def email_parse(content_type: str | None) -> tuple[str | None, str]:
    """gidgethub's own parse, as it was before it was cached."""
    if not content_type:
        return None, "utf-8"
    message = Message()
    message["content-type"] = content_type
    return message.get_content_type(), str(message.get_param("charset") or "utf-8")


@pytest.mark.parametrize("content_type", [None, "", "application/json", "application/json; charset=utf-8",
                                          "APPLICATION/JSON; Charset=UTF-8", "text/plain; charset=latin-1",
                                          "application/x-www-form-urlencoded", "nonsense"])
def test_cached_content_type_parse_answers_as_gidgethub_did(content_type: str | None) -> None:
    assert gidgethub.sansio._parse_content_type(content_type) == email_parse(content_type)
    assert gidgethub.sansio._parse_content_type(content_type) == email_parse(content_type)  # from the cache


def test_a_secret_set_while_running_is_redacted() -> None:
    settings = Settings({}, {})
    assert settings.secret_values == []
    settings.values["GITHUB_WEBHOOK_SECRET"] = "webhook-secret-set-later"
    settings.values["GITHUB_APP_SLUG"] = "an-ordinary-slug"
    assert "GITHUB_WEBHOOK_SECRET" in SECRET_NAMES
    assert settings.secret_values == ["webhook-secret-set-later"]


async def test_access_log_skips_only_accepted_deliveries(caplog: pytest.LogCaptureFixture) -> None:
    async def accepted(_request: web.Request) -> web.Response:
        return web.json_response({"status": "accepted"}, status=202)

    async def refused(_request: web.Request) -> web.Response:
        raise web.HTTPUnauthorized(text="signature does not match\n")

    app = web.Application()
    app.router.add_post("/webhooks/github", accepted)
    app.router.add_post("/webhooks/refused", refused)
    app.router.add_get("/api/health", accepted)
    runner = web.AppRunner(app, access_log_class=AccessLog)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    try:
        async with aiohttp.ClientSession() as http:
            for method, path in [("POST", "/webhooks/github"), ("POST", "/webhooks/refused"), ("GET", "/api/health")]:
                async with http.request(method, f"http://127.0.0.1:{port}{path}") as response:
                    await response.read()
    finally:
        await runner.cleanup()
    lines = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]
    assert len(lines) == 2, lines
    assert '"POST /webhooks/refused HTTP/1.1" 401' in lines[0]
    assert '"GET /api/health HTTP/1.1" 202' in lines[1]
