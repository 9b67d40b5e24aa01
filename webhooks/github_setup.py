"""Creating the GitHub App from app.yml in two clicks: the manifest flow's pages."""

from __future__ import annotations

import html
import json
import logging
import os
import re
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from bot.services import Services
from webhooks.app import SERVICES

log = logging.getLogger(__name__)

# app.yml at the top of a checkout, or where `pip install` put it (pyproject data-files).
MANIFESTS = (Path(__file__).resolve().parent.parent / "app.yml", Path(sys.prefix) / "share" / "sesame" / "app.yml")
# The manifest flow's state token lives in the database, so the process that shows the form and the one
# GitHub's redirect reaches may differ (serve --workers N, several hosts). It is a row of webhook_deliveries
# (id `manifest-state:TOKEN`, event app_manifest_state): an existing table with the unique key and the
# record/lookup/forget this needs. The token starts with its issue time; it is good for an hour (GitHub's
# codes too) and used once.
STATE_PREFIX = "manifest-state:"
STATE_EVENT = "app_manifest_state"
STATE_TTL = 3600
STATE_FORM = re.compile(r"^([0-9]{10})-[A-Za-z0-9_-]{16,64}$")
CONVERSION_TIMEOUT = aiohttp.ClientTimeout(total=10)
NEW_PAGE = """<!doctype html><meta charset="utf-8"><title>Create the Sesame GitHub App</title>
<body style="font:15px system-ui;max-width:640px;margin:3em auto">
<h1>Create the GitHub App</h1>
<p>GitHub will create an App from Sesame's manifest (webhook <code>{hook}</code>, permissions: contents,
issues and pull requests write, metadata read) and send you back here.</p>
<form action="{github}/settings/apps/new?state={state}" method="post">
<p>Organization (empty for your account): <input name="org" id="org"></p>
<input type="hidden" name="manifest" value="{manifest}">
<button type="submit">Create GitHub App</button></form>
<script>document.querySelector("form").addEventListener("submit", (e) => {{
  const org = document.getElementById("org").value.trim();
  if (org) e.target.action = "{github}/organizations/" + encodeURIComponent(org) + "/settings/apps/new?state={state}";
}});</script>"""
CREATED_PAGE = """<!doctype html><meta charset="utf-8"><title>GitHub App created</title>
<body style="font:15px system-ui;max-width:720px;margin:3em auto">
<h1>GitHub App "{name}" created</h1>
<p>The private key is saved at <code>{key_path}</code> (mode 0600). Set these and restart Sesame:</p>
<pre style="background:#f6f8fa;padding:1em">GITHUB_APP_ID={app_id}
GITHUB_APP_SLUG={slug}
GITHUB_PRIVATE_KEY_PATH={key_path}
GITHUB_WEBHOOK_SECRET={secret}</pre>
<p>This page is shown once. Then <a href="{html_url}/installations/new">install the App</a> on your repositories.</p>"""


def manifest(base_url: str) -> dict[str, Any]:
    """app.yml with BASE_URL filled in."""
    path = next(p for p in MANIFESTS if p.exists())
    filled: dict[str, Any] = yaml.safe_load(path.read_text().replace("${BASE_URL}", base_url.rstrip("/")))
    return filled


def github_web_url(api_url: str) -> str:
    """github.com for the public API; the Enterprise host for https://HOST/api/v3."""
    if api_url.rstrip("/") == "https://api.github.com":
        return "https://github.com"
    return api_url.rstrip("/").removesuffix("/api/v3")


async def new_app(request: web.Request) -> web.Response:
    """A form that posts the manifest to GitHub."""
    settings = request.app[SERVICES].settings
    if settings.GITHUB_APP_ID:
        raise web.HTTPConflict(text="a GitHub App is already configured (GITHUB_APP_ID)\n")
    base = settings.BASE_URL
    if not base:
        raise web.HTTPBadRequest(text="set BASE_URL to this server's public URL first\n")
    state = await issue_state(request.app[SERVICES])
    data = manifest(base)
    page = NEW_PAGE.format(hook=html.escape(data["hook_attributes"]["url"]), state=state,
                           github=github_web_url(settings.GITHUB_API_URL),
                           manifest=html.escape(json.dumps(data), quote=True))
    return web.Response(text=page, content_type="text/html")


async def issue_state(services: Services) -> str:
    """A fresh state token, recorded where every process sees it."""
    state = f"{int(time.time())}-{secrets.token_urlsafe(16)}"
    await services.sessions.record_delivery(STATE_PREFIX + state, "github", STATE_EVENT)
    return state


async def state_valid(services: Services, state: str) -> bool:
    """Issued here (by any process), less than an hour ago, and not used yet."""
    match = STATE_FORM.match(state)
    if match is None or time.time() - int(match.group(1)) > STATE_TTL:
        return False
    return await services.sessions.delivery_seen(STATE_PREFIX + state)


async def convert_code(services: Services, code: str) -> dict[str, Any]:
    """GitHub's answer for the manifest code: the App's id, key and secret; 502 with one sentence when
    GitHub is unreachable or refuses (the state stays valid, so reloading the page tries again)."""
    api = services.settings.GITHUB_API_URL.rstrip("/")
    try:
        async with services.http.post(f"{api}/app-manifests/{code}/conversions", timeout=CONVERSION_TIMEOUT,
                                      headers={"Accept": "application/vnd.github+json"}) as response:
            if response.status != 201:
                raise web.HTTPBadGateway(text=f"GitHub refused the code ({response.status}): start again at "
                                              "/github/app/new\n")
            app: dict[str, Any] = await response.json()
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        log.warning("the GitHub App manifest conversion failed: GitHub at %s: %s", api, type(exc).__name__)
        raise web.HTTPBadGateway(text=f"GitHub at {api} is unreachable ({type(exc).__name__}): nothing was "
                                      "saved, and reloading this page within the hour tries again.\n") from None
    if not all(isinstance(app.get(k), (str, int)) for k in ("id", "pem", "name", "slug", "webhook_secret")):
        raise web.HTTPBadGateway(text="GitHub's answer lacks the App's id, key or secret: start again at "
                                      "/github/app/new\n")
    return app


async def app_created(request: web.Request) -> web.Response:
    """GitHub sends us a code: convert it into the App's id, key and secret; save the key."""
    services = request.app[SERVICES]
    state, code = request.query.get("state", ""), request.query.get("code", "")
    if not code.isalnum() or len(code) > 100 or not await state_valid(services, state):
        raise web.HTTPBadRequest(text="unknown or missing state/code: start again at /github/app/new\n")
    app = await convert_code(services, code)
    key_path = services.settings.data_dir / "github-app.pem"
    key_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(str(app["pem"]))
    await services.sessions.forget_delivery(STATE_PREFIX + state)  # the page is shown once
    page = CREATED_PAGE.format(name=html.escape(str(app["name"])), app_id=int(app["id"]),
                               slug=html.escape(str(app["slug"])), key_path=html.escape(str(key_path)),
                               secret=html.escape(str(app["webhook_secret"])),
                               html_url=html.escape(str(app.get("html_url", ""))))
    return web.Response(text=page, content_type="text/html", headers={"Cache-Control": "no-store"})


async def app_installed(_request: web.Request) -> web.Response:
    return web.Response(text="Sesame is installed. Mention @sesame on an issue to start.\n")


def setup(app: web.Application) -> None:
    """The manifest flow (behind AUTH_PASSWORD like every page)."""
    app.router.add_get("/github/app/new", new_app)
    app.router.add_get("/github/app/created", app_created)
    app.router.add_get("/github/app/installed", app_installed)
