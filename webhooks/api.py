"""REST API: sessions, their events over SSE, settings and credentials."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import re
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bot.catalog import AGENT_NAMES, CATALOG, canonical_agent_name
from bot.credentials import GITHUB, SETTING_SECRETS, kinds_for
from bot.models import Session, State, Violation
from bot.services import Services
from bot.session_input import InputError, check_allowed, check_prompt, check_ref, parse_repo, repo_policy
from bot.sessions import SOURCES, NewSession, SessionInUse, as_utc
from bot.settings import SettingsError, check_secret_setting, write_config
from webhooks.app import QUEUE, SERVICES, WORKSPACES

SSE_POLL = 0.5
MAX_PROMPT = 50_000
MAX_MODEL = 128  # Session.model's column
MAX_KEY = 200  # an Idempotency-Key: the trigger key column holds 255 with the "api:" prefix
MAX_AFTER = 2**31 - 1  # event seq is a 32-bit integer
IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1," + str(MAX_KEY) + "}$")


def session_json(row: Session) -> dict[str, Any]:
    """The public view of a session."""
    def iso(value: Any) -> str | None:
        value = as_utc(value)
        return value.isoformat() if value else None

    return {
        "id": row.id, "state": row.state, "title": row.title, "prompt": row.prompt, "agent": row.agent,
        "model": row.model, "repo": row.repo, "baseBranch": row.base_branch, "branch": row.branch,
        "commitSha": row.commit_sha, "pullRequest": {"number": row.pr_number, "url": row.pr_url}
        if row.pr_number else None, "progress": row.progress, "source": row.source,
        "requestedBy": row.requested_by, "parentId": row.parent_id, "sandboxSecurity": row.sandbox_security,
        "keepAlive": row.keep_alive, "error": row.error, "warning": row.warning,
        "violationCount": row.violation_count,
        "usage": {"inputTokens": row.input_tokens, "outputTokens": row.output_tokens, "costUsd": row.cost_usd,
                  "budgetUsd": row.budget_usd},
        "createdAt": iso(row.created_at),
        "startedAt": iso(row.started_at), "finishedAt": iso(row.finished_at),
    }


def check_agent(name: str) -> str:
    """The catalogue's name of a known agent, or a clear 400."""
    known = canonical_agent_name(name)
    if known is None:
        raise bad_request(f"unknown agent {name!r}; valid agents: {', '.join(AGENT_NAMES)}")
    return known


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
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise bad_request("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object")
    return body


async def _session_or_404(request: web.Request) -> Session:
    row = await request.app[SERVICES].sessions.get(request.match_info["id"])
    if row is None:
        raise web.HTTPNotFound(text=json.dumps({"error": "no such session"}), content_type="application/json")
    return row


def _text(body: dict[str, Any], name: str, required: bool = False, limit: int = 255) -> str | None:
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
    key = request.headers.get("Idempotency-Key") or (_text(body, "idempotencyKey", limit=MAX_KEY) if body else None)
    if key is None:
        return str(uuid.uuid4())
    if not IDEMPOTENCY_KEY.match(key):
        raise bad_request(f"Idempotency-Key must be 1 to {MAX_KEY} printable ASCII characters without spaces")
    return key


LIST_FILTERS = ("state", "agent", "source", "limit", "cursor")
MAX_LIMIT = 200
STATES = tuple(state.value for state in State)


def _choice(request: web.Request, name: str, valid: tuple[str, ...]) -> str | None:
    value = request.query.get(name)
    if value is None:
        return None
    if name == "agent":
        value = canonical_agent_name(value) or value
    if value not in valid:
        raise bad_request(f"{name} {value!r} is not one of its values; valid values: {', '.join(valid)}")
    return value


def _limit(request: web.Request) -> int:
    text = request.query.get("limit", "50")
    if not re.fullmatch(r"[0-9]{1,4}", text) or not 1 <= int(text) <= MAX_LIMIT:
        raise bad_request(f"limit {text!r} is out of range; give a whole number from 1 to {MAX_LIMIT}")
    return int(text)


def encode_cursor(row: Session) -> str:
    """Where the next page starts: the last row's (created_at, id), opaque to clients."""
    raw = json.dumps([as_utc(row.created_at).isoformat(), row.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str) -> tuple[datetime, str]:
    try:
        at, last_id = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        moment = datetime.fromisoformat(at)
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)), str(last_id)
    except (ValueError, TypeError, binascii.Error):
        raise bad_request("cursor is not one this server gave out: take it from the last page's `cursor`") from None


