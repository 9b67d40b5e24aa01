"""The Slack channel the runner reports through: chat.update in place, 429s, thread replies, GitHub access."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from typing import Any

import pytest

from bot.models import Session
from bot.progress import RateLimited, ThrottledPublisher
from bot.sessions import NewSession
from bot.slack import SlackChannel, first_progress, post_session_message, slack_channel, web_client
from tests.slack.conftest import SlackHarness, fetch

CHANNEL = "C1GENERAL"


async def slack_session(h: SlackHarness, repo: str = "acme/widget", post: bool = True,
                        **report: Any) -> Session:
    """A queued Slack session whose message is in the fake's channel."""
    row, _ = await h.services.sessions.create(NewSession(
        trigger_key=f"slack:{uuid.uuid4()}", prompt="fix the flaky retry test", agent="command",
        repo=repo, source="slack",
        report={"team": h.slack.team_id, "channel": CHANNEL, "user": "U1ALICE", **report}))
    if post:
        await post_session_message(web_client(h.services.settings, h.services.http), h.services, row)
    return row


async def test_publish_updates_the_one_message(harness: SlackHarness) -> None:
    row = await slack_session(harness)
    channel = await slack_channel(harness.services, row)
    progress = first_progress(harness.services, row)
    progress.step("workspace", "done", "`acme/widget` at `main`, 0.4 s")
    progress.activity, progress.state = "Editing tests/test_http.py", "processing"
    progress.step("agent", "running")
    await channel.publish(progress)
    [message] = harness.slack.posted(CHANNEL)
    assert message.edits == 1 and "Editing tests/test_http.py" in message.block_text()
    assert harness.slack.posted(CHANNEL, thread_ts=message.ts) == []  # nothing in the thread yet


async def test_429_on_update_becomes_rate_limited(harness: SlackHarness) -> None:
    row = await slack_session(harness)
    channel = await slack_channel(harness.services, row)
    harness.slack.rate_limit("chat.update", count=1, retry_after=7)
    with pytest.raises(RateLimited) as caught:
        await channel.publish(first_progress(harness.services, row))
    assert caught.value.retry_after == 7
    assert harness.slack.posted(CHANNEL)[0].edits == 0


async def test_the_publisher_waits_out_the_429_and_coalesces(harness: SlackHarness) -> None:
    row = await slack_session(harness)
    channel = await slack_channel(harness.services, row)
    harness.slack.rate_limit("chat.update", count=2, retry_after=0.2)
    progress = first_progress(harness.services, row)
    progress.step("agent", "running")
    publisher = ThrottledPublisher(channel.publish, progress, interval=0.05)
    publisher.start()
    for n in range(200):  # a chatty agent
        progress.activity = f"line {n}"
        publisher.changed()
        await asyncio.sleep(0)
    await harness.slack.wait_for(lambda: harness.slack.posted(CHANNEL)[0].edits >= 1)
    await publisher.close()
    message = harness.slack.posted(CHANNEL)[0]
    statuses = [c.status for c in harness.slack.calls_of("chat.update")]
    assert statuses[:2] == [429, 429] and set(statuses[2:]) == {200}
    assert message.edits <= 3 and "line 199" in message.block_text()


async def test_the_end_is_one_thread_reply(harness: SlackHarness) -> None:
    row = await slack_session(harness)
    channel = await slack_channel(harness.services, row)
    progress = first_progress(harness.services, row)
    progress.warning = "sandbox security is disabled: bubblewrap is missing"
    progress.finish("error", error="Command exited with status 3: boom")
    await channel.publish(progress)
    await channel.publish(progress)
    message = harness.slack.posted(CHANNEL)[0]
    replies = harness.slack.posted(CHANNEL, thread_ts=message.ts)
    assert [r.text.split(" ")[0] for r in replies] == [":warning:", ":x:"]
    assert "Command exited with status 3: boom" in replies[1].text
    assert "Failed" in message.block_text() and message.edits == 2


async def test_publish_posts_the_message_when_intake_could_not(harness: SlackHarness) -> None:
    row = await slack_session(harness, post=False)
    channel = await slack_channel(harness.services, row)
    await channel.publish(first_progress(harness.services, row))
    [message] = harness.slack.posted(CHANNEL)
    stored = await fetch(harness, row.id)
    assert stored.report["ts"] == message.ts and message.edits == 1


async def test_access_is_a_scoped_token_that_git_accepts(harness: SlackHarness) -> None:
    row = await slack_session(harness, post=False)
    channel = await slack_channel(harness.services, row)
    access = await channel.access()
    assert access.remote == harness.github.clone_url("acme/widget")
    assert access.secrets and access.secrets[0] not in access.remote
    assert harness.github.tokens[access.secrets[0]].repositories == frozenset({"widget"})
    listing = await asyncio.to_thread(subprocess.run, ["git", "ls-remote", access.remote], env={
        "PATH": "/usr/bin:/bin", "HOME": "/nonexistent", **access.auth_env}, capture_output=True, text=True)
    assert listing.returncode == 0, listing.stderr
    assert "refs/heads/main" in listing.stdout


async def test_still_allowed_checks_the_policy_and_the_installation(harness: SlackHarness) -> None:
    allowed = await slack_session(harness, post=False)
    assert await (await slack_channel(harness.services, allowed)).still_allowed() is None
    harness.github.add_repo("elsewhere/tool", installed=False)
    gone = await slack_session(harness, repo="elsewhere/tool", post=False)
    reason = await (await slack_channel(harness.services, gone)).still_allowed()
    assert reason and "not installed on `elsewhere/tool`" in reason
    harness.services.settings.values["SLACK_ALLOWED_USERS"] = ["U2BOB"]
    reason = await SlackChannel(harness.services, allowed, web_client(harness.services.settings)).still_allowed()
    assert reason and "not allowed" in reason



@pytest.mark.parametrize("reset", [False, True], ids=["502", "reset"])
async def test_a_transient_slack_failure_on_update_is_retried(harness: SlackHarness, reset: bool) -> None:
    row = await slack_session(harness)
    channel = await slack_channel(harness.services, row)
    harness.slack.fail("chat.update", count=2, status=502, reset=reset)
    await asyncio.wait_for(channel.publish(first_progress(harness.services, row)), 20)
    assert [c.status for c in harness.slack.calls_of("chat.update")] == [502, 502, 200]
    assert harness.slack.posted(CHANNEL)[0].edits == 1
