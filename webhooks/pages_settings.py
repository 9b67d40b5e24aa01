"""The settings pages: /settings (every key, its source, its lock, when it applies), /settings/credentials (agent
credentials and the GitHub PAT) and /admin/sandbox (default, global domain lists, each agent's own domains).
Writes go through bot.settings.write_config and the credential store, as the settings API's do."""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from bot.catalog import AGENT_SPECS, CATALOG
from bot.credentials import GITHUB, SETTING_SECRETS, pasted_whole
from bot.github import PatCheckError, check_pat
from bot.services import Services
from bot.setting_types import Key
from bot.settings import KEYS, KEYS_BY_NAME, SettingsError
from bot.settings_write import check_secret_setting, config_target, write_config
from webhooks.app import SERVICES
from webhooks.pages import PageError, check_csrf, done, render

MASK = "********"
IDENTITIES = web.AppKey("pat_identities", dict)  # sha256 of a PAT -> its login, looked up once
KIND_LABELS = {"subscription": "Subscription", "api_key": "API key", "github_pat": "Personal access token"}
KIND_HINTS = {"api_key": "the provider's API key", "github_pat": "a GitHub personal access token",
              "subscription": "a subscription token"}
SUBSCRIPTION_HINTS = {"claude": "the token `claude setup-token` prints", "codex": "the token from Codex's sign-in",
                      "copilot": "a GitHub token of an account with Copilot"}
SANDBOX_KEYS = ("SANDBOX_SECURITY_ENABLED", "SANDBOX_ALLOWED_DOMAINS", "SANDBOX_DENIED_DOMAINS")


def shown_value(key: Key, value: Any) -> str:
    """A setting's value as a form field holds it (lists comma separated, maps KEY=VALUE), secrets masked."""
    if key.secret:
        return MASK if value else ""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, list):
        return shlex.join(value) if key.kind == "argv" else ", ".join(str(v) for v in value)
    return str(value)


def source_of(services: Services, name: str) -> tuple[str, str]:
    """(environment | file | database | default, and the variable for environment)."""
    source = services.settings.sources.get(name, "default")
    if source.startswith("env:"):
        return "environment", source[4:]
    return ("file" if source == "config" else source), ""


@dataclass
class Row:
    key: Key
    value: str
    source: str
    variable: str
    editable: bool
    why: str  # why the field is read-only, or ""
    applies: str  # when a change takes effect
    error: str


async def settings_rows(services: Services, submitted: dict[str, str] | None = None,
                        errors: dict[str, str] | None = None) -> list[Row]:
    settings, rows = services.settings, []
    for key in KEYS:
        value = shown_value(key, settings.values.get(key.name))
        source, variable = source_of(services, key.name)
        if key.name in SETTING_SECRETS and source != "environment" and await services.credentials.kinds(
                SETTING_SECRETS[key.name]):
            value, source = MASK, "database"
        why = ""
        if source == "environment":
            why = f"Locked: set by the environment variable {variable}; change it there and restart"
        elif key.secret and key.name not in SETTING_SECRETS:
            why = f"Read-only: a secret, set {' or '.join(key.env)} in the server's environment"
        elif not key.path and key.name not in SETTING_SECRETS:
            why = f"Read-only: environment only, set {' or '.join(key.env)} where the server starts"
        applies = "at once" if key.live and (key.path or key.name in SETTING_SECRETS) else "after a restart"
        if key.name in settings.restart_pending:
            applies = f"after a restart (the file holds {shown_value(key, settings.restart_pending[key.name])})"
        if submitted and key.name in submitted and not key.secret:
            value = submitted[key.name]
        rows.append(Row(key, value, source, variable, not why, why, applies, (errors or {}).get(key.name, "")))
    return rows


async def settings_page(request: web.Request, status: int = 200, submitted: dict[str, str] | None = None,
                        errors: dict[str, str] | None = None) -> web.Response:
    services = request.app[SERVICES]
    services.settings.refresh(min_interval=0)
    path = services.settings.config_path
    return render(request, "settings.html", status=status, title="Settings",
                  rows=await settings_rows(services, submitted, errors), errors=errors or {}, config_path=path,
                  notices={"saved": "Settings saved."})


async def show_settings(request: web.Request) -> web.Response:
    return await settings_page(request)


def config_file(services: Services) -> Path:
    """The config file the pages write, as the settings API does: the one in force, else config.json where
    one is looked for."""
    return config_target(services.settings)