async def list_sessions(request: web.Request) -> web.Response:
    """Newest first, filtered by state, agent and source, a page of `limit` at a time; `cursor` (from
    the previous page) continues where it ended, whatever was created meanwhile."""
    unknown = sorted(set(request.query) - set(LIST_FILTERS))
    if unknown:
        raise bad_request(f"unknown filter {unknown[0]!r}; valid filters: {', '.join(LIST_FILTERS)}")
    state, agent = _choice(request, "state", STATES), _choice(request, "agent", AGENT_NAMES)
    source, limit = _choice(request, "source", SOURCES), _limit(request)
    cursor = request.query.get("cursor")
    before = decode_cursor(cursor) if cursor else None
    rows = await request.app[SERVICES].sessions.page(limit + 1, state=state, agent=agent, source=source,
                                                     before=before)
    more = len(rows) > limit
    rows = rows[:limit]
    return web.json_response({"sessions": [session_json(r) for r in rows],
                              "cursor": encode_cursor(rows[-1]) if more else None})


def request_digest(kind: str, fields: dict[str, Any]) -> str:
    """What a request asked for, to tell a retry (same Idempotency-Key, same request) from a reuse."""
    return hashlib.sha256(json.dumps([kind, fields], sort_keys=True).encode()).hexdigest()


def check_same_request(key: str, row: Session, digest: str) -> None:
    """422 when the key was first used for another request (rows older than this check carry no digest)."""
    first = (row.context or {}).get("api_request")
    if first is not None and first != digest:
        raise web.HTTPUnprocessableEntity(text=json.dumps({
            "error": f"Idempotency-Key {key!r} was already used for session {row.id} with another request: "
                     "send the same request again, or use a new key"}), content_type="application/json")


async def create_session(request: web.Request) -> web.Response:
    """Record and enqueue a session; Idempotency-Key makes retries safe. Everything is checked first."""
    services: Services = request.app[SERVICES]
    body = await read_json(request)
    prompt = _text(body, "prompt", True, MAX_PROMPT)
    repo_text = _text(body, "repo", True, 1024)
    agent = check_agent(_text(body, "agent") or services.settings.SESAME_DEFAULT_AGENT)
    budget = _budget(body)
    try:
        prompt = check_prompt(prompt)
        base = _text(body, "baseBranch")
        branch = _text(body, "branch")
        base, branch = base and check_ref(base, "base"), branch and check_ref(branch, "branch")
        repo, report = await allowed_repo(services, repo_text or "")
    except InputError as exc:
        raise input_error(exc) from None
    key = idempotency_key(request, body)
    model = _text(body, "model", limit=MAX_MODEL)
    sandbox, keep = bool(body.get("sandboxSecurity", True)), bool(body.get("keepAlive", False))
    digest = request_digest("create", {"prompt": prompt, "repo": repo, "agent": agent, "model": model, "base": base,
                                       "branch": branch, "sandbox": sandbox, "keep": keep, "budget": budget})
    row, created = await services.sessions.create(NewSession(
        trigger_key=f"api:{key}", prompt=prompt, agent=agent, repo=repo, source="api", report=report,
        model=model, base_branch=base, branch=branch, requested_by="api", context={"api_request": digest},
        budget_usd=budget, sandbox_security=sandbox, keep_alive=keep))
    if created:
        await request.app[QUEUE].enqueue(row.id)
    else:
        check_same_request(key, row, digest)
    return web.json_response(session_json(row), status=201 if created else 200)


def _budget(body: dict[str, Any]) -> float | None:
    """The optional `budget` (USD, above zero, at most 1,000,000), or a clear 400."""
    value = body.get("budget")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1_000_000:
        raise bad_request("budget must be a number of USD above zero, e.g. 2.5")
    return float(value)


async def allowed_repo(services: Services, text: str) -> tuple[str, dict[str, Any] | None]:
    """The repository as the session records it, and its report (the App's installation for owner/name),
    if API_REPOS lets the API use it; InputError otherwise."""
    target = parse_repo(text)
    check_allowed(target, repo_policy(services.settings))
    if target.kind != "github":
        return target.value, None
    if not services.settings.GITHUB_APP_ID:
        raise InputError("repo", f"{target.value} names a GitHub repository, but this server has no GitHub App "
                                 "(GITHUB_APP_ID): give an absolute path or a clone URL")
    installation = await services.installations.installation_for(target.value)
    if installation is None:
        raise InputError("repo", f"Sesame's GitHub App is not installed on {target.value} (or the installation "
                                 "is suspended): install it on that repository first")
    return target.value, {"installation_id": installation}


async def get_session(request: web.Request) -> web.Response:
    """The session; once ended, the directory it left on this host (keep alive) and whether the OS
    sandbox applied (the request's sandboxSecurity is only what was asked)."""
    services: Services = request.app[SERVICES]
    row = await _session_or_404(request)
    body = session_json(row)
    sandbox = await services.sessions.last_event(row.id, "sandbox")
    body["sandboxApplied"] = bool(sandbox.data.get("secured")) if sandbox is not None else None
    workspaces = request.app.get(WORKSPACES)
    body["workspace"] = workspaces.kept(row.id) if workspaces is not None and State(row.state).final else None
    return web.json_response(body)


