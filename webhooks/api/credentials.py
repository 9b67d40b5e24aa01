"""REST resource /api/credentials/{agent}: sealed credentials of the agents that take a key, and GitHub's PAT."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from bot.catalog import CATALOG
from bot.credentials import GITHUB, kinds_for, pasted_whole
from bot.github import PatCheckError, check_pat
from bot.services import Services
from webhooks.api.common import bad_request, read_json, text_field
from webhooks.keys import SERVICES


def _owner(request: web.Request) -> str:
    """The credential owner in the path: an agent of the catalogue that takes a key, or `github`."""
    name = request.match_info["agent"]
    if name == GITHUB or (name in CATALOG and CATALOG[name].server_env_keys):
        return name
    owners = [spec.name for spec in CATALOG.values() if spec.server_env_keys] + [GITHUB]
    raise web.HTTPNotFound(text=json.dumps({"error": f"no credentials for {name[:64]!r}: use one of "
                                                    f"{', '.join(owners)}"}), content_type="application/json")


def _environment(services: Services, owner: str) -> list[dict[str, Any]]:
    """Keys the server environment or config gives this owner: named and locked, never shown."""
    names = ("GITHUB_PAT",) if owner == GITHUB else CATALOG[owner].server_env_keys
    return [{"name": name, "source": services.settings.sources.get(name), "locked": True}
            for name in names if services.settings.is_set(name)]


async def _credentials_body(request: web.Request, owner: str, **extra: Any) -> web.Response:
    services: Services = request.app[SERVICES]
    return web.json_response({"agent": owner, "kinds": list(kinds_for(owner)),
                              "stored": await services.credentials.kinds(owner),
                              "environment": _environment(services, owner)} | extra)


async def get_credentials(request: web.Request) -> web.Response:
    return await _credentials_body(request, _owner(request))


async def put_credentials(request: web.Request) -> web.Response:
    """Store a credential, sealed. A PAT is first shown to GitHub: a refused one is not stored."""
    owner = _owner(request)
    body = await read_json(request)
    kind = body.get("kind", "github_pat" if owner == GITHUB else "api_key")
    if kind not in kinds_for(owner):
        raise bad_request(f"kind must be one of {', '.join(kinds_for(owner))} for {owner}")
    value = (text_field(body, "value", True, 20_000) or "").strip()
    if not value or not pasted_whole(value):
        raise bad_request("value must be the credential itself, without spaces, line breaks or invisible characters")
    services: Services = request.app[SERVICES]
    extra: dict[str, Any] = {}
    if kind == "github_pat":
        login = await _check_pat(services, value)
        extra = {"login": login}
    await services.credentials.put(owner, kind, value)
    if kind == "github_pat":
        services.caches.commit_author = None  # the next commit looks the new PAT's identity up
    return await _credentials_body(request, owner, **extra)


async def _check_pat(services: Services, token: str) -> str:
    """The PAT's login, or a 400 (GitHub refused it) or 502 (GitHub did not answer) in one sentence."""
    try:
        return await check_pat(services.http, services.settings.GITHUB_API_URL, token)
    except PatCheckError as exc:
        if exc.status == 400:
            raise bad_request(str(exc)) from None
        raise web.HTTPBadGateway(text=json.dumps({"error": str(exc)}), content_type="application/json") from None


async def delete_credentials(request: web.Request) -> web.Response:
    owner = _owner(request)
    kind = request.query.get("kind")
    if kind is not None and kind not in kinds_for(owner):
        raise bad_request(f"kind must be one of {', '.join(kinds_for(owner))} for {owner}")
    services: Services = request.app[SERVICES]
    removed = await services.credentials.delete(owner, kind)
    if owner == GITHUB:
        services.caches.commit_author = None
    return await _credentials_body(request, owner, removed=removed)
