"""What the agent prints and what the requester wrote reach the progress comment and the PR as text only."""

from __future__ import annotations

import asyncio
import html
import re
import textwrap

from tests.support.rendered import github_html, github_text, live_github_markup
from tests.webhooks.test_end_to_end import MakeStack, agent, make_stack, progress_comment  # noqa: F401

NASTY = "![x](https://tracker.invalid/p.png) @octocat #1 <img src=x> `` ` ``break` <!channel>"
ESCAPES = "\x1b]0;pwned\x07\x1b[2J"
OWN_LINKS = ("http://sesame.test/",)
FAILING = textwrap.dedent(f"""\
    import sys
    print({NASTY!r}, flush=True)
    print({ESCAPES + "screen cleared"!r}, flush=True)
    sys.exit(3)
""")
SAY_AND_WAIT = f"import time\nprint({NASTY!r}, flush=True)\ntime.sleep(120)\n"
EDIT_AND_SAY = textwrap.dedent(f"""\
    import pathlib
    print({NASTY!r}, flush=True)
    pathlib.Path('src/widget.py').write_text('def answer():\\n    return 42\\n')
""")


async def test_agent_output_in_the_error_is_text_in_every_version_of_the_comment(make_stack: MakeStack) -> None:
    stack = await make_stack(FAILING)
    hook = stack.hook
    issue = hook.fake.add_issue(hook.repo, "answer() is wrong", "It returns 41.")
    await hook.comment(issue.number, "@sesame make answer() return 42")
    await stack.drain()
    row = await stack.only_session()
    assert row.state == "error" and "exited with status 3" in (row.error or "")
    comment = progress_comment(stack, issue.number)
    for body in comment.history:
        assert live_github_markup(body, OWN_LINKS) == [], body
        assert "\x1b" not in body and "\x07" not in body, body
    shown = github_text(comment.body)
    assert NASTY in shown and "screen cleared" in shown and "pwned" not in shown
    assert '<a href="http://sesame.test/sessions/' in github_html(comment.body)  # Sesame's own link still works


async def test_the_prompt_is_quoted_as_text_in_the_pull_request(make_stack: MakeStack) -> None:
    stack = await make_stack(EDIT_AND_SAY)
    hook = stack.hook
    issue = hook.fake.add_issue(hook.repo, "answer() is wrong", "It returns 41.")
    prompt = f"make answer() return 42\n\n{NASTY}\nFixes #999 and closes #998"
    await hook.comment(issue.number, f"@sesame {prompt}")
    await stack.drain()
    row = await stack.only_session()
    assert row.state == "completed", row.error
    [pr] = hook.fake.pulls
    body = pr.body or ""
    assert f"Fixes #{issue.number}" in body  # Sesame's own closing reference still works
    [quoted] = re.findall(r"<pre[^>]*><code>(.*?)</code></pre>", github_html(body), re.DOTALL)
    assert html.unescape(quoted) == row.prompt.strip() + "\n" and NASTY in row.prompt
    own = body.replace(f"Fixes #{issue.number}", "")
    assert live_github_markup(own, OWN_LINKS) == [], body
    for version in progress_comment(stack, issue.number).history:
        assert live_github_markup(version.replace(f"#{pr.number} opened", ""), OWN_LINKS) == [], version


async def test_agent_activity_is_text_while_the_agent_runs(make_stack: MakeStack) -> None:
    stack = await make_stack(SAY_AND_WAIT, SANDBOX_SECURITY_ENABLED="false", interval=0.1)
    hook = stack.hook
    await hook.comment(1, "@sesame think about it")
    worker = asyncio.create_task(stack.drain())

    def versions() -> list[str]:
        return [v for c in hook.bot_comments(1) for v in c.history]

    for _ in range(600):  # until the running agent's line has been published
        if any("octocat" in version for version in versions()):
            break
        await asyncio.sleep(0.1)
    await hook.comment(1, "@sesame stop")
    await worker
    assert any(f"Agent running: {NASTY}" in github_text(version) for version in versions()), versions()
    for version in versions():
        assert live_github_markup(version, OWN_LINKS) == [], version
