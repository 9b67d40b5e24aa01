"""Best-of-N (issue 18): one session per agent on one request, compared in one comment, one picked for the PR."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from bot.catalog import display_name
from bot.models import Session, State
from bot.progress import format_duration
from bot.services import Services
from bot.untrusted import md_code

ENDED = (State.COMPLETED.value, State.ERROR.value, State.STOPPED.value)


def group_of(session: Session) -> str | None:
    """The best-of-N group (the delivery that asked for it) of a session, if any."""
    best = (session.context or {}).get("best_of")
    return str(best["group"]) if isinstance(best, dict) and best.get("group") else None


async def sessions_of(services: Services, repo: str | None, group: str) -> list[Session]:
    """The group's sessions in their order (1..N), whatever their source (the group is in their context);
    `repo` None finds them in any repository (the API names a group alone)."""
    query = select(Session).where(Session.context[("best_of", "group")].as_string() == group)
    if repo is not None:
        query = query.where(Session.repo == repo)
    async with services.sessions.autocommit() as db:
        rows = list((await db.execute(query)).scalars())
    return sorted(rows, key=lambda r: int((r.context or {})["best_of"]["index"]))


async def latest_group(services: Services, repo: str, issue_number: int) -> list[Session]:
    """The sessions of the issue's most recent best-of-N request."""
    query = (select(Session).where(Session.repo == repo, Session.issue_number == issue_number)
             .order_by(Session.created_at.desc()).limit(200))
    async with services.sessions.autocommit() as db:
        rows = list((await db.execute(query)).scalars())
    group = next((g for g in (group_of(r) for r in rows) if g), None)
    return await sessions_of(services, repo, group) if group else []


def choose(rows: list[Session], pick: str) -> Session | str:
    """The session `pick` names (its number, or its agent when only one ran it), or why none."""
    if pick.isdigit():
        index = int(pick)
        return rows[index - 1] if 1 <= index <= len(rows) else f"there is no session {index} of {len(rows)}"
    named = [r for r in rows if r.agent == pick]
    if len(named) == 1:
        return named[0]
    if not named:
        return f"no session ran {pick}"
    return f"{len(named)} sessions ran {pick}: pick one by its number"


def comparison(rows: list[Session], facts: dict[str, dict[str, Any]], slug: str) -> str:
    """The one comment comparing the group: files changed, tests, duration, cost, violations, branch."""
    lines = [f"**Sesame** ran this request with {len(rows)} agents:", "",
             "| # | agent | result | files changed | tests | duration | cost | violations | branch |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for i, row in enumerate(rows, 1):
        fact = facts.get(row.id, {})
        took = (row.finished_at - row.started_at).total_seconds() if row.finished_at and row.started_at else None
        tests = fact.get("tests") or "-"
        lines.append(" | ".join([
            f"| {i}", display_name(row.agent), row.state, fact.get("files") or "-", tests,
            format_duration(took) if took is not None else "-",
            f"${row.cost_usd:,.2f}" if row.cost_usd is not None else "-", str(row.violation_count),
            md_code(row.branch) if row.branch and row.commit_sha else "-"]) + " |")
    on_pr = bool(rows and (rows[0].context or {}).get("is_pull_request"))
    outcome = ("moves this pull request's branch to that one's commit" if on_pr
               else "opens the pull request from that one")
    lines += ["", f"`@{slug} pick N` (or `@{slug} pick AGENT`) {outcome}."]
    return "\n".join(lines)


async def facts_of(services: Services, row: Session) -> dict[str, Any]:
    """What the comparison shows of one session from its events: files changed, the last test result."""
    fact: dict[str, Any] = {}
    for event in await services.sessions.events(row.id):
        if event.kind == "best_of" and event.data.get("files"):
            fact["files"] = str(event.data["files"])
        if event.kind == "test":
            fact["tests"] = "passed" if event.data.get("exit_code") == 0 else "failed"
    return fact
