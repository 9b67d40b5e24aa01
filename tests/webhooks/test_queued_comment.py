"""The queued comment is posted after the 202, and the worker never posts a second one."""

from __future__ import annotations

import asyncio
import time

import pytest

from bot.github_channel import COMMENT_DUE, github_channel
from bot.models import Session
from bot.progress import Progress
from tests.webhooks.conftest import Hook

COMMENTS = r"/issues/\d+/comments$"


async def post_trigger(hook: Hook, number: int, text: str = "@sesame fix it") -> int:
    """POST a trigger without waiting for the work it starts after answering."""
    headers, body = hook.fake.delivery("issue_comment", hook.fake.issue_comment_payload(hook.repo, number, text))
    response = await hook.client.post("/webhooks/github", data=body, headers=headers)
    return response.status


async def reload(hook: Hook, row: Session) -> Session:
    fresh = await hook.services.sessions.get(row.id)
    assert fresh is not None
    return fresh


def progress_of(row: Session, state: str = "processing") -> Progress:
    progress = Progress(row.id, row.prompt, "Command", f"http://sesame.test/sessions/{row.id}")
    progress.state = state
    return progress


async def test_the_202_does_not_wait_for_github(hook: Hook) -> None:
    issue = hook.fake.add_issue(hook.repo, "Flaky")
    gate = hook.fake.hold("POST", COMMENTS)
    assert await post_trigger(hook, issue.number) == 202
    [row] = await hook.sessions()
    assert hook.queue.ids == [row.id], "recorded and enqueued before the 202"
    assert hook.bot_comments(issue.number) == [] and "comment_id" not in row.report
    assert row.report[COMMENT_DUE] > time.time()
    gate.set()
    await hook.services.background.drain()
    [comment] = hook.bot_comments(issue.number)
    row = await reload(hook, row)
    assert row.report["comment_id"] == comment.id and COMMENT_DUE not in row.report
    assert "- [x] Queued" in comment.body


async def test_the_worker_waits_for_the_queued_comment_instead_of_posting_another(hook: Hook) -> None:
    issue = hook.fake.add_issue(hook.repo, "Flaky")
    gate = hook.fake.hold("POST", COMMENTS)
    assert await post_trigger(hook, issue.number) == 202
    [row] = await hook.sessions()
    channel = await github_channel(hook.services, row)
    publishing = asyncio.create_task(channel.publish(progress_of(row)))
    await asyncio.sleep(0.3)
    assert not publishing.done(), "the worker must wait while intake is still posting"
    gate.set()
    await asyncio.wait_for(publishing, 10)
    await hook.services.background.drain()
    [comment] = hook.bot_comments(issue.number)
    assert comment.edits >= 1 and "Queued" in comment.body


async def test_a_failed_queued_comment_is_created_by_the_worker_at_once(hook: Hook) -> None:
    issue = hook.fake.add_issue(hook.repo, "Flaky")
    hook.fake.fail_next("POST", COMMENTS, status=422)  # not transient: a 502 is now retried by the client
    assert (await hook.comment(issue.number, "@sesame fix it")).status == 202
    [row] = await hook.sessions()
    assert hook.bot_comments(issue.number) == []
    assert "comment_id" not in row.report and COMMENT_DUE not in row.report
    channel = await github_channel(hook.services, row)
    await asyncio.wait_for(channel.publish(progress_of(row)), 5)
    [comment] = hook.bot_comments(issue.number)
    assert (await reload(hook, row)).report["comment_id"] == comment.id


async def test_an_overdue_queued_comment_no_longer_holds_the_worker(hook: Hook) -> None:
    """Intake died between the 202 and storing its comment's id: after the due time the worker finds
    that comment by its marker and edits it, never posting a second one."""
    issue = hook.fake.add_issue(hook.repo, "Flaky")
    assert (await hook.comment(issue.number, "@sesame fix it")).status == 202
    [row] = await hook.sessions()
    [queued] = hook.bot_comments(issue.number)
    assert f"<!-- sesame:session={row.id} -->" in queued.body
    report = {k: v for k, v in row.report.items() if k != "comment_id"}
    await hook.services.sessions.set_report(row.id, {**report, COMMENT_DUE: time.time() - 1})
    channel = await github_channel(hook.services, await reload(hook, row))
    await asyncio.wait_for(channel.publish(progress_of(row)), 5)
    [comment] = hook.bot_comments(issue.number)
    assert comment.id == queued.id and "is working on this" in comment.body
    row = await reload(hook, row)
    assert row.report["comment_id"] == queued.id and COMMENT_DUE not in row.report


async def test_a_marker_in_someone_elses_comment_is_not_taken_for_the_progress_comment(hook: Hook) -> None:
    issue = hook.fake.add_issue(hook.repo, "Flaky")
    hook.fake.fail_next("POST", COMMENTS, status=422)
    assert (await hook.comment(issue.number, "@sesame fix it")).status == 202
    [row] = await hook.sessions()
    forged = await hook.comment(issue.number, f"look <!-- sesame:session={row.id} -->")
    assert forged.status in (200, 202)
    channel = await github_channel(hook.services, await reload(hook, row))
    await asyncio.wait_for(channel.publish(progress_of(row)), 5)
    [comment] = hook.bot_comments(issue.number)
    assert (await reload(hook, row)).report["comment_id"] == comment.id
    assert "is working on this" in comment.body
    assert [c.body for c in hook.fake.comments_on(hook.repo, issue.number) if c.body.startswith("look")] == [
        f"look <!-- sesame:session={row.id} -->"], "the forged comment is left alone"


async def test_intake_gives_up_on_a_hanging_github_before_the_worker_stops_waiting(
        hook: Hook, monkeypatch: pytest.MonkeyPatch) -> None:
    import webhooks.github.start as start

    monkeypatch.setattr(start, "COMMENT_GRACE", 0.4)
    issue = hook.fake.add_issue(hook.repo, "Flaky")
    gate = hook.fake.hold("POST", COMMENTS)
    try:
        assert await post_trigger(hook, issue.number) == 202
        await asyncio.wait_for(hook.services.background.drain(), 5)  # gave up after COMMENT_GRACE / 2
        [row] = await hook.sessions()
        assert "comment_id" not in row.report and COMMENT_DUE not in row.report
    finally:
        gate.set()
