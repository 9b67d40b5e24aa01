"""REST resource /api/session: list, create, read, follow up, stop and delete sessions, and their violations."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import re
import uuid
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from bot.catalog import AGENT_NAMES, canonical_agent_name
from bot.models import Session, State, Violation
from bot.repo_config import follow_up_choice, trigger_choice
from bot.services import Services
from bot.session_input import InputError, check_model, check_prompt, check_ref, request_digest, resolve_repo
from bot.sessions import SOURCES, NewSession, SessionInUse, as_utc, holdable
from bot.triggers import MAX_BEST_OF
from webhooks.api.common import (
    MAX_MODEL,
    MAX_PROMPT,
    bad_request,
    idempotency_key,
    input_error,
    read_json,
    session_or_404,
    text_field,
)
from webhooks.api.models import models_by_agent
from webhooks.keys import QUEUE, SERVICES, WORKSPACES


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


LIST_FILTERS = ("state", "agent", "source", "limit", "cursor")
MAX_LIMIT = 200
STATES = tuple(state.value for state in State)


def choice(request: web.Request, name: str, valid: tuple[str, ...]) -> str | None:
    value = request.query.get(name)
    if value is None:
        return None
    if name == "agent":
        value = canonical_agent_name(value) or value
    if value not in valid:
        raise bad_request(f"{name} {value!r} is not one of its values; valid values: {', '.join(valid)}")
    return value


def limit_param(request: web.Request) -> int:
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
        if not holdable(str(last_id)):  # a NUL or a lone surrogate, which no query can carry
            raise ValueError(last_id)
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)), str(last_id)
    except (ValueError, TypeError, binascii.Error, RecursionError):  # RecursionError: nested too deep
        raise bad_request("cursor is not one this server gave out: take it from the last page's `cursor`") from None


async def list_sessions(request: web.Request) -> web.Response:
    """Newest first, filtered by state, agent and source, a page of `limit` at a time; `cursor` (from
    the previous page) continues where it ended, whatever was created meanwhile."""
    unknown = sorted(set(request.query) - set(LIST_FILTERS))
    if unknown:
        raise bad_request(f"unknown filter {unknown[0]!r}; valid filters: {', '.join(LIST_FILTERS)}")
    state, agent = choice(request, "state", STATES), choice(request, "agent", AGENT_NAMES)
    source, limit = choice(request, "source", SOURCES), limit_param(request)
    cursor = request.query.get("cursor")
    before = decode_cursor(cursor) if cursor else None
    rows = await request.app[SERVICES].sessions.page(limit + 1, state=state, agent=agent, source=source,
                                                     before=before)
    more = len(rows) > limit
    rows = rows[:limit]
    return web.json_response({"sessions": [session_json(r) for r in rows],
                              "cursor": encode_cursor(rows[-1]) if more else None})


def check_same_request(key: str, row: Session, digest: str) -> None:
    """422 when the key was first used for another request (rows older than this check carry no digest)."""
    first = (row.context or {}).get("api_request")
    if first is not None and first != digest:
        raise web.HTTPUnprocessableEntity(text=json.dumps({
            "error": f"Idempotency-Key {key!r} was already used for session {row.id} with another request: "
                     "send the same request again, or use a new key"}), content_type="application/json")


def check_agents(body: dict[str, Any]) -> list[str] | None:
    """The body's `agents` for best-of-N (2 to MAX_BEST_OF known agents, repeats allowed), None without it; a
    clear 400 for anything else, and for what cannot go with several agents (`agent`, `model`, `branch`)."""
    value = body.get("agents")
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise bad_request('agents must be a list of agent names, e.g. ["claude", "codex"]')
    if not 2 <= len(value) <= MAX_BEST_OF:
        raise bad_request(f"agents must name 2 to {MAX_BEST_OF} agents (it names {len(value)}); "
                          "for one agent, give `agent`")
    for name, why in (("agent", "give `agent` for one session or `agents` for several, not both"),
                      ("model", "each of several agents runs its own default model: leave `model` out"),
                      ("branch", "each of several agents works on a new branch of its own: leave `branch` out")):
        if body.get(name) is not None:
            raise bad_request(f"{name} cannot go with agents: {why}")
    return [check_agent(name) for name in value]


async def create_session(request: web.Request) -> web.Response:
    """Record and enqueue a session (or, with `agents`, a best-of-N group of them); Idempotency-Key makes
    retries safe. Everything is checked first."""
    services: Services = request.app[SERVICES]
    body = await read_json(request)
    prompt = text_field(body, "prompt", True, MAX_PROMPT)
    repo_text = text_field(body, "repo", True, 1024)
    agents = check_agents(body)
    named = agents[0] if agents else text_field(body, "agent")  # best-of-N names each session's agent
    agent = check_agent(named or services.settings.SESAME_DEFAULT_AGENT)
    budget = _budget(body)
    try:
        prompt = check_prompt(prompt)
        base = text_field(body, "baseBranch")
        branch = text_field(body, "branch")
        base, branch = base and check_ref(base, "base"), branch and check_ref(branch, "branch")
        repo, report = await resolve_repo(services.settings, services.installations, repo_text or "")
    except InputError as exc:
        raise input_error(exc) from None
    key = idempotency_key(request, body)
    model = text_field(body, "model", limit=MAX_MODEL)
    await _check_model(request.app, agent, model)
    sandbox, keep = bool(body.get("sandboxSecurity", True)), bool(body.get("keepAlive", False))
    fields = {"prompt": prompt, "repo": repo, "agent": agent, "model": model, "base": base, "branch": branch,
              "sandbox": sandbox, "keep": keep, "budget": budget}
    digest = request_digest("create", fields if agents is None else {**fields, "agents": agents})
    new = NewSession(
        trigger_key=f"api:{key}", prompt=prompt, agent=agent, repo=repo, source="api", report=report,
        model=model, base_branch=base, branch=branch, requested_by="api",
        context={"api_request": digest, **trigger_choice(named, model)},
        budget_usd=budget, sandbox_security=sandbox, keep_alive=keep)
    if agents is not None:
        return await create_group(request, agents, key, digest, new)
    row, created = await services.sessions.create(new)
    if created:
        await request.app[QUEUE].enqueue(row.id)
    else:
        check_same_request(key, row, digest)
    return web.json_response(session_json(row), status=201 if created else 200)


async def create_group(request: web.Request, agents: list[str], key: str, digest: str,
                       single: NewSession) -> web.Response:
    """Best-of-N (issue 18): one session per agent, numbered 1..N in one group (bot/best_of.py), each on a
    new branch; a retry with the same Idempotency-Key answers the group it made (its first session names it)."""
    services: Services = request.app[SERVICES]
    group, rows, fresh = str(uuid.uuid4()), [], False
    for index, agent in enumerate(agents, 1):
        context = {**(single.context or {}), "best_of": {"group": group, "index": index, "of": len(agents)}}
        row, created = await services.sessions.create(dataclasses.replace(
            single, trigger_key=f"api:{key}:{index}", agent=agent, context=context))
        if index == 1 and not created:
            check_same_request(key, row, digest)
            group = str(((row.context or {}).get("best_of") or {}).get("group") or group)
        if created:
            await request.app[QUEUE].enqueue(row.id)
        fresh = fresh or created
        rows.append(row)
    return web.json_response({"group": group, "sessions": [session_json(r) for r in rows]},
                             status=201 if fresh else 200)


async def _check_model(app: web.Application, agent: str, model: str | None) -> None:
    """A 400 naming the model and the agent when the model is not one of the agent's (as the session form)."""
    if model is None:
        return
    try:
        check_model(agent, model, await models_by_agent(app))
    except InputError as exc:
        raise input_error(exc) from None