def violation_json(row: Violation) -> dict[str, Any]:
    """One counted violation: what was refused, how often, first and last time."""
    first, last = as_utc(row.first_at), as_utc(row.last_at)
    return {"kind": row.kind, "resource": row.resource, "operation": row.operation, "reason": row.reason,
            "count": row.count, "firstAt": first.isoformat() if first else None,
            "lastAt": last.isoformat() if last else None}


async def session_violations(request: web.Request) -> web.Response:
    """The session's violations, one entry per kind, resource and operation, with counts."""
    row = await _session_or_404(request)
    items = await request.app[SERVICES].sessions.violations(row.id)
    return web.json_response({"total": row.violation_count, "violations": [violation_json(v) for v in items]})


async def patch_session(request: web.Request) -> web.Response:
    """{"action": "stop"} stops it; {"message": "..."} starts a follow-up on its branch."""
    services: Services = request.app[SERVICES]
    row = await _session_or_404(request)
    body = await read_json(request)
    if body.get("action") == "stop":
        stopped = await services.sessions.request_stop(row.id)
        return web.json_response(session_json(stopped or row))
    message = _text(body, "message", True, MAX_PROMPT)
    key = idempotency_key(request)
    agent, model = check_agent(_text(body, "agent") or row.agent), _text(body, "model", limit=MAX_MODEL) or row.model
    child, created = await start_follow_up(request.app, row, message or "", key, agent, model)
    return web.json_response(session_json(child), status=201 if created else 200)


async def start_follow_up(app: web.Application, row: Session, message: str, key: str, agent: str,
                          model: str | None) -> tuple[Session, bool]:
    """Record and enqueue a follow-up of `row` on its branch (it waits for `row` to end); the API and the
    session page's form both start them here. A key reused for another request is a 422."""
    digest = request_digest("follow-up", {"parent": row.id, "message": message, "agent": agent, "model": model})
    child, created = await app[SERVICES].sessions.create(NewSession(
        trigger_key=f"api:{key}", prompt=message, agent=agent,
        repo=row.repo, source=row.source, model=model,
        base_branch=row.base_branch, branch=row.branch, report=row.report,
        context={**(row.context or {}), "api_request": digest},
        requested_by=row.requested_by, parent_id=row.id, sandbox_security=row.sandbox_security,
        keep_alive=row.keep_alive, pr_number=row.pr_number))
    if created:
        await app[QUEUE].enqueue(child.id)
    else:
        check_same_request(key, child, digest)
    return child, created


async def delete_session(request: web.Request) -> web.Response:
    services: Services = request.app[SERVICES]
    row = await _session_or_404(request)
    if not State(row.state).final:
        raise web.HTTPConflict(text=json.dumps({"error": "the session is running: stop it first"}),
                               content_type="application/json")
    try:
        await services.sessions.delete(row.id)
    except SessionInUse:
        return web.json_response({"error": "follow-up sessions refer to this one: delete them first"}, status=409)
    workspaces = request.app.get(WORKSPACES)
    if workspaces is not None:  # a kept workspace goes with its session
        await workspaces.remove(row.id)
    return web.Response(status=204)


async def session_events(request: web.Request) -> web.StreamResponse:
    """SSE: replay after Last-Event-ID, then follow until the session has ended."""
    services: Services = request.app[SERVICES]
    row = await _session_or_404(request)
    text = request.headers.get("Last-Event-ID") or request.query.get("after") or "0"
    if not re.fullmatch(r"[0-9]{1,10}", text.strip()) or int(text) > MAX_AFTER:
        raise bad_request(f"Last-Event-ID must be a whole number from 0 to {MAX_AFTER}")
    after = int(text)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
    await response.prepare(request)
    while True:
        events = await services.sessions.events(row.id, after)
        if events:  # a page of events per write (a chatty agent's lines come in chunks of a thousand)
            page = []
            for event in events:
                payload = json.dumps({"kind": event.kind, "data": event.data,
                                      "at": as_utc(event.created_at).isoformat()})
                page.append(f"id: {event.seq}\nevent: {event.kind}\ndata: {payload}\n\n")
            await response.write("".join(page).encode())
            after = events[-1].seq
        if not events:
            current = await services.sessions.get(row.id)
            if current is None or State(current.state).final:
                break
            await response.write(b": keep-alive\n\n")
            await asyncio.sleep(SSE_POLL)
    await response.write(b"event: end\ndata: {}\n\n")
    return response


