"""What every GitHub trigger shares: who may trigger, replies, and recording a session."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from gidgethub import sansio

from bot.github import SesameGitHubAPI, collaborator_permission
from bot.github_channel import WRITE_PERMISSIONS, github_factory, post_progress_comment, split_repo
from bot.installations import InstallationStore
from bot.progress import Progress, render_markdown
from bot.queue import Queue
from bot.reporting import session_url
from bot.services import Services
from bot.sessions import NewSession
from bot.triggers import Command, Trigger, clean_context, parse_mention

log = logging.getLogger(__name__)

HELP_TEXT = """**Sesame** runs a coding agent on this repository and opens a pull request.

- `@{slug} fix the flaky retry test` starts a session (on a pull request, it pushes to the PR's branch)
- `--agent NAME` picks the agent ({agents}), `--model NAME` its model, `--base BRANCH` the base branch
- `@{slug} stop` stops the running session; `@{slug} help` shows this

Only people with write access can start a session."""
NO_PERMISSION = "Sorry @{login}, only people with write access to this repository can ask me to work on it."
FORK_REFUSED = ("Sorry @{login}, I don't work on pull requests from forks here "
                "(an administrator can allow it with `github.allowForkPullRequests`).")
NOTHING_TO_STOP = "There is no running Sesame session on this {kind}."
STOPPING = "Stopping the running session{s} ({ids})."


@dataclass
class Mention:
    """Where a mention came from: the text, the issue or PR, and the comment to reply to."""

    text: str
    issue: dict[str, Any]
    is_pull_request: bool
    comment: dict[str, Any] | None = None
    review_comment: dict[str, Any] | None = None


@dataclass
class Intake:
    """Per-delivery context handed to every handler."""

    services: Services
    queue: Queue
    outcome: dict[str, Any] = field(default_factory=dict)

    @property
    def slug(self) -> str:
        return self.services.settings.GITHUB_APP_SLUG

    async def client(self, event: sansio.Event) -> SesameGitHubAPI:
        """An installation client scoped to the event's repository."""
        repo = event.data["repository"]["full_name"]
        return await github_factory(self.services).installation_client(
            int(event.data["installation"]["id"]), repositories=[repo])


Handler = Callable[..., Awaitable[None]]


def independent(handler: Handler) -> Handler:
    """One failing handler must not skip the others: log it and go on."""
    @functools.wraps(handler)
    async def wrapper(event: sansio.Event, *args: Any, **kwargs: Any) -> None:
        try:
            await handler(event, *args, **kwargs)
        except Exception:
            log.exception("handler %s failed on delivery %s", handler.__name__, event.delivery_id)
            raise
    return wrapper


def from_self_or_bot(event: sansio.Event, slug: str) -> bool:
    """Loop guard: bots (this app included) never trigger."""
    sender = event.data.get("sender") or {}
    if sender.get("type") == "Bot" or sender.get("login", "").lower() == f"{slug.lower()}[bot]":
        return True
    comment = event.data.get("comment") or {}
    return bool(comment.get("performed_via_github_app"))


async def reply(gh: SesameGitHubAPI, event: sansio.Event, source: Mention, body: str) -> None:
    """One short reply: in the review thread for review comments, else on the issue or PR."""
    owner, name = split_repo(event.data["repository"]["full_name"])
    if source.review_comment:
        await gh.post(f"/repos/{owner}/{name}/pulls/{source.issue['number']}/comments/"
                      f"{source.review_comment['id']}/replies", data={"body": body})
    else:
        await gh.post(source.issue["comments_url"], data={"body": body})


async def handle_mention(intake: Intake, event: sansio.Event, source: Mention) -> None:
    """The whole trigger path for a comment or review mentioning the app."""
    trigger = parse_mention(source.text or "", intake.slug)
    if trigger is None or from_self_or_bot(event, intake.slug):
        return
    installation_id = int(event.data["installation"]["id"])
    if not await InstallationStore(intake.services.sessions.sessionmaker).active(installation_id):
        intake.outcome["ignored"] = "installation suspended or deleted"
        return
    gh = await intake.client(event)
    login = event.data["sender"]["login"]
    if trigger.error:
        await reply(gh, event, source, trigger.error)
        intake.outcome["refused"] = "malformed"
        return
    if trigger.command is Command.HELP:
        from bot.catalog import AGENT_NAMES

        await reply(gh, event, source, HELP_TEXT.format(slug=intake.slug, agents=", ".join(AGENT_NAMES)))
        return
    repo = event.data["repository"]["full_name"]
    owner, name = split_repo(repo)
    permission = await collaborator_permission(gh, owner, name, login)
    if permission not in WRITE_PERMISSIONS:
        await reply(gh, event, source, NO_PERMISSION.format(login=login))
        intake.outcome["refused"] = "permission"
        return
    if trigger.command is Command.STOP:
        await stop_sessions(intake, gh, event, source)
        return
    await start_session(intake, gh, event, source, trigger)


async def stop_sessions(intake: Intake, gh: SesameGitHubAPI, event: sansio.Event, source: Mention) -> None:
    sessions = intake.services.sessions
    active = await sessions.active_for_issue(event.data["repository"]["full_name"], source.issue["number"])
    for row in active:
        await sessions.request_stop(row.id)
    intake.outcome["stopped"] = [row.id for row in active]
    if not active:
        kind = "pull request" if source.is_pull_request else "issue"
        await reply(gh, event, source, NOTHING_TO_STOP.format(kind=kind))


async def pull_request_branch(intake: Intake, gh: SesameGitHubAPI, event: sansio.Event,
                              source: Mention) -> dict[str, Any] | None:
    """The PR's head and base; None (after a reply) for a refused fork PR."""
    repo = event.data["repository"]["full_name"]
    pr = event.data.get("pull_request") or await gh.getitem(source.issue["pull_request"]["url"])
    head_repo = ((pr.get("head") or {}).get("repo") or {}).get("full_name")
    if head_repo != repo:
        if not intake.services.settings.GITHUB_ALLOW_FORK_PULL_REQUESTS:
            await reply(gh, event, source, FORK_REFUSED.format(login=event.data["sender"]["login"]))
            intake.outcome["refused"] = "fork"
            return None
        return {"branch": None, "base": pr["base"]["ref"], "number": pr["number"], "fork": True}
    return {"branch": pr["head"]["ref"], "base": pr["base"]["ref"], "number": pr["number"], "fork": False}


async def pull_request_open(gh: SesameGitHubAPI, repo: str, number: int) -> bool:
    owner, name = split_repo(repo)
    pr = await gh.getitem(f"/repos/{owner}/{name}/pulls/{number}")
    return pr.get("state") == "open"


def build_context(event: sansio.Event, source: Mention) -> dict[str, Any]:
    """The issue and comment text as they were at the trigger, cleaned; later comments never join."""
    context: dict[str, Any] = {
        "issue_number": source.issue["number"], "issue_title": clean_context(source.issue.get("title") or ""),
        "issue_body": clean_context(source.issue.get("body") or ""), "is_pull_request": source.is_pull_request,
        "clone_url": event.data["repository"].get("clone_url"),
    }
    if source.comment:
        context["comment"] = clean_context(source.comment.get("body") or "")
    if source.review_comment:
        rc = source.review_comment
        context["review_comment"] = {"path": rc.get("path"), "line": rc.get("line") or rc.get("original_line"),
                                     "diff_hunk": rc.get("diff_hunk"), "body": clean_context(rc.get("body") or "")}
    return context


async def start_session(intake: Intake, gh: SesameGitHubAPI, event: sansio.Event, source: Mention,
                        trigger: Trigger) -> None:
    """Record the session, post the queued progress comment, enqueue."""
    services, repo = intake.services, event.data["repository"]["full_name"]
    number = source.issue["number"]
    new = NewSession(
        trigger_key=f"github:{event.delivery_id}", prompt=trigger.prompt,
        agent=trigger.agent or services.settings.SESAME_DEFAULT_AGENT, model=trigger.model,
        base_branch=trigger.base, repo=repo, source="github", requested_by=event.data["sender"]["login"],
        context=build_context(event, source), issue_number=number,
        report={"installation_id": int(event.data["installation"]["id"]), "issue_number": number,
                "review_comment_id": (source.review_comment or {}).get("id")})
    if source.is_pull_request:
        pr = await pull_request_branch(intake, gh, event, source)
        if pr is None:
            return
        new.branch, new.pr_number = pr["branch"], None if pr["fork"] else pr["number"]
        new.base_branch = trigger.base or pr["base"]
    else:
        parent = await services.sessions.latest_with_branch(repo, number)
        if parent is not None and parent.pr_number and not trigger.base and \
                await pull_request_open(gh, repo, parent.pr_number):
            new.branch, new.parent_id, new.pr_number = parent.branch, parent.id, parent.pr_number
            new.base_branch = parent.base_branch
    row, created = await services.sessions.create(new)
    intake.outcome["session"] = row.id
    if not created:
        return
    await post_queued_comment(intake, gh, row.id, new)
    await intake.queue.enqueue(row.id)


async def post_queued_comment(intake: Intake, gh: SesameGitHubAPI, session_id: str, new: NewSession) -> None:
    """Create the one progress comment now, so the requester sees it was queued."""
    from bot.catalog import display_name

    services = intake.services
    progress = Progress(session_id, new.prompt[:80], display_name(new.agent), session_url(services, session_id))
    try:
        comment = await post_progress_comment(gh, new.repo, new.report or {},
                                              render_markdown(progress, services.settings.secret_values))
    except Exception as exc:  # the worker creates it when this fails
        log.warning("could not post the queued comment for %s: %s", session_id, exc)
        return
    await services.sessions.update(session_id, report={**(new.report or {}), "comment_id": comment["id"]})
