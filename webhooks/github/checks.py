"""The buttons of a session's check run (bot/checks.py): Stop and Re-run, as check_run deliveries."""

from __future__ import annotations

import logging

from gidgethub import routing, sansio

from bot.checks import RERUN, STOP
from bot.models import Session, State
from bot.sessions import NewSession
from webhooks.github.intake import Intake, from_self_or_bot
from webhooks.github.start import report_stopped

log = logging.getLogger(__name__)
router = routing.Router()


@router.register("check_run", action="requested_action")
async def requested_action(event: sansio.Event, intake: Intake) -> None:
    """Stop or Re-run, pressed by someone with write access on the repository."""
    identifier = (event.data.get("requested_action") or {}).get("identifier")
    await act(event, intake, identifier)


@router.register("check_run", action="rerequested")
async def rerequested(event: sansio.Event, intake: Intake) -> None:
    """GitHub's own "Re-run" link on the check run: the same as our Re-run button."""
    await act(event, intake, RERUN["identifier"])


async def act(event: sansio.Event, intake: Intake, identifier: str | None) -> None:
    row = await session_of(event, intake)
    if row is None or identifier not in (STOP["identifier"], RERUN["identifier"]):
        intake.outcome["ignored"] = "not a Sesame session's check run"
        return
    if await intake.seen_before() or not await intake.active_installation():
        return
    gh = await intake.client()
    if not await intake.may_write(gh):
        intake.outcome["refused"] = "permission"
        return
    if not await intake.claim_delivery():
        return
    if identifier == STOP["identifier"]:
        await stop(intake, row)
    else:
        await rerun(intake, row)


async def session_of(event: sansio.Event, intake: Intake) -> Session | None:
    """The session the check run belongs to (its external_id), on this delivery's repository, from GitHub."""
    if "installation" not in event.data or "repository" not in event.data or from_self_or_bot(event, intake.slug):
        return None
    external = str((event.data.get("check_run") or {}).get("external_id") or "")
    row = await intake.services.sessions.get(external) if external else None
    if row is None or row.repo != intake.repo or row.source != "github":
        return None
    return row


async def stop(intake: Intake, row: Session) -> None:
    stopped = await intake.services.sessions.request_stop(row.id)
    if stopped is not None and stopped.state == State.STOPPED.value:
        report_stopped(intake.services, stopped)  # it never started: its comment and check say so
    intake.outcome["stopped"] = [row.id]


async def rerun(intake: Intake, row: Session) -> None:
    """The same request again, as a follow-up on the same branch (a new progress comment and check run)."""
    report = row.report or {}
    new = NewSession(
        trigger_key=intake.trigger_key, prompt=row.prompt, agent=row.agent, model=row.model, repo=row.repo,
        source="github", base_branch=row.base_branch, branch=row.branch if row.pr_number else None,
        requested_by=intake.sender, parent_id=row.id, budget_usd=row.budget_usd, pr_number=row.pr_number,
        issue_number=row.issue_number, context=row.context,
        report={"installation_id": intake.installation_id, "issue_number": report.get("issue_number")})
    created, fresh = await intake.services.sessions.create(new)
    intake.outcome["session"] = created.id
    if fresh:
        await intake.queue.enqueue(created.id)
