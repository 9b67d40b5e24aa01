"""Best-of-N in the worker (issue 18): the comparison comment once every session of the group has ended."""

from __future__ import annotations

import logging

from bot.best_of import ENDED, comparison, facts_of, group_of, sessions_of
from bot.github_channel import GitHubChannel
from bot.models import Session
from bot.services import Services

log = logging.getLogger(__name__)


async def compare_when_all_ended(services: Services, session: Session) -> None:
    """The last session of a group to end posts the comparison (once: a recorded key claims it)."""
    group = group_of(session)
    if group is None or session.source != "github":
        return
    try:
        rows = await sessions_of(services, session.repo, group)
        if any(row.state not in ENDED for row in rows):
            return
        if not await services.sessions.record_delivery(f"best-of:{group}", "github", "comparison"):
            return
        facts = {row.id: await facts_of(services, row) for row in rows}
        body = comparison(rows, facts, str(services.settings.GITHUB_APP_SLUG))
        channel = GitHubChannel(services, session)
        gh = await channel.client()
        await gh.post(f"/repos/{session.repo}/issues/{session.issue_number}/comments", data={"body": body})
    except Exception as exc:
        log.warning("the best-of-N comparison of %s is not posted: %s", group, exc)
