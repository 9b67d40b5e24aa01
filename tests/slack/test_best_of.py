"""Best-of-N from Slack (issue 18), end to end through the app, the fake Slack and the fake GitHub:
`/sesame acme/widget --agents command,command,command PROMPT` runs three sessions on three branches in one
thread, one comparison message follows, `pick 2` mentioned in the thread opens the pull request from the
second; `stop` in the thread stops them all; an agent the server does not know is refused."""

from __future__ import annotations

import asyncio
import shlex
import textwrap
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qsl

import pytest_asyncio
from aiohttp.test_utils import TestClient

from bot.models import Session
from bot.services import Services
from bot.triggers import parse_slack_command
from tests.conftest import session_base
from tests.slack.conftest import SlackHarness, fetch
from tests.support.fake_github import FakeGitHub
from tests.support.fake_slack import FakeSlack, Message
from tests.support.gitrepo import git
from tests.support.stack import Running, inline_stack
from webhooks import slack as slack_intake

CHANNEL = "C1BESTOF"
# Each session writes its own id, so the three branches differ; "slowly" keeps it running until stopped.
AGENT = shlex.join(["/usr/bin/python3", "-c", textwrap.dedent("""\
    import os, pathlib, sys, time
    prompt = sys.stdin.read()
    if "slowly" in prompt:
        time.sleep(100)
    pathlib.Path("src/widget.py").write_text("def answer():\\n    return 42\\n")
    pathlib.Path("WHO.txt").write_text(os.environ["SESAME_SESSION_ID"])
    print("done", flush=True)
""")])


@pytest_asyncio.fixture
async def running(db_url: str, settings_for: Any, fake_slack: FakeSlack,
                  fake_github: FakeGitHub) -> AsyncIterator[Running]:
    """The web app with sessions running in-process (the embedded default, two at a time)."""
    settings = settings_for(DATABASE_URL=db_url, BASE_URL="http://sesame.test", SESSION_DIR_BASE=session_base(),
                            AGENT_COMMAND=AGENT, SESSION_TIMEOUT="150", **fake_slack.settings_env(),
                            **fake_github.settings_env())
    async with inline_stack(settings) as stack:
        yield stack


async def command(client: TestClient, fake_slack: FakeSlack, text: str) -> dict[str, Any]:
    body = fake_slack.command_body(text, channel=CHANNEL)
    response = await client.post("/slack/events", data=body, headers={
        **fake_slack.signed_headers(body), "Content-Type": "application/x-www-form-urlencoded"})
    assert response.status == 200
    await client.app[slack_intake.SLACK_INTAKE].drain()
    answer: dict[str, Any] = await response.json()
    return answer


async def mention(client: TestClient, fake_slack: FakeSlack, text: str, thread_ts: str) -> None:
    event = fake_slack.event_body(fake_slack.mention_event(text, channel=CHANNEL, thread_ts=thread_ts))
    response = await client.post("/slack/events", data=event, headers={
        **fake_slack.signed_headers(event), "Content-Type": "application/json"})
    assert response.status == 200
    await client.app[slack_intake.SLACK_INTAKE].drain()


async def group_rows(services: Services, fake_slack: FakeSlack) -> list[Session]:
    rows = [s for s in await services.sessions.recent(limit=1000)
            if s.report.get("team") == fake_slack.team_id and (s.context or {}).get("best_of")]
    return sorted(rows, key=lambda r: int(r.context["best_of"]["index"]))


def head_message(fake_slack: FakeSlack) -> Message:
    [head] = [m for m in fake_slack.posted(CHANNEL) if m.thread_ts is None]
    return head


def thread_texts(fake_slack: FakeSlack, thread_ts: str) -> list[str]:
    return [m.text for m in fake_slack.posted(CHANNEL, thread_ts=thread_ts)]


