"""The web pages: the sessions list and a session's page, rendered from Jinja2 templates (autoescaped),
usable without JavaScript (forms POST with a CSRF token, then redirect) and live with webhooks/static/live.js."""

from __future__ import annotations

import hmac
import json
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import jinja2
from aiohttp import web

from bot.catalog import AGENT_NAMES, display_name
from bot.models import Session, State
from bot.progress import STEP_LABELS, STEPS, usage_line
from bot.reporting import session_progress
from bot.sessions import SOURCES, EventRow, SessionInUse, as_utc
from bot.untrusted import one_line, strip_controls
from webhooks.api import (
    MAX_PROMPT,
    STATES,
    _choice,
    _limit,
    decode_cursor,
    encode_cursor,
    idempotency_key,
    start_follow_up,
)
from webhooks.app import SERVICES, Handler

PAGE_SIZE = 50
LIST_PARAMS = ("state", "repo", "agent", "source", "limit", "cursor")
CSRF_COOKIE = "sesame_csrf"
CSRF_FIELD = "csrf"
LOG_LINE_LIMIT = 2000
LOG_LINES = 5000  # a page shows the first ones; live.js streams the rest after them
# No inline script or style anywhere: what a page runs is webhooks/static/live.js, served from here.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SOURCE_LABELS = {"github": "GitHub", "slack": "Slack", "api": "API", "cli": "CLI"}
STATIC = Path(str(resources.files("webhooks") / "static"))

