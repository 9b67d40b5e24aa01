"""The session form, /sessions/new: repository, prompt, agent, model, base branch, sandbox and keep alive; it
records and enqueues a session as POST /api/session does (same checks, same sentences) and opens its page."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from bot.catalog import AGENT_SPECS, CATALOG, find_agent_binary
from bot.repo_config import trigger_choice
from bot.services import Services
from bot.session_input import (
    InputError,
    check_model,
    check_prompt,
    check_ref,
    repo_policy,
    request_digest,
    resolve_repo,
)
from bot.sessions import NewSession
from webhooks.api.models import MODEL_ID, model_listing, models_by_agent
from webhooks.app import QUEUE, SERVICES
from webhooks.pages import check_csrf, done, render

MAX_PROMPT = 50_000  # as the API takes
MAX_MODEL = 128  # Session.model's column
REPO_HINTS = {"installed": "owner/name of a repository Sesame's GitHub App is installed on",
              "local": "owner/name, or an absolute path of a git repository on this server",
              "any": "owner/name, an absolute path of a git repository on this server, or a clone URL"}


@dataclass
class AgentChoice:
    """One agent as the form offers it."""

    name: str
    label: str
    installed: bool
    credential: str  # "stored", "environment", "none needed" or "" (none: Authenticate...)
    models: list[str]


async def credential_status(services: Services, name: str) -> str:
    """Where the agent's key would come from: a stored credential, the server's settings, or nowhere ("")."""
    spec = CATALOG[name]
    if not spec.server_env_keys:
        return "none needed"
    if await services.credentials.kinds(name):
        return "stored"
    if any(services.settings.values.get(key) for key in spec.server_env_keys):
        return "environment"
    return ""


async def agent_choices(request: web.Request) -> tuple[list[AgentChoice], str]:
    """The agents the form offers (installed ones, and the command agent when AGENT_COMMAND is set), and where
    their models come from."""
    services = request.app[SERVICES]
    listing = await model_listing(request.app)
    choices = []
    for spec in AGENT_SPECS:
        installed = (bool(services.settings.AGENT_COMMAND) if not spec.binary
                     else find_agent_binary(spec.name, services.settings.data_dir) is not None)
        models = (listing or {}).get(spec.name) or list(spec.models)
        choices.append(AgentChoice(spec.name, spec.display_name, installed,
                                   await credential_status(services, spec.name), models))
    return choices, ("the Sesame API" if listing else "the built-in catalogue")


async def new_page(request: web.Request, status: int = 200, errors: dict[str, str] | None = None,
                   values: dict[str, Any] | None = None) -> web.Response:
    """The form; after a refused submission, with the sentence next to its field and the values kept."""
    services = request.app[SERVICES]
    settings = services.settings
    policy = repo_policy(settings)
    repos = await services.installations.all_repos() if settings.GITHUB_APP_ID else []
    agents, models_from = await agent_choices(request)
    usable = [a.name for a in agents if a.installed and a.credential]
    default_agent = settings.SESAME_DEFAULT_AGENT if settings.SESAME_DEFAULT_AGENT in usable else next(iter(usable), "")
    shown = {"repo": "", "prompt": "", "agent": default_agent, "model": "", "base": "",
             "sandbox": settings.SANDBOX_SECURITY_ENABLED, "keep": False, "key": str(uuid.uuid4())} | (values or {})
    return render(request, "new.html", status=status, title="New session", agents=agents, repos=repos,
                  picker=bool(repos) and policy == "installed", repo_hint=REPO_HINTS[policy], policy=policy,
                  models_from=models_from, values=shown, errors=errors or {}, max_prompt=MAX_PROMPT,
                  sandbox_global=settings.SANDBOX_SECURITY_ENABLED)


async def show_form(request: web.Request) -> web.Response:
    return await new_page(request)


async def create_from_form(request: web.Request) -> web.Response:
    """Check everything, record the session (idempotent by the form's key: a second click opens the same one),
    enqueue it and open its page."""
    fields = await check_csrf(request)
    services = request.app[SERVICES]
    names = ("repo", "prompt", "agent", "model", "base")
    values: dict[str, Any] = {name: fields.get(name, "").strip() for name in names}
    key = fields.get("key", "")
    values |= {"sandbox": "sandbox" in fields, "keep": "keep" in fields,
               "key": key if re.fullmatch(r"[0-9a-f-]{36}", key) else str(uuid.uuid4())}
    errors: dict[str, str] = {}
    repo, report = "", None
    try:
        repo, report = await resolve_repo(services.settings, services.installations, values["repo"])
    except InputError as exc:
        errors["repo"] = str(exc)
    try:
        prompt = check_prompt(values["prompt"])
        if len(prompt) > MAX_PROMPT or "\x00" in prompt:
            raise InputError("prompt", f"the prompt must be text of at most {MAX_PROMPT:,} characters")
    except InputError as exc:
        errors["prompt"] = str(exc)
    agent = values["agent"] if values["agent"] in CATALOG else ""
    if not agent:
        errors["agent"] = f"choose one of the agents: {', '.join(CATALOG)}"
    model = values["model"] or None
    if model is not None and not MODEL_ID.match(model):
        errors["model"] = f"the model must be a model name of at most {MAX_MODEL} characters"
    elif model is not None and agent:
        try:  # the agent's own models, as the API checks them
            check_model(agent, model, await models_by_agent(request.app))
        except InputError as exc:
            errors["model"] = str(exc)
    base = values["base"] or None
    try:
        base = base and check_ref(base, "base")
    except InputError as exc:
        errors["base"] = str(exc)
    if errors:
        return await new_page(request, 400, errors, values)
    assert base is None or isinstance(base, str)
    digest = request_digest("create", {"prompt": prompt, "repo": repo, "agent": agent, "model": model, "base": base,
                                       "branch": None, "sandbox": values["sandbox"], "keep": values["keep"],
                                       "budget": None})
    row, created = await services.sessions.create(NewSession(
        trigger_key=f"api:{values['key']}", prompt=prompt, agent=agent, repo=repo, source="api", report=report,
        model=model, base_branch=base, requested_by="web",
        context={"api_request": digest, **trigger_choice(agent, model)},
        sandbox_security=values["sandbox"], keep_alive=values["keep"]))
    if created:
        await request.app[QUEUE].enqueue(row.id)
    raise done(f"/sessions/{row.id}", "started")


def setup(app: web.Application) -> None:
    app.router.add_get("/sessions/new", show_form)
    app.router.add_post("/sessions/new", create_from_form)