async def test_three_agents_in_one_thread_compared_and_one_picked(running: Running, fake_slack: FakeSlack,
                                                                  fake_github: FakeGitHub) -> None:
    client, queue, services = running
    fake_github.commit_file("acme/widget", "main", {".sesame.yml": "test: 'true'\n"})
    answer = await command(client, fake_slack, "acme/widget --agents command,command,command make answer() 42")
    assert "Queued 3 sessions" in answer["text"], answer
    await queue.join()

    rows = await group_rows(services, fake_slack)
    assert [r.state for r in rows] == ["completed"] * 3, [r.error for r in rows]
    assert len({r.context["best_of"]["group"] for r in rows}) == 1
    assert len({r.branch for r in rows}) == 3 and not fake_github.pulls
    bare = fake_github.repos["acme/widget"].path
    assert [git("show", f"{r.branch}:WHO.txt", cwd=bare) for r in rows] == [r.id for r in rows]

    head = head_message(fake_slack)  # one thread: the head message, each session's message a reply in it
    assert "with 3 agents" in head.text
    for row in rows:
        assert row.report["thread_ts"] == head.ts
        assert fake_slack.message(CHANNEL, row.report["ts"]).thread_ts == head.ts
    [table] = [t for t in thread_texts(fake_slack, head.ts) if "ran this request with 3 agents" in t]
    for i, row in enumerate(rows, 1):
        line = next(x for x in table.splitlines() if x.startswith(f"*{i}. "))
        assert " · completed · 2 files changed" in line and " · tests passed · " in line, line
        assert line.endswith(f"branch `{row.branch}`") and " · 0 violations · " in line, line
    assert "pick N" in table

    await mention(client, fake_slack, "pick command", head.ts)
    assert any("3 sessions ran command: pick one by its number" in t for t in thread_texts(fake_slack, head.ts))
    await mention(client, fake_slack, "more tests please", head.ts)  # a follow-up before a pick: which one?
    assert "pick N" in fake_slack.ephemerals[-1].text and not fake_github.pulls

    await mention(client, fake_slack, "pick 2", head.ts)
    [pr] = fake_github.pulls
    assert pr.head == rows[1].branch and pr.base == "main"
    picked = await services.sessions.get(rows[1].id)
    assert picked is not None and picked.pr_number == pr.number
    [opened] = [t for t in thread_texts(fake_slack, head.ts) if t.startswith(":white_check_mark: Opened")]
    assert picked.pr_url and f"<{picked.pr_url}|#{pr.number}>" in opened and rows[1].branch in opened

    await mention(client, fake_slack, "and a docstring", head.ts)  # after the pick: on the picked one's branch
    await queue.join()
    # this test's workspace only: the run's PostgreSQL database holds other tests' follow-ups too
    [child] = [s for s in await services.sessions.recent(limit=1000)
               if s.parent_id and s.report.get("team") == fake_slack.team_id]
    assert child.parent_id == rows[1].id and child.state == "completed", child.error
    assert child.branch == rows[1].branch and child.pr_number == pr.number and len(fake_github.pulls) == 1
    assert child.report["thread_ts"] == head.ts


async def test_stop_in_the_thread_stops_every_session(running: Running, fake_slack: FakeSlack) -> None:
    client, queue, services = running
    await command(client, fake_slack, "acme/widget --agents command,command,command do it slowly")
    rows = await group_rows(services, fake_slack)
    assert len(rows) == 3
    for _ in range(900):  # two run at once (the inline queue's slots); the third waits its turn
        states = [(await services.sessions.get(r.id)).state for r in rows]  # type: ignore[union-attr]
        if sorted(states) == ["pending", "processing", "processing"]:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"two sessions never ran at once: {states}")
    await mention(client, fake_slack, "stop", head_message(fake_slack).ts)
    await queue.join()
    after = [await services.sessions.get(r.id) for r in rows]
    assert [r.state for r in after if r] == ["stopped"] * 3, [r.error for r in after if r]
    assert not any(r.commit_sha for r in after if r)
    [table] = [t for t in thread_texts(fake_slack, head_message(fake_slack).ts) if "ran this request" in t]
    assert table.count(" · stopped · ") == 3
    await mention(client, fake_slack, "pick 1", head_message(fake_slack).ts)
    assert ":x: I can't pick that: that session pushed nothing." in \
        thread_texts(fake_slack, head_message(fake_slack).ts)