ENV = jinja2.Environment(loader=jinja2.PackageLoader("webhooks", "templates"), autoescape=True,
                         undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def _clock(value: datetime | None) -> str:
    value = as_utc(value)
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else ""


def duration(seconds: float | None) -> str:
    """`1h 02m`, `3m 07s`, `4.2s`; empty for None."""
    if seconds is None:
        return ""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    return f"{whole // 3600}h {whole % 3600 // 60:02d}m"


def session_duration(row: Session, now: datetime | None = None) -> float | None:
    """Seconds it ran (so far, while it runs); None before it started."""
    started, finished = as_utc(row.started_at), as_utc(row.finished_at)
    if started is None:
        return None
    return ((finished or now or datetime.now(UTC)) - started).total_seconds()


def cost(value: float | None) -> str:
    return f"${value:,.2f}" if value is not None else ""


ENV.filters.update(clock=_clock, duration=duration, cost=cost, agent_name=display_name,
                   source_name=lambda s: SOURCE_LABELS.get(s, s), clean=strip_controls)


def render(request: web.Request, template: str, status: int = 200, notices: Mapping[str, str] | None = None,
           **context: Any) -> web.Response:
    """A page from its template, with the CSRF token (its cookie set when new) and the CSP, and the notice
    of notices that the form's redirect (done()) asked for."""
    token = request.cookies.get(CSRF_COOKIE) or ""
    fresh = not _token_shape(token)
    if fresh:
        token = secrets.token_urlsafe(32)
    notice = (notices or {}).get(request.query.get("done", ""), "")
    text = ENV.get_template(template).render(csrf=token, notice=notice, **context)
    response = web.Response(text=text, status=status, content_type="text/html",
                            headers={"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                                     "Referrer-Policy": "same-origin", "Cache-Control": "no-store"})
    if fresh:
        response.set_cookie(CSRF_COOKIE, token, httponly=True, samesite="Strict", path="/",
                            secure=request.secure)
    return response


def _token_shape(token: str) -> bool:
    return 32 <= len(token) <= 64 and token.replace("-", "").replace("_", "").isalnum()


async def check_csrf(request: web.Request) -> dict[str, str]:
    """The form's fields, once it proves it came from one of our pages: its token matches the cookie
    (a page elsewhere can neither read nor set it), and the browser does not call it cross-site."""
    try:
        form = await request.post()
    except (ValueError, LookupError):  # bytes not in the charset named (UTF-8 by default), an unknown charset,
        # a multipart body without its boundary
        raise PageError(400, "This form could not be read: its body is not a form in text of the character set it "
                             "names (UTF-8 when it names none). Reload the page and send it again.") from None
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    cookie, given = request.cookies.get(CSRF_COOKIE, ""), fields.get(CSRF_FIELD, "")
    cross = request.headers.get("Sec-Fetch-Site") == "cross-site" or not _same_origin(request)
    if cross or not cookie or not hmac.compare_digest(cookie.encode(), given.encode()):
        raise PageError(403, "This form was refused: it did not carry this server's token (a form from another "
                             "site, or a page loaded before the server's cookie was set). Reload the page and "
                             "send it again.")
    return fields


def done(path: str, what: str, anchor: str = "") -> web.HTTPSeeOther:
    """Where a handled form goes (POST, then GET): path, whose page shows its notice for what."""
    return web.HTTPSeeOther(f"{path}?done={what}" + (f"#{anchor}" if anchor else ""))


def _same_origin(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    if not origin or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.host


class PageError(Exception):
    """An HTML error page: its status and one sentence."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _api_error(exc: web.HTTPException) -> PageError:
    try:
        message = str(json.loads(exc.text or "{}")["error"])
    except (ValueError, KeyError, TypeError):
        message = exc.reason
    return PageError(exc.status, message)


async def list_page(request: web.Request) -> web.Response:
    """The sessions, newest first, filtered like the API (a bad filter is a 400 saying what is valid)."""
    services = request.app[SERVICES]
    query = {k: v for k, v in request.query.items() if v != "" and k != "done"}
    unknown = sorted(set(query) - set(LIST_PARAMS))
    if unknown:
        raise PageError(400, f"unknown filter {unknown[0]!r}; valid filters: {', '.join(LIST_PARAMS)}")
    scoped = request.clone(rel_url=request.rel_url.with_query(query))
    try:
        state, agent = _choice(scoped, "state", STATES), _choice(scoped, "agent", AGENT_NAMES)
        source, limit = _choice(scoped, "source", SOURCES), _limit(scoped) if "limit" in query else PAGE_SIZE
        before = decode_cursor(query["cursor"]) if "cursor" in query else None
    except web.HTTPBadRequest as exc:
        raise _api_error(exc) from None
    repo = query.get("repo")
    repos = await services.sessions.repos()
    if repo is not None and not (len(repo) <= 1024 and "\x00" not in repo and await services.sessions.has_repo(repo)):
        shown = ", ".join(repos[:20]) + (", ..." if len(repos) > 20 else "")
        raise PageError(400, f"repo {one_line(repo, 200)!r} has no sessions; valid repos: {shown or 'none yet'}")
    rows = await services.sessions.page(limit + 1, state=state, agent=agent, source=source, before=before, repo=repo)
    older = None
    if len(rows) > limit:
        rows = rows[:limit]
        older = "?" + urlencode({k: v for k, v in query.items() if k != "cursor"} | {"cursor": encode_cursor(rows[-1])})
    now = datetime.now(UTC)
    counts = await services.sessions.count_by_state()
    filters = {"state": state or "", "repo": repo or "", "agent": agent or "", "source": source or ""}
    live = {"ids": ",".join(row.id for row in rows)}
    if before is None:  # the first page also hears of sessions created after it was rendered
        live |= {"new": encode_cursor(rows[0]) if rows else ""} | {k: v for k, v in filters.items() if v}
    chosen = urlencode({k: v for k, v in filters.items() if v})
    return render(request, "list.html", title="Sessions", rows=rows, now=now, older=older, live=urlencode(live),
                  here="/sessions" + (f"?{chosen}" if chosen else ""),
                  counts=[(s, counts.get(s, 0)) for s in STATES], total=sum(counts.values()),
                  filters=filters, states=STATES, agents=AGENT_NAMES, sources=SOURCES, repos=repos,
                  session_duration=session_duration,
                  first_page=before is None, notices=NOTICES)


@dataclass
class Step:
    name: str
    label: str
    status: str
    detail: str
    at: datetime | None
    took: float | None


def steps_of(row: Session, events: list[EventRow]) -> list[Step]:
    """Each pipeline step with its last status and its time (from its first to its last step event)."""
    first: dict[str, datetime] = {}
    last: dict[str, tuple[str, str, datetime]] = {}
    for event in events:
        if event.kind != "step":
            continue
        name, at = str(event.data.get("step", "")), as_utc(event.created_at)
        first.setdefault(name, at)
        last[name] = (str(event.data.get("status", "")), str(event.data.get("detail") or ""), at)
    steps = [Step("queued", STEP_LABELS["queued"], "done", "", as_utc(row.created_at),
                  (as_utc(row.started_at) - as_utc(row.created_at)).total_seconds() if row.started_at else None)]
    for name in STEPS[1:]:
        if name not in last:
            steps.append(Step(name, STEP_LABELS[name], "pending", "", None, None))
            continue
        status, detail, at = last[name]
        if status == "running" and State(row.state).final:  # as its progress message ends it
            status = "done" if row.state == State.COMPLETED.value else "failed"
        took = (at - first[name]).total_seconds() if status != "running" else None
        steps.append(Step(name, STEP_LABELS[name], status, one_line(detail, 300), first[name], took))
    return steps


@dataclass
class LogLine:
    seq: int
    at: datetime
    kind: str
    text: str
    css: str


def log_line(event: EventRow) -> LogLine:
    """One event as a person reads it: what happened, in words, freed of terminal controls."""
    d, kind = event.data or {}, event.kind
    text, css = "", kind
    if kind in ("message", "tool_call", "file_edit", "result", "usage", "raw", "error"):
        text = str(d.get("summary") or d.get("message") or "")
        if kind == "tool_call" and d.get("tool") and str(d["tool"]) not in text:
            text = f"{d['tool']}: {text}"
    elif kind == "agent_stderr":
        text = str(d.get("line", ""))
    elif kind == "step":
        text = f"{STEP_LABELS.get(str(d.get('step')), d.get('step'))}: {d.get('status')}"
        text += f" ({d['detail']})" if d.get("detail") else ""
    elif kind == "status":
        text = f"Session {d.get('state')}" + (f": {d['error']}" if d.get("error") else "")
        css = "error" if d.get("error") else kind
    elif kind == "commit":
        text = f"Committed {str(d.get('sha', ''))[:12]}: {d.get('message', '')}"
    elif kind == "push":
        text = f"Pushed {d.get('branch')} at {str(d.get('sha', ''))[:12]}" + (" (partial)" if d.get("partial") else "")
    elif kind == "pull_request":
        text = f"Pull request #{d.get('number')} {'opened' if d.get('created') else 'updated'}: {d.get('url')}"
    elif kind == "warning":
        text = str(d.get("message", ""))
    elif kind == "agent_failure":
        text = f"Agent failed ({d.get('cause')}" + (f", HTTP {d['status']}" if d.get("status") else "") + ")"
        css = "error"
    elif kind == "violation":
        text = f"Blocked {d.get('kind')} {d.get('operation')} {d.get('resource')} ×{d.get('count', 1)}"
    elif kind == "cleanup":
        text = "Workspace kept" if d.get("kept") else "Workspace removed"
    if not text:
        text = json.dumps(d, ensure_ascii=False)[:LOG_LINE_LIMIT]
    text = strip_controls(text)
    if len(text) > LOG_LINE_LIMIT:
        text = text[: LOG_LINE_LIMIT - 1] + "…"
    return LogLine(event.seq, as_utc(event.created_at), kind, text, css)


def web_links(row: Session) -> dict[str, str]:
    """Links to the pull request, the commit and the branch where the repository is on a web host."""
    links: dict[str, str] = {}
    if row.pr_url and row.pr_url.startswith(("https://", "http://")):
        links["pr"] = row.pr_url
        base = row.pr_url.rsplit("/pull/", 1)[0]
        if row.commit_sha:
            links["commit"] = f"{base}/commit/{row.commit_sha}"
        if row.branch:
            links["branch"] = f"{base}/tree/{row.branch}"
    return links


async def _session(request: web.Request) -> Session:
    row = await request.app[SERVICES].sessions.get(request.match_info["id"])
    if row is None:
        raise PageError(404, "There is no session with this id (it may have been deleted).")
    return row


async def session_page(request: web.Request) -> web.Response:
    """A session: prompt, steps, log, violations, links, usage, and its controls; the log follows live."""
    services = request.app[SERVICES]
    row = await _session(request)
    events = await services.sessions.events(row.id, limit=LOG_LINES)
    lines = [log_line(e) for e in events]
    final = State(row.state).final
    sandbox = await services.sessions.last_event(row.id, "sandbox")
    return render(
        request, "session.html", title=one_line(row.title or row.prompt, 80), row=row, final=final,
        steps=steps_of(row, events), lines=lines, cut=len(events) == LOG_LINES, after=events[-1].seq if events else 0,
        violations=await services.sessions.violations(row.id), links=web_links(row),
        usage=usage_line(session_progress(services, row, row.state)), ran=session_duration(row),
        waited=(as_utc(row.started_at) - as_utc(row.created_at)).total_seconds() if row.started_at else None,
        follow_key=str(uuid.uuid4()), notices=NOTICES,
        max_prompt=MAX_PROMPT, sandbox_applied=bool(sandbox.data.get("secured")) if sandbox is not None else None)


NOTICES = {"started": "Session started.", "stopped": "Stop requested.",
           "follow-up": "Follow-up queued: it starts when this session has ended.",
           "deleted": "Session deleted."}


async def stop_form(request: web.Request) -> web.Response:
    await check_csrf(request)
    row = await _session(request)
    await request.app[SERVICES].sessions.request_stop(row.id)
    raise done(f"/sessions/{row.id}", "stopped")


async def follow_up_form(request: web.Request) -> web.Response:
    fields = await check_csrf(request)
    row = await _session(request)
    message = fields.get("message", "").strip()
    if not message or len(message) > MAX_PROMPT or "\x00" in message:
        raise PageError(400, f"Write the follow-up message (1 to {MAX_PROMPT:,} characters) and send it again.")
    if row.state == State.PENDING.value:
        raise PageError(409, "This session has not started yet: send a follow-up once it runs or has ended.")
    try:
        key = idempotency_key(request, {"idempotencyKey": fields.get("key") or None})
        child, _created = await start_follow_up(request.app, row, message, key, row.agent, row.model)
    except (web.HTTPBadRequest, web.HTTPUnprocessableEntity) as exc:
        raise _api_error(exc) from None
    raise done(f"/sessions/{child.id}", "follow-up")


async def delete_form(request: web.Request) -> web.Response:
    await check_csrf(request)
    row = await _session(request)
    if not State(row.state).final:
        raise PageError(409, "This session is still running: stop it first, then delete it.")
    try:
        await request.app[SERVICES].sessions.delete(row.id)
    except SessionInUse:
        raise PageError(409, "Follow-up sessions refer to this one: delete them first.") from None
    raise done("/sessions", "deleted")


@web.middleware
async def error_pages(request: web.Request, handler: Handler) -> web.StreamResponse:
    """HTML error pages for the pages (the API keeps its JSON): a PageError, or a path nobody serves."""
    api = request.path.startswith(("/api/", "/webhooks/", "/slack/"))
    try:
        return await handler(request)
    except PageError as exc:
        return render(request, "error.html", status=exc.status, title=f"Error {exc.status}", message=exc.message)
    except web.HTTPNotFound:
        if api:
            raise
        return render(request, "error.html", status=404, title="Not found",
                      message="Nothing lives at this address. The sessions list is at /sessions.")


STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}


async def static_file(request: web.Request) -> web.FileResponse:
    """One of webhooks/static's files (no directories, nothing else)."""
    name = request.match_info.get("name", "favicon.svg")
    path = STATIC / name
    if "/" in name or name.startswith(".") or not path.is_file():
        raise PageError(404, "Nothing lives at this address. The sessions list is at /sessions.")
    return web.FileResponse(path, headers={"Content-Type": STATIC_TYPES.get(path.suffix, "application/octet-stream"),
                                           "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})


def setup(app: web.Application) -> None:
    app.middlewares.append(error_pages)
    app.router.add_get("/", list_page)
    app.router.add_get("/sessions", list_page)
    app.router.add_get("/sessions/{id}", session_page)
    app.router.add_post("/sessions/{id}/stop", stop_form)
    app.router.add_post("/sessions/{id}/follow-up", follow_up_form)
    app.router.add_post("/sessions/{id}/delete", delete_form)
    app.router.add_get("/favicon.ico", static_file)
    app.router.add_get("/static/{name}", static_file)
