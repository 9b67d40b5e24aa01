"""Best-of-N over the REST API (issue 18): POST /api/session with `agents` starts a group (one session per
agent, bot/best_of.py), GET /api/best-of/{group} compares it, POST /api/best-of/{group}/pick takes one the
way `@sesame pick` does (bot/best_of_pick.py)."""

from __future__ import annotations

import json
import re
from typing import Any

import aiohttp
import gidgethub
from aiohttp import web

from bot.best_of import ENDED, facts_of, sessions_of
from bot.best_of_pick import PickRefused, pick_session
from bot.catalog import canonical_agent_name
from bot.github_channel import GitHubAppNotConfigured
from bot.models import Session
from bot.services import Services
from webhooks.api.common import bad_request, read_json
from webhooks.api.sessions import session_json
from webhooks.keys import SERVICES

GROUP = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")  # a delivery id (GitHub) or a uuid (the API)
MAX_PICK = 64


async def _group_or_404(request: web.Request) -> list[Session]:
    group = request.match_info["group"]
    rows = await sessions_of(request.app[SERVICES], None, group) if GROUP.fullmatch(group) else []
    if not rows:
        raise web.HTTPNotFound(text=json.dumps({"error": f"no best-of-N group {group[:80]!r}"}),
                               content_type="application/json")
    return rows


def _entry(index: int, row: Session, fact: dict[str, Any]) -> dict[str, Any]:
    """One session as the comparison shows it (bot/best_of.py's table), as JSON."""
    took = (row.finished_at - row.started_at).total_seconds() if row.finished_at and row.started_at else None
    return {"index": index, "id": row.id, "agent": row.agent, "state": row.state,
            "branch": row.branch if row.commit_sha else None, "commitSha": row.commit_sha,
            "files": fact.get("files"), "tests": fact.get("tests"), "durationSeconds": took,
            "costUsd": row.cost_usd, "violations": row.violation_count, "error": row.error,
            "pullRequest": {"number": row.pr_number, "url": row.pr_url} if row.pr_number else None}


async def get_group(request: web.Request) -> web.Response:
    """The group's sessions with what the comparison shows of each: files changed, tests, duration, cost,
    violations, branch; `ended` once all have, `picked` the session whose work became the change."""
    services: Services = request.app[SERVICES]
    rows = await _group_or_404(request)
    entries = [_entry(i, row, await facts_of(services, row)) for i, row in enumerate(rows, 1)]
    picked = next((row.id for row in rows if row.pr_number), None)
    return web.json_response({"group": request.match_info["group"], "repo": rows[0].repo,
                              "source": rows[0].source, "prompt": rows[0].prompt,
                              "ended": all(row.state in ENDED for row in rows), "picked": picked,
                              "sessions": entries})


async def pick(request: web.Request) -> web.Response:
    """{"pick": "2"} or {"pick": "codex"}: that session's branch becomes a pull request (or, for a group on
    a pull request, that PR's branch moves to its commit), as `@sesame pick` does."""
    services: Services = request.app[SERVICES]
    rows = await _group_or_404(request)
    body = await read_json(request)
    value = body.get("pick")
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not 0 < len(value) <= MAX_PICK:
        raise bad_request('pick must name one session of the group: its number ("2") or its agent ("codex")')
    choice = value if value.isdigit() else (canonical_agent_name(value) or value.lower())
    try:
        picked = await pick_session(services, rows, choice)
    except PickRefused as exc:
        status = web.HTTPBadRequest if exc.status == 400 else web.HTTPConflict
        raise status(text=json.dumps({"error": f"cannot pick that: {exc.why}"}),
                     content_type="application/json") from None
    except GitHubAppNotConfigured as exc:  # the group went through an installation; the App is gone since
        raise web.HTTPServiceUnavailable(text=json.dumps({"error": f"cannot pick that: {exc}"}),
                                         content_type="application/json") from None
    except gidgethub.HTTPException as exc:
        raise web.HTTPBadGateway(text=json.dumps({"error": f"GitHub refused the pick ({exc}); try again"}),
                                 content_type="application/json") from None
    except (aiohttp.ClientError, TimeoutError) as exc:  # after the client's retries: nothing was picked
        why = type(exc).__name__
        raise web.HTTPBadGateway(text=json.dumps({"error": f"GitHub did not answer the pick ({why}); try again"}),
                                 content_type="application/json") from None
    row = await services.sessions.get(picked.session.id) or picked.session
    return web.json_response({
        "group": request.match_info["group"], "session": session_json(row), "moved": picked.moved,
        "pullRequest": {"number": picked.number, "url": picked.url, "created": picked.created}
        if picked.number is not None else None})