async def test_an_unknown_agent_is_refused(running: Running, fake_slack: FakeSlack) -> None:
    client, _queue, services = running
    answer = await command(client, fake_slack, "acme/widget --agents command,nosuch fix it")
    assert answer["text"].startswith("I don't know the agent `nosuch`; the agents are ") and "command" in answer["text"]
    assert not await group_rows(services, fake_slack) and not fake_slack.posted(CHANNEL)


def test_the_command_grammar() -> None:
    parsed = parse_slack_command("acme/widget@dev --agents Claude,codex --budget 2 fix it")
    assert (parsed.repo, parsed.branch, parsed.agents, parsed.budget, parsed.prompt) == \
        ("acme/widget", "dev", ("claude", "codex"), 2.0, "fix it")
    for bad in ("acme/widget --agents claude fix it", "acme/widget --agent claude --agents claude,codex fix it"):
        assert parse_slack_command(bad).error, bad


async def test_a_retried_command_starts_nothing_twice(harness: SlackHarness) -> None:
    body = harness.slack.command_body("acme/widget --agents command,command fix it", channel=CHANNEL)
    status, first = await harness.command("", body=body)
    assert status == 200 and "Queued 2 sessions" in first["text"]
    status, again = await harness.command("", body=body, retry_num=1)
    assert status == 200 and again["text"].startswith("Already on it: sessions")
    rows = await group_rows(harness.services, harness.slack)
    assert sorted(harness.queue.enqueued) == sorted(r.id for r in rows) and len(rows) == 2
    assert len([m for m in harness.slack.posted(CHANNEL) if m.thread_ts is None]) == 1


async def test_pick_outside_a_best_of_thread_is_answered_there(harness: SlackHarness) -> None:
    await harness.command("acme/widget fix it", channel=CHANNEL)
    [message] = harness.slack.posted(CHANNEL)
    await harness.event(harness.slack.mention_event("pick 2", channel=CHANNEL, thread_ts=message.ts))
    assert [m.text for m in harness.slack.posted(CHANNEL, thread_ts=message.ts)] == \
        [":x: I can't pick that: there is no best-of-N run in this thread."]
    await harness.event(harness.slack.mention_event("--agents command,command again", channel=CHANNEL,
                                                    thread_ts=message.ts))
    assert harness.slack.ephemerals[-1].text.startswith("Best-of-N (`--agents`) starts with `/sesame")


async def test_a_stop_button_in_a_best_of_thread_stops_its_own_session(harness: SlackHarness) -> None:
    await harness.command("acme/widget --agents command,command,command fix it", channel=CHANNEL)
    rows = await group_rows(harness.services, harness.slack)
    second = harness.slack.message(CHANNEL, rows[1].report["ts"])
    status, _ = await harness.press(harness.slack.button_body(second, rows[1].id))
    assert status == 200
    after = [await fetch(harness, r.id) for r in rows]
    assert [r.state for r in after] == ["pending", "stopped", "pending"]
    assert "stopped" in harness.slack.message(CHANNEL, rows[1].report["ts"]).block_text()


async def test_a_retry_after_a_partial_first_attempt_completes_the_group(harness: SlackHarness) -> None:
    """The first attempt recorded session 1 and died; the retry records 2 and 3 and starts all three."""
    body = harness.slack.command_body("acme/widget --agents command,command,command fix it", channel=CHANNEL,
                                      trigger_id="13.42.abc")
    intake = harness.client.app[slack_intake.SLACK_INTAKE]
    first = dict(parse_qsl(body))
    parsed = replace(parse_slack_command(first["text"]), agent="command", agents=())
    new = intake.new_session(parsed, first, None)
    new.trigger_key = "slack:13.42.abc:1"
    new.context = {"best_of": {"group": "slack:13.42.abc", "index": 1, "of": 3}}
    await harness.services.sessions.create(new)
    status, answer = await harness.command("", body=body, retry_num=1)
    assert status == 200 and "Queued 3 sessions" in answer["text"]
    rows = await group_rows(harness.services, harness.slack)
    assert len(rows) == 3 and sorted(harness.queue.enqueued) == sorted(r.id for r in rows)
    head = head_message(harness.slack)
    assert [r.report["thread_ts"] for r in rows] == [head.ts] * 3
