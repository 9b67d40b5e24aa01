"""Best-of-N in Slack (issue 18): the thread's head message, the comparison in mrkdwn, the pick's reply.

The sessions of one `/sesame owner/repo --agents a,b,c PROMPT` share one thread: a head message names
them, each session's progress message is a reply in it, the comparison follows when all have ended, and
`pick N|AGENT` mentioned in the thread opens the pull request from that session's branch.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from bot.catalog import display_name
from bot.models import Session
from bot.progress import format_duration
from bot.redact import redact
from bot.untrusted import slack_code, slack_text

PICK_HINT = "Mention me here with `pick N` (or `pick AGENT`) to open the pull request from that one."


def head_text(rows: list[Session]) -> str:
    """The thread's first message: which agents run, and where the comparison will be."""
    names = ", ".join(f"{i}. {slack_text(display_name(r.agent))}" for i, r in enumerate(rows, 1))
    return (f"*Sesame* runs this request on {slack_code(rows[0].repo)} with {len(rows)} agents: {names}. "
            "Each works on a branch of its own; I'll compare them in this thread when they are done.")


def comparison_mrkdwn(rows: list[Session], facts: dict[str, dict[str, Any]], secrets: Iterable[str] = ()) -> str:
    """The one thread reply comparing the group: per session its agent, result, files changed, tests,
    duration, cost, violations and branch (the columns of bot/best_of.py `comparison`; Slack has no tables)."""
    lines = [f"*Sesame* ran this request with {len(rows)} agents:"]
    for i, row in enumerate(rows, 1):
        fact = facts.get(row.id, {})
        took = (row.finished_at - row.started_at).total_seconds() if row.finished_at and row.started_at else None
        branch = slack_code(row.branch) if row.branch and row.commit_sha else "-"
        lines.append(" · ".join([
            f"*{i}. {slack_text(display_name(row.agent))}*", slack_text(row.state),
            slack_text(fact.get("files") or "no files changed"), f"tests {slack_text(fact.get('tests') or '-')}",
            format_duration(took) if took is not None else "-",
            f"${row.cost_usd:,.2f}" if row.cost_usd is not None else "cost -",
            f"{row.violation_count} violations", f"branch {branch}"]))
    lines.append(PICK_HINT)
    return redact("\n".join(lines), list(secrets))


def picked_text(chosen: Session, number: int, url: str, of: int) -> str:
    """The thread reply once the pull request is open."""
    return (f":white_check_mark: Opened <{url}|#{number}> from {slack_code(chosen.branch or '')} "
            f"({slack_text(display_name(chosen.agent))}, picked from {of} agents).")
