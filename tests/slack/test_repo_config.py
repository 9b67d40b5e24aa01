"""The repository's default agent (.github/sesame.yml on the base branch, issue 18) applies to a `/sesame`
command that names no agent; an agent the command names wins. The server's default agent here is Claude,
which cannot run in the tests: a session that ran the `command` agent to a pull request ran the one chosen."""

from __future__ import annotations

from bot.models import Session
from tests.slack.test_end_to_end import CHANNEL, running  # noqa: F401 (fixture)
from tests.support.fake_github import FakeGitHub
from tests.support.fake_slack import FakeSlack
from tests.support.gitrepo import git
from tests.support.stack import Running
from webhooks import slack as slack_intake


async def run_command(running: Running, fake_slack: FakeSlack, text: str) -> Session:
    client, queue, services = running
    body = fake_slack.command_body(text, user="U1ALICE", channel=CHANNEL)
    response = await client.post("/slack/events", data=body, headers={
        **fake_slack.signed_headers(body), "Content-Type": "application/x-www-form-urlencoded"})
    assert response.status == 200 and "Queued session" in (await response.json())["text"]
    await client.app[slack_intake.SLACK_INTAKE].drain()
    await queue.join()
    [row] = [s for s in await services.sessions.recent(limit=1000) if s.report.get("team") == fake_slack.team_id]
    return row


async def test_a_command_naming_no_agent_runs_the_repositorys_agent(
        running: Running, fake_slack: FakeSlack, fake_github: FakeGitHub) -> None:
    assert running[2].settings.SESAME_DEFAULT_AGENT == "claude"
    fake_github.commit_file("acme/widget", "main", {".github/sesame.yml": "agent: command\n"})
    row = await run_command(running, fake_slack, "acme/widget make answer() return 42")
    assert row.agent == "command" and row.state == "completed", row.error
    assert row.context["agent_named"] is False
    bare = fake_github.repos["acme/widget"].path
    assert git("show", f"{row.branch}:src/widget.py", cwd=bare).endswith("return 42")


async def test_an_agent_the_command_names_wins_over_the_repositorys(
        running: Running, fake_slack: FakeSlack, fake_github: FakeGitHub) -> None:
    fake_github.commit_file("acme/widget", "main", {".github/sesame.yml": "agent: claude\nmodel: opus\n"})
    row = await run_command(running, fake_slack, "acme/widget --agent command make answer() return 42")
    assert row.agent == "command" and row.model is None
    assert row.state == "completed", row.error
