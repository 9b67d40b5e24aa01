"""Starting and stopping sessions from a trigger: context, branch, the queue (and the queued comment)."""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from bot.github import SesameGitHubAPI
from bot.github_channel import COMMENT_DUE, COMMENT_GRACE, WRITE_PERMISSIONS, GitHubChannel, split_repo
from bot.models import Session, State
from bot.queued_comment import QueuedSession, new_progress, post_queued_comment
from bot.repo_config import trigger_choice
from bot.services import Services
from bot.sessions import NewSession
from bot.triggers import Trigger, clean_context
from webhooks.github.intake import FORK_REFUSED, NOTHING_TO_STOP, Intake, Mention, refuse, reply, thread_root

log = logging.getLogger(__name__)
FORK_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._/:-]")


async def stop_sessions(intake: Intake, gh: SesameGitHubAPI, source: Mention) -> None:
    """Flag every active session of the issue or PR; a pending one ends (and says so) at once."""
    sessions = intake.services.sessions
    active = await sessions.active_for_issue(intake.repo, source.issue["number"])
    for row in active:
        stopped = await sessions.request_stop(row.id)
        if stopped is not None and stopped.state == State.STOPPED.value:
            report_stopped(intake.services, stopped)
    intake.outcome["stopped"] = [row.id for row in active]
    if not active:
        kind = "pull request" if source.is_pull_request else "issue"
        await reply(intake, gh, source, NOTHING_TO_STOP.format(kind=kind))


def report_stopped(services: Services, row: Session) -> None:
    """A session stopped before any worker took it: its queued comment says so (no job will), after the
    202: that comment may still be on its way (a worker posts it, when one runs), and the channel waits for
    it until its due time rather than post a second one."""
    services.background.spawn(mark_stopped(services, row), name=f"stopped-comment-{row.id}")


async def mark_stopped(services: Services, row: Session) -> None:
    progress = new_progress(services, row.id, row.prompt, row.agent)
    progress.finish(State.STOPPED.value)
    try:
        await GitHubChannel(services, row).publish(progress)
    except Exception as exc:
        log.warning("could not mark the comment of session %s stopped: %s", row.id, exc)


def build_context(intake: Intake, source: Mention) -> dict[str, Any]:
    """The issue and comment text as they were at the trigger, cleaned; later comments never join."""
    context: dict[str, Any] = {
        "issue_number": source.issue["number"], "issue_title": clean_context(source.issue.get("title") or ""),
        "issue_body": clean_context(source.issue.get("body") or ""), "is_pull_request": source.is_pull_request,
        "clone_url": intake.event.data["repository"].get("clone_url"),
    }
    if source.comment:
        context["comment"] = clean_context(source.comment.get("body") or "")
    if source.review_comment:
        rc = source.review_comment
        context["review_comment"] = {"path": rc.get("path"), "line": rc.get("line") or rc.get("original_line"),
                                     "diff_hunk": clean_context(rc.get("diff_hunk") or ""),
                                     "body": clean_context(rc.get("body") or "")}
    return context


def new_session(intake: Intake, source: Mention, trigger: Trigger) -> NewSession:
    """The session a trigger asks for, before its branch is decided."""
    number = source.issue["number"]
    review_id = thread_root(source.review_comment) if source.review_comment else None
    return NewSession(
        trigger_key=intake.trigger_key, prompt=trigger.prompt,
        agent=trigger.agent or intake.services.settings.SESAME_DEFAULT_AGENT, model=trigger.model,
        base_branch=trigger.base, budget_usd=trigger.budget, repo=intake.repo, source="github",
        requested_by=intake.sender,
        context=build_context(intake, source) | trigger_choice(trigger.agent, trigger.model), issue_number=number,
        report={"installation_id": intake.installation_id, "issue_number": number,
                "review_comment_id": review_id})


async def on_pull_request_branch(intake: Intake, gh: SesameGitHubAPI, source: Mention, new: NewSession) -> bool:
    """Work on the PR's own branch; False (after a reply) for a refused fork PR."""
    pr = intake.event.data.get("pull_request") or await gh.getitem(source.issue["pull_request"]["url"])
    head_repo = ((pr.get("head") or {}).get("repo") or {}).get("full_name")
    new.base_branch = new.base_branch or pr["base"]["ref"]
    if head_repo == intake.repo:
        new.branch, new.pr_number = pr["head"]["ref"], int(pr["number"])
        return True
    if not intake.services.settings.GITHUB_ALLOW_FORK_PULL_REQUESTS:
        if await intake.claim_delivery():
            await refuse(intake, gh, source, "fork", FORK_REFUSED.format(login=intake.sender))
        return False
    # The fork's branch is out of the installation token's reach: start from the PR's head, which
    # GitHub keeps in this repository as refs/pull/N/head, and push a new branch and PR here.
    new.context = {**(new.context or {}), "start_ref": f"refs/pull/{int(pr['number'])}/head",
                   "fork": fork_name(head_repo, pr)}
    return True


