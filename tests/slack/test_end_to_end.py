"""A /sesame command becomes a pull request on the fake GitHub remote; the message follows it."""

from __future__ import annotations

import shlex
import textwrap
from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio

from tests.conftest import session_base
from tests.support.fake_github import FakeGitHub
from tests.support.fake_slack import FakeSlack
from tests.support.gitrepo import git
from tests.support.stack import Running, inline_stack
from webhooks import slack as slack_intake

CHANNEL = "C1GENERAL"
# The system Python: readable by the sandbox user, unlike a pyenv under /root.
AGENT = shlex.join(["/usr/bin/python3", "-c", textwrap.dedent("""\
    import pathlib, sys
    prompt = sys.stdin.read().splitlines()[0]
    pathlib.Path("src/widget.py").write_text("def answer():\\n    return 42\\n")
    with open("NOTES.md", "a") as notes:
        notes.write(prompt + "\\n")
    print("edited src/widget.py", flush=True)
""")])


@pytest_asyncio.fixture
async def running(db_url: str, settings_for: Any, fake_slack: FakeSlack,
                  fake_github: FakeGitHub) -> AsyncIterator[Running]:
    """The web app with sessions running in-process (the embedded default)."""
    settings = settings_for(DATABASE_URL=db_url, BASE_URL="http://sesame.test", SESSION_DIR_BASE=session_base(),
                            AGENT_COMMAND=AGENT, SESSION_TIMEOUT="120", SLACK_USER_MAP="U1ALICE=alice-gh",
                            **fake_slack.settings_env(), **fake_github.settings_env())
    async with inline_stack(settings) as stack:
        yield stack


async def test_a_command_ends_in_a_pull_request(running: Running,
                                               fake_slack: FakeSlack, fake_github: FakeGitHub) -> None:
    client, queue, services = running
    body = fake_slack.command_body("acme/widget --agent command make answer() return 42",
                                   user="U1ALICE", channel=CHANNEL)
    response = await client.post("/slack/events", data=body, headers={
        **fake_slack.signed_headers(body), "Content-Type": "application/x-www-form-urlencoded"})
    assert response.status == 200 and "Queued session" in (await response.json())["text"]
    await client.app[slack_intake.SLACK_INTAKE].drain()
    await queue.join()

    [row] = [s for s in await services.sessions.recent(limit=1000) if s.report.get("team") == fake_slack.team_id]
    assert row.state == "completed" and row.branch, row.error
    [pull] = [p for p in fake_github.pulls if p.repo == "acme/widget" and p.head == row.branch]
    assert row.pr_number == pull.number and pull.base == "main"
    bare = fake_github.repos["acme/widget"].path
    assert fake_github.branches("acme/widget")[row.branch] == row.commit_sha
    assert git("log", "-1", "--format=%an <%ae>", row.branch, cwd=bare) == \
        "alice-gh <alice-gh@users.noreply.github.com>"
    assert git("show", f"{row.branch}:src/widget.py", cwd=bare).endswith("return 42")

    message = fake_slack.message(CHANNEL, row.report["ts"])
    assert message.edits >= 1 and "Done" in message.block_text()
    assert not any(b["type"] == "actions" for b in message.blocks)
    [reply] = final_replies(fake_slack, message.ts)
    assert reply.text.startswith(":white_check_mark: Done") and row.pr_url in reply.text


def final_replies(fake_slack: FakeSlack, thread_ts: str) -> list[Any]:
    """Thread replies other than the sandbox warning (hosts without bubblewrap get one)."""
    return [r for r in fake_slack.posted(CHANNEL, thread_ts=thread_ts) if not r.text.startswith(":warning:")]


async def test_a_thread_follow_up_adds_commits_to_the_same_pull_request(
        running: Running, fake_slack: FakeSlack, fake_github: FakeGitHub) -> None:
    client, queue, services = running
    body = fake_slack.command_body("acme/widget --agent command make answer() return 42", channel=CHANNEL)
    await client.post("/slack/events", data=body, headers={
        **fake_slack.signed_headers(body), "Content-Type": "application/x-www-form-urlencoded"})
    await client.app[slack_intake.SLACK_INTAKE].drain()
    await queue.join()
    [parent] = [s for s in await services.sessions.recent(limit=1000) if s.report.get("team") == fake_slack.team_id]

    event = fake_slack.event_body(fake_slack.mention_event("also write it down", channel=CHANNEL,
                                                           thread_ts=parent.report["ts"]))
    response = await client.post("/slack/events", data=event, headers={
        **fake_slack.signed_headers(event), "Content-Type": "application/json"})
    assert response.status == 200
    await client.app[slack_intake.SLACK_INTAKE].drain()
    await queue.join()

    [child] = [s for s in await services.sessions.recent(limit=1000) if s.parent_id == parent.id]
    assert child.state == "completed", child.error
    assert child.branch == parent.branch and child.pr_number == parent.pr_number
    assert len([p for p in fake_github.pulls if p.head == parent.branch]) == 1
    bare = fake_github.repos["acme/widget"].path
    notes = git("show", f"{parent.branch}:NOTES.md", cwd=bare).splitlines()
    assert notes == ["make answer() return 42", "also write it down"]
    reply = fake_slack.message(CHANNEL, child.report["ts"])
    assert reply.thread_ts == parent.report["ts"] and "Done" in reply.block_text()
    assert "updated" in final_replies(fake_slack, parent.report["ts"])[-1].text
