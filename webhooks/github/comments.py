"""Mentions in issue comments, PR conversation comments, review bodies and review comments."""

from __future__ import annotations

from gidgethub import routing, sansio

from webhooks.github.intake import Intake, Mention, handle_mention, independent

router = routing.Router()


@router.register("issue_comment", action="created")
@independent
async def issue_comment(event: sansio.Event, intake: Intake) -> None:
    """`@sesame ...` on an issue or a PR's conversation."""
    issue = event.data["issue"]
    await handle_mention(intake, event, Mention(event.data["comment"]["body"], issue,
                                                "pull_request" in issue, comment=event.data["comment"]))


@router.register("pull_request_review_comment", action="created")
@independent
async def review_comment(event: sansio.Event, intake: Intake) -> None:
    """`@sesame ...` on a line of a PR's diff: the path, line and hunk join the context."""
    pr = event.data["pull_request"]
    issue = {"number": pr["number"], "title": pr.get("title"), "body": pr.get("body"),
             "comments_url": pr.get("comments_url") or pr["issue_url"] + "/comments", "pull_request": pr}
    comment = event.data["comment"]
    await handle_mention(intake, event, Mention(comment["body"], issue, True, review_comment=comment))


@router.register("pull_request_review", action="submitted")
@independent
async def review(event: sansio.Event, intake: Intake) -> None:
    """`@sesame ...` in the body of a submitted review."""
    pr, body = event.data["pull_request"], event.data["review"].get("body") or ""
    issue = {"number": pr["number"], "title": pr.get("title"), "body": pr.get("body"),
             "comments_url": pr.get("comments_url") or pr["issue_url"] + "/comments", "pull_request": pr}
    await handle_mention(intake, event, Mention(body, issue, True, comment=event.data["review"]))