async def save(services: Services, updates: dict[str, Any]) -> None:
    """Write updates as the settings API does: secrets sealed in the database, the rest into the config file
    (all checked first, nothing written on a refusal), applied at once where that is safe; SettingsError else."""
    settings = services.settings
    secrets = {name: updates.pop(name) for name in list(updates) if name in SETTING_SECRETS}
    for name, value in secrets.items():
        check_secret_setting(settings, name, value)
    fresh = write_config(config_file(services), updates, settings, env=settings.env) if updates else None
    for name, value in secrets.items():
        await services.credentials.put(SETTING_SECRETS[name], "api_key", str(value))
    if fresh is not None:
        settings.apply(fresh)


async def save_form(request: web.Request, updates: dict[str, Any], path: str,
                    refused: Callable[[int, dict[str, str]], Awaitable[web.Response]]) -> web.Response:
    """Save a settings form's updates and go back to path, saying so; a refusal shows the page again
    (refused(status, errors): 409 for a locked setting, 400 else), and then nothing is written."""
    if updates:
        try:
            await save(request.app[SERVICES], dict(updates))
        except SettingsError as exc:
            return await refused(409 if "locked" in str(exc) else 400, {exc.key: str(exc)})
    raise done(path, "saved")


async def post_settings(request: web.Request) -> web.Response:
    """The fields that changed (a locked one among them is refused with the lock's reason); a refusal is shown
    next to its field, and then nothing is written."""
    fields = await check_csrf(request)
    services = request.app[SERVICES]
    current = {row.key.name: row.value for row in await settings_rows(services)}
    updates: dict[str, Any] = {}
    for name, text in fields.items():
        key = KEYS_BY_NAME.get(name)
        if key is None or text.strip() == current.get(name, "") or (key.secret and text.strip() in ("", MASK)):
            continue
        updates[name] = text.strip() if text.strip() != "" else None
    submitted = {k: str(v or "") for k, v in updates.items()}
    return await save_form(request, updates, "/settings",
                           lambda status, errors: settings_page(request, status, submitted, errors))


@dataclass
class Owner:
    name: str
    label: str
    kinds: tuple[str, ...]
    stored: list[str]
    environment: list[str]  # names of server settings giving it a key (locked)
    login: str
    tab: str


async def pat_login(request: web.Request, token: str) -> str:
    """The login a PAT resolves to (asked of GITHUB_API_URL once per token); PageError when GitHub refuses it
    (400) or does not answer (502)."""
    services = request.app[SERVICES]
    digest = hashlib.sha256(token.encode()).hexdigest()
    known: dict[str, str] = request.app[IDENTITIES]
    if digest in known:
        return known[digest]
    try:
        login = await check_pat(services.http, services.settings.GITHUB_API_URL, token)
    except PatCheckError as exc:
        raise PageError(exc.status, f"{exc}.") from None
    known[digest] = login
    return login


async def owners(request: web.Request) -> list[Owner]:
    services = request.app[SERVICES]
    found = []
    for spec in AGENT_SPECS:
        if not spec.server_env_keys:
            continue
        env = [k for k in spec.server_env_keys if services.settings.values.get(k)]
        found.append(Owner(spec.name, spec.display_name, spec.credential_kinds,
                           await services.credentials.kinds(spec.name), env, "", ""))
    stored = await services.credentials.kinds(GITHUB)
    login = ""
    if stored:
        pat = await services.credentials.get(GITHUB, "github_pat")
        try:
            login = await pat_login(request, pat.value) if pat else ""
        except PageError as exc:
            login = f"(not resolved: {exc.message})"
    env = ["GITHUB_PAT"] if services.settings.values.get("GITHUB_PAT") else []
    found.append(Owner(GITHUB, "GitHub (personal access token)", ("github_pat",), stored, env, login, ""))
    for owner in found:
        asked = request.query.get("tab", "") if request.query.get("agent") == owner.name else ""
        owner.tab = asked if asked in owner.kinds else owner.kinds[0]
    return found


NOTICES = {"stored": "Credential stored.", "removed": "Credential removed."}


async def credentials_page(request: web.Request) -> web.Response:
    return render(request, "credentials.html", title="Agent credentials", owners=await owners(request),
                  kind_labels=KIND_LABELS, kind_hints=KIND_HINTS, subscription_hints=SUBSCRIPTION_HINTS, mask=MASK,
                  notices=NOTICES)


def _owner_name(request: web.Request) -> str:
    name = request.match_info["owner"]
    if name == GITHUB or (name in CATALOG and CATALOG[name].server_env_keys):
        return name
    raise PageError(404, f"There are no credentials for {name[:64]!r}.")


