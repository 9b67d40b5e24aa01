"""Mentions in issue comments, PR conversation comments, review bodies and review comments."""

from __future__ import annotations

from typing import Any

from gidgethub import routing, sansio

from bot.catalog import AGENT_NAMES
from bot.github import SesameGitHubAPI
from bot.triggers import MAX_BEST_OF, Command, Trigger, parse_mention
from webhooks.github.best_of import pick, start_best_of
from webhooks.github.intake import HELP_TEXT, Intake, Mention, admitted, ignored, refuse, reply
from webhooks.github.start import quick_start, start_session, stop_sessions

router = routing.Router()


async def handle_mention(intake: Intake, source: Mention) -> None:
    """The whole trigger path for a comment or review mentioning the app."""
    if ignored(intake.event, intake.slug):
        return
    trigger = parse_mention(source.text or "", intake.slug)
    if trigger is None:
        return
    single_run = trigger.command is Command.RUN and not trigger.error and not trigger.agents
    if single_run and await quick_start(intake, source, trigger):
        return
    gh = await admitted(intake, source)
    if gh is None:
        return
    if trigger.command is Command.RUN and not trigger.error and trigger.agents:
        await start_best_of(intake, gh, source, trigger)  # issue 18: one session per agent
    elif trigger.command is Command.RUN and not trigger.error:
        await start_session(intake, gh, source, trigger)  # the session's trigger key dedupes
    elif await intake.claim_delivery():
        await answer_command(intake, gh, source, trigger)


async def answer_command(intake: Intake, gh: SesameGitHubAPI, source: Mention, trigger: Trigger) -> None:
    """Reply to a malformed mention or `help`; carry out `stop`."""
    if trigger.error:
        await refuse(intake, gh, source, "malformed", trigger.error)
    elif trigger.command is Command.HELP:
        await reply(intake, gh, source, HELP_TEXT.format(slug=intake.slug, agents=", ".join(AGENT_NAMES),
                                                         most=MAX_BEST_OF))
        intake.outcome["help"] = True
    elif trigger.command is Command.PICK:
        await pick(intake, gh, source, trigger)
    else:
        await stop_sessions(intake, gh, source)


def pull_request_as_issue(pr: dict[str, Any]) -> dict[str, Any]:
    """The issue-shaped view of a PR that replies and context need."""
    return {"number": pr["number"], "title": pr.get("title"), "body": pr.get("body"),
            "comments_url": pr.get("comments_url") or pr["issue_url"] + "/comments", "pull_request": pr}


@router.register("issue_comment", action="created")
async def issue_comment(event: sansio.Event, intake: Intake) -> None:
    """`@sesame ...` on an issue or a PR's conversation."""
    issue, comment = event.data["issue"], event.data["comment"]
    await handle_mention(intake, Mention(comment.get("body") or "", issue, "pull_request" in issue,
                                         comment=comment))


@router.register("pull_request_review_comment", action="created")
async def review_comment(event: sansio.Event, intake: Intake) -> None:
    """`@sesame ...` on a line of a PR's diff: the path, line and hunk join the context."""
    comment = event.data["comment"]
    await handle_mention(intake, Mention(comment.get("body") or "", pull_request_as_issue(event.data["pull_request"]),
                                         True, review_comment=comment))


@router.register("pull_request_review", action="submitted")
async def review(event: sansio.Event, intake: Intake) -> None:
    """`@sesame ...` in the body of a submitted review."""
    body = event.data["review"].get("body") or ""
    await handle_mention(intake, Mention(body, pull_request_as_issue(event.data["pull_request"]), True,
                                         comment=event.data["review"]))