async def get_settings(request: web.Request) -> web.Response:
    """The settings in force (the config file re-read if it changed), secrets masked."""
    services: Services = request.app[SERVICES]
    services.settings.refresh(min_interval=0)
    return web.json_response(await _settings_body(services))


async def _settings_body(services: Services) -> dict[str, Any]:
    """The settings as the API shows them: a secret stored sealed in the database shows as set there."""
    settings = services.settings
    shown = settings.public()
    for name, owner in SETTING_SECRETS.items():
        if not settings.locked(name) and await services.credentials.kinds(owner):
            shown[name] |= {"value": "********", "source": "database"}
    return {"configFile": str(settings.config_path) if settings.config_path else None,
            "settings": shown, "restartRequired": sorted(settings.restart_pending)}


async def put_settings(request: web.Request) -> web.Response:
    """Write keys to the config file (keeping its format and comments) and apply them at once where
    that is safe; a secret goes sealed into the database, never into the file. Locked keys are refused
    with 409, invalid values with 400, and then nothing is written."""
    services: Services = request.app[SERVICES]
    body = await read_json(request)
    if not isinstance(body, dict) or not body:
        return web.json_response({"error": "send an object of setting names and values"}, status=400)
    settings = services.settings
    secrets = {name: body.pop(name) for name in list(body) if name in SETTING_SECRETS}
    path = settings.config_path or Path.cwd() / "config.json"
    try:
        for name, value in secrets.items():
            check_secret_setting(settings, name, value)
        fresh = write_config(path, body, settings, env=settings.env) if body else None
    except SettingsError as exc:
        return web.json_response({"error": str(exc), "key": exc.key}, status=409 if "locked" in str(exc) else 400)
    for name, value in secrets.items():
        if value in (None, ""):
            await services.credentials.delete(SETTING_SECRETS[name])
        else:
            await services.credentials.put(SETTING_SECRETS[name], "api_key", str(value))
    if fresh is not None:
        settings.apply(fresh)
    return web.json_response(await _settings_body(services))


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
    values = services.settings.values
    return [{"name": name, "source": services.settings.sources.get(name), "locked": True}
            for name in names if values.get(name)]


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
    value = (_text(body, "value", True, 20_000) or "").strip()
    if not value or any(ch.isspace() for ch in value):
        raise bad_request("value must be the credential itself, without spaces or line breaks")
    services: Services = request.app[SERVICES]
    extra: dict[str, Any] = {}
    if kind == "github_pat":
        login = await _check_pat(services, value)
        extra = {"login": login}
    await services.credentials.put(owner, kind, value)
    if kind == "github_pat":
        services.caches.commit_author = None  # the next commit looks the new PAT's identity up
    return await _credentials_body(request, owner, **extra)


PAT_CHECK_SECONDS = 10.0  # a request waits this long for GitHub's answer about a PAT, retries included


async def _check_pat(services: Services, token: str) -> str:
    """The PAT's login, or a 400 (GitHub refused it) or 502 (GitHub did not answer) in one sentence."""
    import gidgethub

    from bot.github import pat_identity

    api = services.settings.GITHUB_API_URL
    try:
        async with asyncio.timeout(PAT_CHECK_SECONDS):
            deadline = time.monotonic() + PAT_CHECK_SECONDS / 2
            return (await pat_identity(services.http, api, token, deadline=deadline)).login
    except gidgethub.BadRequest as exc:  # 4xx: 401 bad credentials, 403 not allowed
        status = int(exc.status_code)
        raise bad_request(f"GitHub refused this token ({status}): check it was copied whole and has not "
                          "expired or been revoked; nothing was stored") from None
    except (gidgethub.GitHubException, aiohttp.ClientError, TimeoutError) as exc:
        raise web.HTTPBadGateway(text=json.dumps({"error": f"GitHub at {api} did not answer the token check "
                                                           f"({type(exc).__name__}); nothing was stored, try again"}),
                                 content_type="application/json") from None


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


def setup(app: web.Application) -> None:
    """Mount the REST API."""
    app.router.add_get("/api/sesame/{path:.+}", sesame_api)
    app.router.add_get("/api/session", list_sessions)
    app.router.add_post("/api/session", create_session)
    app.router.add_get("/api/session/{id}", get_session)
    app.router.add_patch("/api/session/{id}", patch_session)
    app.router.add_delete("/api/session/{id}", delete_session)
    app.router.add_get("/api/session/{id}/events", session_events)
    app.router.add_get("/api/session/{id}/violations", session_violations)
    app.router.add_get("/api/settings", get_settings)
    app.router.add_put("/api/settings", put_settings)
    app.router.add_get("/api/credentials/{agent}", get_credentials)
    app.router.add_put("/api/credentials/{agent}", put_credentials)
    app.router.add_delete("/api/credentials/{agent}", delete_credentials)
