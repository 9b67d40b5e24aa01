"""/sesame, the Stop button and thread follow-ups through bolt, on real databases and the fakes."""

from __future__ import annotations

import time
import uuid

import pytest

from bot.models import Session, State
from bot.sessions import NewSession
from tests.slack.conftest import SlackHarness, fetch

CHANNEL = "C1GENERAL"


async def sessions(h: SlackHarness) -> list[Session]:
    """This test's sessions (the PostgreSQL database is shared by the whole run)."""
    return [s for s in await h.services.sessions.recent(limit=1000) if (s.report or {}).get("team") == h.slack.team_id]


async def test_command_is_recorded_enqueued_acked_and_announced(harness: SlackHarness) -> None:
    status, body = await harness.command("acme/widget@main --agent command fix the flaky retry test",
                                         user="U1ALICE", channel=CHANNEL)
    assert status == 200
    assert body["response_type"] == "ephemeral" and "Queued session" in body["text"]
    [row] = await sessions(harness)
    assert (row.repo, row.base_branch, row.agent, row.source) == ("acme/widget", "main", "command", "slack")
    assert row.prompt == "fix the flaky retry test" and row.trigger_key.startswith("slack:")
    assert harness.queue.enqueued == [row.id]
    [message] = harness.slack.posted(CHANNEL)
    assert row.report["channel"] == CHANNEL and row.report["ts"] == message.ts
    assert row.report["thread_ts"] == message.ts and row.report["user"] == "U1ALICE"
    assert row.report["installation_id"] == harness.github.installation_id
    stop = [e for b in message.blocks if b["type"] == "actions" for e in b["elements"]]
    assert stop[0]["action_id"] == "sesame_stop" and stop[0]["value"] == row.id
    assert f"http://sesame.test/sessions/{row.id}" in message.block_text()
    assert [c.method for c in harness.slack.calls] == ["auth.test", "chat.postMessage"]


async def test_a_budget_in_the_command_is_stored(harness: SlackHarness) -> None:
    status, _body = await harness.command("acme/widget --agent command --budget 1.25 fix it", user="U1ALICE",
                                          channel=CHANNEL)
    assert status == 200
    [row] = await sessions(harness)
    assert (row.prompt, row.budget_usd) == ("fix it", 1.25)


@pytest.mark.parametrize("slack_env", [{"SLACK_USER_MAP": "U1ALICE=alice-gh"}])
async def test_mapped_user_becomes_the_commit_author(harness: SlackHarness) -> None:
    await harness.command("acme/widget fix it", user="U1ALICE")
    [row] = await sessions(harness)
    assert row.report["author"] == {"name": "alice-gh", "email": "alice-gh@users.noreply.github.com"}
    assert row.requested_by == "alice-gh"


async def test_bad_signature_is_refused(harness: SlackHarness) -> None:
    body = harness.slack.command_body("acme/widget fix it")
    status, _ = await harness.post(body, harness.slack.signed_headers(body, secret="not-the-secret"),
                                   "application/x-www-form-urlencoded")
    assert status == 401
    assert await sessions(harness) == [] and harness.slack.calls == [] and harness.queue.enqueued == []


async def test_stale_timestamp_is_refused(harness: SlackHarness) -> None:
    body = harness.slack.command_body("acme/widget fix it")
    headers = harness.slack.signed_headers(body, timestamp=int(time.time()) - 6 * 60)
    status, _ = await harness.post(body, headers, "application/x-www-form-urlencoded")
    assert status == 401
    assert await sessions(harness) == [] and harness.slack.calls == []


async def test_a_retried_command_makes_one_session(harness: SlackHarness) -> None:
    body = harness.slack.command_body("acme/widget fix it")
    first = await harness.command("", body=body)
    again = await harness.command("", body=body, retry_num=1)
    assert first[0] == again[0] == 200
    assert "Already on it" in again[1]["text"]
    [row] = await sessions(harness)
    assert len(harness.slack.posted()) == 1 and harness.queue.enqueued == [row.id]


@pytest.mark.parametrize("slack_env", [{"SLACK_ALLOWED_USERS": "U1ALICE"}])
async def test_a_user_not_allowed_is_refused(harness: SlackHarness) -> None:
    status, body = await harness.command("acme/widget fix it", user="U9MALLORY")
    assert status == 200 and "not allowed" in body["text"] and body["response_type"] == "ephemeral"
    assert await sessions(harness) == [] and harness.slack.posted() == []


