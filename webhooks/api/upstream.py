"""REST resource /api/sesame/{path}: model listings and version checks proxied from SESAME_API_URL."""

from __future__ import annotations

import re

import aiohttp
from aiohttp import web

from bot.services import Services
from webhooks.api.common import bad_request
from webhooks.keys import SERVICES

UPSTREAM_PATH = re.compile(r"^[A-Za-z0-9_-]+(?:/[A-Za-z0-9_.-]+)*$")
UPSTREAM_TIMEOUT = aiohttp.ClientTimeout(total=10)


async def sesame_api(request: web.Request) -> web.Response:
    """Model listings and version checks from SESAME_API_URL, proxied so clients need no direct access."""
    services: Services = request.app[SERVICES]
    path = request.match_info["path"]
    if not UPSTREAM_PATH.match(path) or ".." in path:
        raise bad_request("not a Sesame API path")
    url = f"{services.settings.SESAME_API_URL.rstrip('/')}/{path}"
    try:
        async with services.http.get(url, params=request.query, timeout=UPSTREAM_TIMEOUT,
                                     headers={"Accept": "application/json"}) as upstream:
            body = await upstream.read()
            kind = upstream.headers.get("Content-Type", "application/json").split(";")[0]
            if kind != "application/json":
                return web.json_response({"error": "the Sesame API answered with something other than JSON"},
                                         status=502)
            return web.Response(body=body, status=upstream.status, content_type="application/json")
    except (TimeoutError, aiohttp.ClientError) as exc:
        return web.json_response({"error": f"the Sesame API at {services.settings.SESAME_API_URL} is "
                                           f"unreachable ({type(exc).__name__})"}, status=502)