def _budget(body: dict[str, Any]) -> float | None:
    """The optional `budget` (USD, above zero, at most 1,000,000), or a clear 400."""
    value = body.get("budget")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1_000_000:
        raise bad_request("budget must be a number of USD above zero, e.g. 2.5")
    return float(value)


async def get_session(request: web.Request) -> web.Response:
    """The session; once ended, the directory it left on this host (keep alive) and whether the OS
    sandbox applied (the request's sandboxSecurity is only what was asked)."""
    services: Services = request.app[SERVICES]
    row = await session_or_404(request)
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
    row = await session_or_404(request)
    items = await request.app[SERVICES].sessions.violations(row.id)
    return web.json_response({"total": row.violation_count, "violations": [violation_json(v) for v in items]})


async def patch_session(request: web.Request) -> web.Response:
    """{"action": "stop"} stops it; {"message": "..."} starts a follow-up on its branch."""
    services: Services = request.app[SERVICES]
    row = await session_or_404(request)
    body = await read_json(request)
    if body.get("action") == "stop":
        stopped = await services.sessions.request_stop(row.id)
        return web.json_response(session_json(stopped or row))
    message = text_field(body, "message", True, MAX_PROMPT)
    key = idempotency_key(request)
    named = text_field(body, "agent")
    agent = check_agent(named or row.agent)
    asked = text_field(body, "model", limit=MAX_MODEL)
    await _check_model(request.app, agent, asked)
    model = asked or row.model
    child, created = await start_follow_up(request.app, row, message or "", key, agent, model, (named, asked))
    return web.json_response(session_json(child), status=201 if created else 200)


async def start_follow_up(app: web.Application, row: Session, message: str, key: str, agent: str,
                          model: str | None, asked: tuple[str | None, str | None] = (None, None),
                          ) -> tuple[Session, bool]:
    """Record and enqueue a follow-up of `row` on its branch (it waits for `row` to end); the API and the
    session page's form both start them here. A key reused for another request is a 422. `asked`: the
    agent and model the request itself named (the rest is taken over from `row`)."""
    digest = request_digest("follow-up", {"parent": row.id, "message": message, "agent": agent, "model": model})
    child, created = await app[SERVICES].sessions.create(NewSession(
        trigger_key=f"api:{key}", prompt=message, agent=agent,
        repo=row.repo, source=row.source, model=model,
        base_branch=row.base_branch, branch=row.branch, report=row.report,
        context={**(row.context or {}), "api_request": digest, **follow_up_choice(row.context or {}, *asked)},
        requested_by=row.requested_by, parent_id=row.id, sandbox_security=row.sandbox_security,
        keep_alive=row.keep_alive, pr_number=row.pr_number))
    if created:
        await app[QUEUE].enqueue(child.id)
    else:
        check_same_request(key, child, digest)
    return child, created


async def delete_session(request: web.Request) -> web.Response:
    services: Services = request.app[SERVICES]
    row = await session_or_404(request)
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