@pytest.mark.parametrize("slack_env", [{"SLACK_ALLOWED_CHANNELS": "C1GENERAL"}])
async def test_a_channel_not_allowed_is_refused(harness: SlackHarness) -> None:
    _, body = await harness.command("acme/widget fix it", channel="C9RANDOM")
    assert "does not run in this channel" in body["text"]
    assert await sessions(harness) == []
    _, body = await harness.command("acme/widget fix it", channel=CHANNEL)
    assert "Queued session" in body["text"]


@pytest.mark.parametrize("text", ["fix it please", "acme/widget", "acme/widget --agent", "status"])
async def test_malformed_text_gets_usage(harness: SlackHarness, text: str) -> None:
    status, body = await harness.command(text)
    assert status == 200 and body["response_type"] == "ephemeral"
    assert "/sesame owner/repo" in body["text"]
    assert await sessions(harness) == [] and harness.queue.enqueued == []


async def test_help(harness: SlackHarness) -> None:
    _, body = await harness.command("help")
    assert "/sesame stop ID" in body["text"]


async def test_a_repository_without_the_app_gets_a_clear_reply(harness: SlackHarness) -> None:
    harness.github.add_repo("elsewhere/tool", installed=False)  # exists, the App is not on it
    _, body = await harness.command("elsewhere/tool fix it")
    assert "Sesame is not installed on `elsewhere/tool`" in body["text"]
    assert await sessions(harness) == [] and harness.slack.posted() == []


async def test_status(harness: SlackHarness) -> None:
    await harness.command("acme/widget fix the flaky retry test")
    [row] = await sessions(harness)
    _, body = await harness.command(f"status {row.id}")
    assert "fix the flaky retry test" in body["text"] and "*pending*" in body["text"]
    _, body = await harness.command("status 00000000-0000-0000-0000-000000000000")
    assert "No session" in body["text"]


async def test_stop_during_a_run(harness: SlackHarness) -> None:
    await harness.command("acme/widget fix it", user="U1ALICE")
    [row] = await sessions(harness)
    assert await harness.services.sessions.claim(row.id, "worker-1") is not None  # running now
    _, body = await harness.command(f"stop {row.id}", user="U2BOB")
    assert "Only the person who started" in body["text"]
    assert not (await fetch(harness, row.id)).stop_requested
    _, body = await harness.command(f"stop {row.id}", user="U1ALICE")
    assert "Stopping session" in body["text"]
    row = await fetch(harness, row.id)
    assert row.stop_requested and row.state == State.PROCESSING.value  # the worker kills and ends it
    assert harness.queue.enqueued == [row.id]


async def test_stop_button_on_a_queued_session_updates_the_message(harness: SlackHarness) -> None:
    await harness.command("acme/widget fix it", user="U1ALICE")
    [row] = await sessions(harness)
    [message] = harness.slack.posted(CHANNEL)
    status, _ = await harness.press(harness.slack.button_body(message, row.id, user="U1ALICE"))
    assert status == 200
    row = await fetch(harness, row.id)
    assert row.state == State.STOPPED.value and row.stop_requested
    [note] = harness.slack.ephemerals
    assert note.user == "U1ALICE" and "Stopped session" in note.text
    assert message.edits == 1 and "Stopped" in message.block_text()
    assert not any(b["type"] == "actions" for b in message.blocks)  # no Stop button any more
    [reply] = harness.slack.posted(CHANNEL, thread_ts=message.ts)
    assert "Stopped" in reply.text


