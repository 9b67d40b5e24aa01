"""The queued comment: a GitHub session's one progress comment, created when it is queued (DESIGN.md 8).

Never on the 202's path. With the in-process queue the web process posts it right after answering; with
Redis the enqueue hands the session id to the workers (bot/queue.py, QUEUED_COMMENTS) and a worker's
notifier lane posts it (runner/notifier.py). Until the row's `comment_due` (epoch seconds, set at intake)
the worker's GitHubChannel waits for this comment instead of posting its own, so whoever posts it gives up
well before that time: half of what is left for the comment, half of the rest for the check run, and the
due time is dropped from the report either way (the worker then posts at once when there is no comment).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from bot.catalog import display_name
from bot.checks import sync_check_run
from bot.github import SesameGitHubAPI
from bot.github_channel import COMMENT_DUE, post_progress_comment
from bot.models import Session
from bot.progress import Progress, render_markdown
from bot.reporting import session_url
from bot.services import Services

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QueuedSession:
    """What the queued comment needs of a session (a new one at intake, or its row in a worker)."""

    id: str
    repo: str
    prompt: str
    agent: str
    pr_number: int | None
    report: dict[str, Any]

    @classmethod
    def of_row(cls, row: Session) -> QueuedSession:
        return cls(row.id, row.repo, row.prompt, row.agent, row.pr_number, dict(row.report or {}))

    @property
    def due(self) -> float:
        """When the worker stops waiting for this comment (epoch seconds); 0 when it never waits."""
        return float(self.report.get(COMMENT_DUE) or 0)


def new_progress(services: Services, session_id: str, prompt: str, agent: str) -> Progress:
    """The progress of a session that was just queued."""
    return Progress(session_id, prompt[:80], display_name(agent), session_url(services, session_id))


async def post_queued_comment(services: Services, gh: SesameGitHubAPI, session: QueuedSession) -> bool:
    """Create the progress comment (and a pull request's queued check run), then store their ids with the
    due time dropped; True when the comment was created. On failure or timeout only the due time goes: the
    worker creates the comment at once."""
    report = {key: value for key, value in session.report.items() if key != COMMENT_DUE}
    progress = new_progress(services, session.id, session.prompt, session.agent)
    try:  # finished (or given up) well before the worker stops waiting for it
        async with asyncio.timeout(left(session.due) / 2):
            comment = await post_progress_comment(gh, session.repo, report,
                                                  render_markdown(progress, services.settings.secret_values))
    except Exception as exc:
        log.warning("could not post the queued comment for %s (the worker will): %s", session.id, exc)
    else:
        report["comment_id"] = comment["id"]
    await queued_check_run(services, gh, session, report, progress)
    await release(services, session.id, report)
    return "comment_id" in report


async def queued_check_run(services: Services, gh: SesameGitHubAPI, session: QueuedSession,
                           report: dict[str, Any], progress: Progress) -> None:
    """A session on a pull request: its check run, queued, on the head commit (bot/checks.py)."""
    if not session.pr_number:
        return
    try:
        async with asyncio.timeout(left(session.due) / 2):
            pr = await gh.getitem(f"/repos/{session.repo}/pulls/{session.pr_number}")
            await sync_check_run(gh, session.repo, report, str(pr["head"]["sha"]), session.id, progress,
                                 services.settings.secret_values)
    except Exception as exc:
        log.warning("could not create the check run of %s (the worker will): %s", session.id, exc)


async def release(services: Services, session_id: str, report: dict[str, Any]) -> None:
    """Store the report without its due time: the worker waits no longer (it edits the comment, if any)."""
    await services.sessions.set_intake_report(session_id, {k: v for k, v in report.items() if k != COMMENT_DUE})


def left(due: float) -> float:
    """Seconds until `due` (epoch), never negative."""
    return max(due - time.time(), 0.0)
