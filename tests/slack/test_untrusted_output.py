"""What the agent prints and what the requester wrote reach the Slack message and its thread as text only."""

from __future__ import annotations

import shlex
import textwrap
from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio

from bot.untrusted import WORD_JOINER
from tests.conftest import session_base
from tests.support.fake_github import FakeGitHub
from tests.support.fake_slack import FakeSlack
from tests.support.rendered import live_slack_markup
from tests.support.stack import Running, inline_stack
from webhooks import slack as slack_intake

CHANNEL = "C1GENERAL"
NASTY = "![x](https://tracker.invalid/p.png) @octocat #1 <img src=x> `` ` ``break` <!channel> *bold* ~gone~"
OWN_LINKS = ("http://sesame.test/",)
AGENT = shlex.join(["/usr/bin/python3", "-c", textwrap.dedent(f"""\
    import sys
    print({NASTY!r}, flush=True)
    print({chr(27) + "]0;pwned" + chr(7) + chr(27) + "[2Jscreen cleared"!r}, flush=True)
    sys.exit(3)
""")])


@pytest_asyncio.fixture
async def running(db_url: str, settings_for: Any, fake_slack: FakeSlack,
                  fake_github: FakeGitHub) -> AsyncIterator[Running]:
    """The web app running sessions in-process, its `command` agent printing markup and escapes."""
    settings = settings_for(DATABASE_URL=db_url, BASE_URL="http://sesame.test", SESSION_DIR_BASE=session_base(),
                            AGENT_COMMAND=AGENT, SESSION_TIMEOUT="120",
                            **fake_slack.settings_env(), **fake_github.settings_env())
    async with inline_stack(settings) as stack:
        yield stack


async def test_agent_output_and_prompt_are_text_in_the_message_and_the_thread(
        running: Running, fake_slack: FakeSlack) -> None:
    client, queue, services = running
    # What Slack sends for a typed `<!channel>` and `*x*`: the markup escaped, as in any message.
    body = fake_slack.command_body("acme/widget --agent command fix &lt;!channel&gt; *now* &lt;@U1BOB&gt;",
                                   channel=CHANNEL)
    response = await client.post("/slack/events", data=body, headers={
        **fake_slack.signed_headers(body), "Content-Type": "application/x-www-form-urlencoded"})
    assert response.status == 200
    await client.app[slack_intake.SLACK_INTAKE].drain()
    await queue.join()

    [row] = [s for s in await services.sessions.recent(limit=1000) if s.report.get("team") == fake_slack.team_id]
    assert row.state == "error" and "exited with status 3" in (row.error or "")
    assert "<!channel>" in row.title  # the prompt really holds the markup
    message = fake_slack.message(CHANNEL, row.report["ts"])
    replies = fake_slack.posted(CHANNEL, thread_ts=message.ts)
    texts = [message.text, message.block_text(), *(r.text for r in replies)]
    for call in fake_slack.calls_of("chat.update") + fake_slack.calls_of("chat.postMessage"):
        texts += [str(call.args.get("text", "")), str(call.args.get("blocks", ""))]
    for text in texts:
        assert live_slack_markup(text, OWN_LINKS) == [], text
        assert "\x1b" not in text and "\x07" not in text, text
    shown = message.block_text().replace(WORD_JOINER, "")
    assert "&lt;!channel&gt;" in shown and "&lt;img src=x&gt;" in shown and "&lt;@U1BOB&gt;" in shown
    assert "*bold*" not in shown and "~gone~" not in shown and "``break`" not in shown
    assert "screen cleared" in shown and "pwned" not in shown
    [final] = [r for r in replies if r.text.startswith(":x:")]
    assert "&lt;!channel&gt;" in final.text.replace(WORD_JOINER, "") and "<http://sesame.test/sessions/" in final.text
    for block in message.blocks:
        for text_object in [block.get("text"), *block.get("elements", [])]:
            if isinstance(text_object, dict) and text_object.get("type") == "mrkdwn":
                assert text_object.get("verbatim") is True, block  # no auto-linking of names and URLs