async def test_thread_follow_up_makes_a_child_on_the_same_branch(harness: SlackHarness) -> None:
    await harness.command("acme/widget fix it", user="U1ALICE")
    [parent] = await sessions(harness)
    await harness.services.sessions.set_branch(parent.id, "sesame/fix-it", "main")
    event = harness.slack.mention_event("--agent command now add a test", channel=CHANNEL,
                                        thread_ts=parent.report["ts"])
    event_id = f"Ev{uuid.uuid4().hex[:10]}"
    status, _ = await harness.event(event, event_id=event_id)
    assert status == 200
    again = await harness.event(event, event_id=event_id, retry_num=1)  # Slack's retry
    assert again[0] == 200
    children = [s for s in await sessions(harness) if s.parent_id == parent.id]
    assert len(children) == 1
    [child] = children
    assert (child.branch, child.base_branch, child.repo) == ("sesame/fix-it", "main", "acme/widget")
    assert child.prompt == "now add a test" and child.agent == "command"
    assert harness.queue.enqueued == [parent.id, child.id]
    [reply] = harness.slack.posted(CHANNEL, thread_ts=parent.report["ts"])
    assert child.report["ts"] == reply.ts and child.report["thread_ts"] == parent.report["ts"]

    later = harness.slack.mention_event("and the docs", channel=CHANNEL, thread_ts=parent.report["ts"])
    await harness.event(later)
    grandchild = next(s for s in await sessions(harness) if s.prompt == "and the docs")
    assert grandchild.parent_id == child.id  # the thread's last session


async def test_a_lone_surrogate_in_a_follow_up_is_dropped_like_an_invisible_character(harness: SlackHarness) -> None:
    """Slack's JSON may escape half a UTF-16 pair; no column stores it, and the event was acked 200 before the
    insert failed: the follow-up vanished with no reply. It is dropped like the other invisible characters."""
    await harness.command("acme/widget fix it", user="U1ALICE")
    [parent] = await sessions(harness)
    await harness.services.sessions.set_branch(parent.id, "sesame/fix-it", "main")
    event = harness.slack.mention_event("--agent command now add \ud800a test\udfff", channel=CHANNEL,
                                        thread_ts=parent.report["ts"])
    status, _ = await harness.event(event)
    assert status == 200
    [child] = [s for s in await sessions(harness) if s.parent_id == parent.id]
    assert child.prompt == "now add a test"
    [reply] = harness.slack.posted(CHANNEL, thread_ts=parent.report["ts"])
    assert child.report["ts"] == reply.ts


async def test_mention_outside_a_session_thread_gets_a_hint(harness: SlackHarness) -> None:
    event = harness.slack.mention_event("fix everything", channel=CHANNEL, thread_ts=None)
    await harness.event(event)
    [note] = harness.slack.ephemerals
    assert "session's thread" in note.text and await sessions(harness) == []


async def test_stop_by_mention_in_the_thread(harness: SlackHarness) -> None:
    await harness.command("acme/widget fix it", user="U1ALICE")
    [row] = await sessions(harness)
    await harness.services.sessions.claim(row.id, "worker-1")
    await harness.event(harness.slack.mention_event("stop", channel=CHANNEL, thread_ts=row.report["ts"]))
    assert (await fetch(harness, row.id)).stop_requested
    assert len(await sessions(harness)) == 1


async def test_a_session_from_elsewhere_cannot_be_stopped_from_slack(harness: SlackHarness) -> None:
    row, _ = await harness.services.sessions.create(NewSession(
        trigger_key=f"api:{uuid.uuid4()}", prompt="x", agent="command", repo="acme/widget", source="api"))
    _, body = await harness.command(f"stop {row.id}")
    assert "No Slack session" in body["text"]


async def test_a_mention_that_failed_is_handled_again_on_retry(harness: SlackHarness) -> None:
    harness.slack.rate_limit("chat.postEphemeral", count=1, retry_after=1)  # the first answer fails
    event = harness.slack.mention_event("hello", channel=CHANNEL, thread_ts=None)
    event_id = f"Ev{uuid.uuid4().hex[:10]}"
    await harness.event(event, event_id=event_id)
    assert harness.slack.ephemerals == []
    await harness.event(event, event_id=event_id, retry_num=1)
    [note] = harness.slack.ephemerals
    assert "session's thread" in note.text
    await harness.event(event, event_id=event_id, retry_num=2)  # handled once: dropped
    assert len(harness.slack.ephemerals) == 1


async def test_a_channel_without_the_bot_gets_told_and_the_session_still_runs(harness: SlackHarness) -> None:
    harness.slack.not_in.add("C7PRIVATE")
    _, body = await harness.command("acme/widget fix it", channel="C7PRIVATE")
    assert "Queued session" in body["text"]
    [row] = await sessions(harness)
    assert harness.queue.enqueued == [row.id] and "ts" not in row.report
    [response] = harness.slack.responses
    assert "not_in_channel" in response["text"] and row.id in response["text"]
