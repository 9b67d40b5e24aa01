"""The models each agent offers: SESAME_API_URL's `/models` listing when it answers, the built-in catalogue
otherwise. The session form lists them; the form and POST /api/session refuse
a model another agent lists and the chosen one does not."""

from __future__ import annotations

import re
import time
from typing import Any

import aiohttp
from aiohttp import web

from bot.catalog import CATALOG
from webhooks.keys import SERVICES

MODEL_ID = re.compile(r"^[A-Za-z0-9._:/@-]{1,128}$")
MODELS_TIMEOUT = aiohttp.ClientTimeout(total=2)  # the form waits this long for SESAME_API_URL's listing
MODELS_TTL, MODELS_FAILED_TTL = 300.0, 60.0
MODELS = web.AppKey("model_listing", dict)  # url -> (expires, {agent: [model ids]} or None)


async def model_listing(app: web.Application) -> dict[str, list[str]] | None:
    """SESAME_API_URL's /models as {agent: [ids]}, cached; None when it does not answer with such a list."""
    services = app[SERVICES]
    url = f"{services.settings.SESAME_API_URL.rstrip('/')}/models"
    cache = app[MODELS]
    hit = cache.get(url)
    if hit is not None and hit[0] > time.monotonic():
        return hit[1]  # type: ignore[no-any-return]
    found: dict[str, list[str]] | None = None
    try:
        async with services.http.get(url, timeout=MODELS_TIMEOUT, headers={"Accept": "application/json"}) as answer:
            if answer.status == 200:
                found = _parse_models(await answer.json(content_type=None))
    except (TimeoutError, aiohttp.ClientError, ValueError):
        found = None
    cache[url] = (time.monotonic() + (MODELS_TTL if found is not None else MODELS_FAILED_TTL), found)
    return found


def _parse_models(body: Any) -> dict[str, list[str]] | None:
    """{"models": [{"id": ..., "agent": ...}]} as {agent: [ids]}; entries of unknown agents or odd ids are left out."""
    items = body.get("models") if isinstance(body, dict) else None
    if not isinstance(items, list):
        return None
    found: dict[str, list[str]] = {}
    for item in items:
        if isinstance(item, dict) and item.get("agent") in CATALOG and MODEL_ID.match(str(item.get("id", ""))):
            found.setdefault(str(item["agent"]), []).append(str(item["id"]))
    return found


async def agent_models(app: web.Application, agent: str) -> list[str]:
    """The models `agent` offers: the listing's, else the catalogue's (empty: it takes no model choice)."""
    listing = await model_listing(app)
    spec = CATALOG.get(agent)
    return (listing or {}).get(agent) or (list(spec.models) if spec else [])


async def models_by_agent(app: web.Application) -> dict[str, list[str]]:
    """Every agent's models (agent_models for each), to tell whose a model is."""
    return {agent: await agent_models(app, agent) for agent in CATALOG}


def setup(app: web.Application) -> None:
    app[MODELS] = {}
