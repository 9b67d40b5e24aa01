"""Best-of-N (issue 18), end to end: `@sesame --agents command,command,command` runs three sessions on three
branches (no PR), one comment compares them, `@sesame pick 2` opens the pull request from the second."""

from __future__ import annotations

from bot.triggers import Command, parse_mention
from tests.support import gitrepo
from tests.support.rendered import github_text
from tests.webhooks.test_end_to_end import MakeStack, make_stack  # noqa: F401 (fixture)

# Each session writes its own id, so the three branches differ.
AGENT = ("import os, pathlib\npathlib.Path('src/widget.py').write_text('def answer():\\n    return 42\\n')\n"
         "pathlib.Path('WHO.txt').write_text(os.environ['SESAME_SESSION_ID'])\nprint('done', flush=True)\n")


async def test_three_agents_compared_and_one_picked(make_stack: MakeStack) -> None:
    stack = await make_stack(AGENT)
    hook = stack.hook
    hook.fake.commit_file(hook.repo, "main", {".sesame.yml": "test: 'true'\n"})
    issue = hook.fake.add_issue(hook.repo, "answer() is wrong", "It returns 41.")
    answer = await hook.comment(issue.number, "@sesame --agents command,command,command make answer() return 42")
    ids = (await answer.json())["best_of"]
    assert answer.status == 202 and len(ids) == 3
    await stack.drain()
    rows = [await hook.services.sessions.get(i) for i in ids]
    assert [r.state for r in rows] == ["completed"] * 3, [r.error for r in rows]
    assert len({r.branch for r in rows}) == 3 and not hook.fake.pulls
    bare = hook.fake.repos[hook.repo].path
    assert [gitrepo.git("show", f"{r.branch}:WHO.txt", cwd=bare) for r in rows] == ids
    comments = [c.body for c in hook.bot_comments(issue.number)]
    [table] = [c for c in comments if "ran this request with 3 agents" in c]
    for i, row in enumerate(rows, 1):
        assert f"| {i} | a custom command | completed | 2 files changed" in table, table
        assert row.branch in table
    assert table.count("| passed |") == 3 and "pick N" in table
    assert any("Running 3 sessions" in c for c in comments)
    ambiguous = await hook.comment(issue.number, "@sesame pick command")
    assert (await ambiguous.json())["refused"] == "pick"
    picked = await hook.comment(issue.number, "@sesame pick 2")
    assert (await picked.json())["picked"] == ids[1]
    [pr] = hook.fake.pulls
    assert pr.head == rows[1].branch and pr.base == "main" and f"Fixes #{issue.number}" in (pr.body or "")
    assert (await hook.services.sessions.get(ids[1])).pr_number == pr.number
    assert any(f"Opened #{pr.number}" in github_text(c.body) for c in hook.bot_comments(issue.number))


def test_the_grammar() -> None:
    trigger = parse_mention("@sesame --agents claude,Codex,gemini fix it", "sesame")
    assert trigger is not None and trigger.agents == ("claude", "codex", "gemini") and trigger.prompt == "fix it"
    picked = parse_mention("@sesame pick codex", "sesame")
    assert picked is not None and (picked.command, picked.pick) == (Command.PICK, "codex")
    for bad in ("@sesame --agents claude fix it", "@sesame --agents a,b,c,d,e,f fix it",
                "@sesame --agent claude --agents claude,codex fix it"):
        parsed = parse_mention(bad, "sesame")
        assert parsed is not None and parsed.error, bad