def fork_name(head_repo: str | None, pr: dict[str, Any]) -> str:
    """How the PR body names the fork: its full name, else (fork deleted) its `owner:branch` label,
    keeping only name characters: a branch name may hold markdown or @mentions."""
    name = head_repo or (pr.get("head") or {}).get("label") or ""
    return FORK_NAME_UNSAFE.sub("", str(name))[:140] or "a deleted fork"


async def on_open_sesame_pull_request(intake: Intake, gh: SesameGitHubAPI, new: NewSession) -> None:
    """A follow-up on an issue whose last Sesame PR is still open continues that PR's branch."""
    parent = await intake.parent(int(new.issue_number or 0))
    if parent is None or not parent.pr_number or new.base_branch:
        return
    owner, name = split_repo(intake.repo)
    pr = await gh.getitem("/repos/{owner}/{repo}/pulls/{number}",
                          {"owner": owner, "repo": name, "number": parent.pr_number})
    if pr.get("state") == "open":
        new.branch, new.parent_id, new.pr_number = parent.branch, parent.id, parent.pr_number
        new.base_branch = parent.base_branch


async def choose_branch(intake: Intake, gh: SesameGitHubAPI, source: Mention, new: NewSession) -> bool:
    """Decide the branch (PR branch, open Sesame PR, or a new one); False when refused."""
    if source.is_pull_request:
        if not await on_pull_request_branch(intake, gh, source, new):
            return False
        parent = await intake.parent(int(source.issue["number"]))
        if parent is not None and parent.branch == new.branch:
            new.parent_id = parent.id
        return True
    await on_open_sesame_pull_request(intake, gh, new)
    return True


async def start_session(intake: Intake, gh: SesameGitHubAPI, source: Mention, trigger: Trigger) -> None:
    """Record the session and enqueue it (then the 202); the queued comment is posted right after."""
    new = new_session(intake, source, trigger)
    if not await choose_branch(intake, gh, source, new):
        return
    new.report = {**(new.report or {}), COMMENT_DUE: time.time() + COMMENT_GRACE}
    session_id, created = await intake.services.sessions.record(new)
    intake.outcome["session"] = session_id
    if not created:
        intake.outcome["duplicate"] = True
        return
    await enqueue_and_comment(intake, session_id, new, gh)


def known_writer(intake: Intake) -> bool:
    """The installation is cached as active and the sender as a writer: nothing to ask GitHub first."""
    caches = intake.services.caches
    return (caches.installations.fresh(intake.installation_id) is True and
            caches.permissions.fresh((intake.installation_id, intake.repo, intake.sender)) in WRITE_PERMISSIONS)


async def quick_start(intake: Intake, source: Mention, trigger: Trigger) -> bool:
    """A trigger on an issue from a known writer (issue 16): the redelivery check, the follow-up's parent
    and the insert are one statement, then the enqueue. False when it needs the full path (start_session):
    a PR (its branch comes from GitHub), a cache miss, a parent with a pull request to ask GitHub about, a
    concurrent duplicate (the full path names its session), or no PostgreSQL."""
    if source.is_pull_request or not known_writer(intake):
        return False
    new = new_session(intake, source, trigger)
    new.report = {**(new.report or {}), COMMENT_DUE: time.time() + COMMENT_GRACE}
    answer = await intake.services.sessions.record_trigger(new, intake.event.delivery_id)
    if answer is None:
        return False
    found, session_id = answer
    if intake.answered_before(found):
        return True
    if session_id is None:
        return False
    intake.outcome["session"] = session_id
    await enqueue_and_comment(intake, session_id, new)
    return True


async def enqueue_and_comment(intake: Intake, session_id: str, new: NewSession,
                              gh: SesameGitHubAPI | None = None) -> None:
    """Enqueue a recorded session (before the 202). Its queued comment goes to the workers with the enqueue
    (Redis: one round trip, nothing more here), or is posted by this process after the 202 (in-process
    queue; `gh`, else a client made for it)."""
    queue = intake.queue
    if queue.posts_queued_comments:
        await queue.enqueue(session_id, queued_comment=True)
        return
    await queue.enqueue(session_id)
    queued = QueuedSession(session_id, new.repo, new.prompt, new.agent, new.pr_number, dict(new.report or {}))
    intake.services.background.spawn(post_queued_comment(intake.services, gh or await intake.client(), queued),
                                     name=f"queued-comment-{session_id}")
