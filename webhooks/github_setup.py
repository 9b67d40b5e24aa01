"""Creating the GitHub App from app.yml in two clicks: the manifest flow's pages."""

from __future__ import annotations

import html
import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from webhooks.app import SERVICES

# app.yml at the top of a checkout, or where `pip install` put it (pyproject data-files).
MANIFESTS = (Path(__file__).resolve().parent.parent / "app.yml", Path(sys.prefix) / "share" / "sesame" / "app.yml")
STATE = web.AppKey("github_manifest_state", dict)
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
    state = request.app[STATE]["value"]
    data = manifest(base)
    page = NEW_PAGE.format(hook=html.escape(data["hook_attributes"]["url"]), state=state,
                           github=github_web_url(settings.GITHUB_API_URL),
                           manifest=html.escape(json.dumps(data), quote=True))
    return web.Response(text=page, content_type="text/html")


async def app_created(request: web.Request) -> web.Response:
    """GitHub sends us a code: convert it into the App's id, key and secret; save the key."""
    services = request.app[SERVICES]
    expected = request.app[STATE]["value"]
    if not secrets.compare_digest(request.query.get("state", ""), expected) or \
            not request.query.get("code", "").isalnum():
        raise web.HTTPBadRequest(text="unknown or missing state/code: start again at /github/app/new\n")
    url = f"{services.settings.GITHUB_API_URL.rstrip('/')}/app-manifests/{request.query['code']}/conversions"
    async with services.http.post(url, headers={"Accept": "application/vnd.github+json"}) as response:
        if response.status != 201:
            raise web.HTTPBadGateway(text=f"GitHub refused the code ({response.status}): start again\n")
        app = await response.json()
    key_path = services.settings.data_dir / "github-app.pem"
    key_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(app["pem"])
    request.app[STATE]["value"] = secrets.token_urlsafe(16)  # the page is shown once
    page = CREATED_PAGE.format(name=html.escape(app["name"]), app_id=int(app["id"]), slug=html.escape(app["slug"]),
                               key_path=html.escape(str(key_path)), secret=html.escape(app["webhook_secret"]),
                               html_url=html.escape(app["html_url"]))
    return web.Response(text=page, content_type="text/html", headers={"Cache-Control": "no-store"})


async def app_installed(_request: web.Request) -> web.Response:
    return web.Response(text="Sesame is installed. Mention @sesame on an issue to start.\n")


def setup(app: web.Application) -> None:
    """The manifest flow (behind AUTH_PASSWORD like every page)."""
    app[STATE] = {"value": secrets.token_urlsafe(16)}
    app.router.add_get("/github/app/new", new_app)
    app.router.add_get("/github/app/created", app_created)
    app.router.add_get("/github/app/installed", app_installed)