async def store_credential(request: web.Request) -> web.Response:
    """Store a credential, sealed; a PAT is first shown to GitHub (a refused one is not stored)."""
    fields = await check_csrf(request)
    owner = _owner_name(request)
    kinds = ("github_pat",) if owner == GITHUB else CATALOG[owner].credential_kinds
    kind = fields.get("kind", "")
    if kind not in kinds:
        raise PageError(400, f"Choose one of {', '.join(KIND_LABELS[k] for k in kinds)}.")
    value = fields.get("value", "").strip()
    if not value or len(value) > 20_000 or not pasted_whole(value):
        raise PageError(400, "Paste the credential itself, without spaces, line breaks or invisible characters.")
    services = request.app[SERVICES]
    if kind == "github_pat":
        await pat_login(request, value)
    await services.credentials.put(owner, kind, value)
    if owner == GITHUB:
        services.caches.commit_author = None  # the next commit looks the new PAT's identity up
    raise done("/settings/credentials", "stored", f"agent-{owner}")


async def remove_credential(request: web.Request) -> web.Response:
    fields = await check_csrf(request)
    owner = _owner_name(request)
    services = request.app[SERVICES]
    await services.credentials.delete(owner, fields.get("kind") or None)
    if owner == GITHUB:
        services.caches.commit_author = None
    raise done("/settings/credentials", "removed", f"agent-{owner}")


def agent_domains(services: Services) -> list[tuple[str, list[str]]]:
    """Each agent's built-in domains, and the host:port of its configured base URL (a gateway)."""
    found = []
    for spec in AGENT_SPECS:
        domains = list(spec.vendor_domains)
        url = services.settings.values.get(spec.base_url_key) if spec.base_url_key else None
        if url:
            parts = urlsplit(str(url))
            domains.append(f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}")
        if domains:
            found.append((spec.display_name, domains))
    return found


async def sandbox_page(request: web.Request, status: int = 200, submitted: dict[str, str] | None = None,
                       errors: dict[str, str] | None = None) -> web.Response:
    services = request.app[SERVICES]
    services.settings.refresh(min_interval=0)
    rows = {row.key.name: row for row in await settings_rows(services, None, errors) if row.key.name in SANDBOX_KEYS}
    lists = {name: "\n".join(services.settings.get(name, [])) for name in SANDBOX_KEYS[1:]} | (submitted or {})
    return render(request, "sandbox.html", status=status, title="Sandbox", rows=rows, lists=lists,
                  enabled=services.settings.SANDBOX_SECURITY_ENABLED, agents=agent_domains(services),
                  notices={"saved": "Sandbox settings saved."})


async def show_sandbox(request: web.Request) -> web.Response:
    return await sandbox_page(request)


async def post_sandbox(request: web.Request) -> web.Response:
    """The default and the global lists (one pattern a line); a malformed pattern is refused next to its list."""
    fields = await check_csrf(request)
    services = request.app[SERVICES]
    settings = services.settings
    updates: dict[str, Any] = {}
    enabled = fields.get("SANDBOX_SECURITY_ENABLED")
    if enabled in ("true", "false") and (enabled == "true") != settings.SANDBOX_SECURITY_ENABLED:
        updates["SANDBOX_SECURITY_ENABLED"] = enabled
    for name in SANDBOX_KEYS[1:]:
        if name not in fields:
            continue
        entries = [line.strip() for line in fields[name].splitlines() if line.strip()]
        if entries != list(settings.get(name, [])):
            updates[name] = entries
    submitted = {n: fields.get(n, "") for n in SANDBOX_KEYS[1:]}
    return await save_form(request, updates, "/admin/sandbox",
                           lambda status, errors: sandbox_page(request, status, submitted, errors))


async def admin_index(request: web.Request) -> web.Response:
    raise web.HTTPSeeOther("/admin/sandbox")


def setup(app: web.Application) -> None:
    app[IDENTITIES] = {}
    app.router.add_get("/settings", show_settings)
    app.router.add_post("/settings", post_settings)
    app.router.add_get("/settings/credentials", credentials_page)
    app.router.add_post("/settings/credentials/{owner}", store_credential)
    app.router.add_post("/settings/credentials/{owner}/remove", remove_credential)
    app.router.add_get("/admin", admin_index)
    app.router.add_get("/admin/sandbox", show_sandbox)
    app.router.add_post("/admin/sandbox", post_sandbox)
