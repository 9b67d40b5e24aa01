"""Best-of-N in the worker (issue 18): the comparison once every session of the group has ended, where the
request came from: a comment on the GitHub issue, or a reply in the Slack thread."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from bot.best_of import ENDED, comparison, facts_of, group_of, sessions_of
from bot.github_channel import GitHubChannel
from bot.models import Session
from bot.services import Services
from bot.slack import web_client
from bot.slack_best_of import comparison_mrkdwn

log = logging.getLogger(__name__)
Post = Callable[[Services, Session, list[Session], dict[str, dict[str, Any]]], Awaitable[None]]


async def _on_issue(services: Services, session: Session, rows: list[Session],
                    facts: dict[str, dict[str, Any]]) -> None:
    body = comparison(rows, facts, str(services.settings.GITHUB_APP_SLUG))
    gh = await GitHubChannel(services, session).client()
    await gh.post(f"/repos/{session.repo}/issues/{session.issue_number}/comments", data={"body": body})


async def _in_thread(services: Services, session: Session, rows: list[Session],
                     facts: dict[str, dict[str, Any]]) -> None:
    report = session.report or {}
    text = comparison_mrkdwn(rows, facts, services.settings.secret_values)
    client = web_client(services.settings, services.http)
    await client.chat_postMessage(channel=report["channel"], thread_ts=report.get("thread_ts") or report["ts"],
                                  text=text, unfurl_links=False)


POSTS: dict[str, Post] = {"github": _on_issue, "slack": _in_thread}


async def compare_when_all_ended(services: Services, session: Session) -> None:
    """The last session of a group to end posts the comparison (once: a recorded key claims it)."""
    group = group_of(session)
    post = POSTS.get(session.source)
    if group is None or post is None:
        return
    try:
        rows = await sessions_of(services, session.repo, group)
        if any(row.state not in ENDED for row in rows):
            return
        if not await services.sessions.record_delivery(f"best-of:{group}", session.source, "comparison"):
            return
        facts = {row.id: await facts_of(services, row) for row in rows}
        await post(services, session, rows, facts)
    except Exception as exc:
        log.warning("the best-of-N comparison of %s is not posted: %s", group, exc)
