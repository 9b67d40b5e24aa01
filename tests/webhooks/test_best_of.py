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


async def test_on_a_pull_request_each_agent_starts_at_its_head_and_the_pick_moves_its_branch(
        make_stack: MakeStack) -> None:
    """Two sessions on branches of their own from the PR's head (refs/pull/N/head); the comparison on the PR
    counts only what each agent changed; `pick 2` fast-forwards the PR's branch to the second one's commit,
    and then `pick 1` is refused: the branch moved past where the first one started."""
    stack = await make_stack(AGENT, SANDBOX_SECURITY_ENABLED="false")
    hook = stack.hook
    bare = hook.fake.repos[hook.repo].path
    head = hook.fake.commit_file(hook.repo, "feature", {"docs/usage.md": "# usage\n"})
    pr = hook.fake.add_pull(hook.repo, "feature", title="Usage")
    answer = await hook.comment(pr.number, "@sesame --agents command,command make answer() return 42")
    ids = (await answer.json())["best_of"]
    assert answer.status == 202 and len(ids) == 2
    await stack.drain()
    rows = [await hook.services.sessions.get(i) for i in ids]
    assert [r.state for r in rows] == ["completed"] * 2, [r.error for r in rows]
    assert len({r.branch for r in rows} | {"feature"}) == 3 and hook.fake.pulls == [pr]
    for row in rows:
        assert hook.fake.branches(hook.repo)[row.branch] == row.commit_sha
        assert gitrepo.git("rev-parse", f"{row.commit_sha}^", cwd=bare) == head
        assert gitrepo.git("show", f"{row.commit_sha}:docs/usage.md", cwd=bare) == "# usage"
        assert row.base_branch == "main" and row.pr_number is None
    assert hook.fake.branches(hook.repo)["feature"] == head  # nothing reached the PR before the pick
    comments = [c.body for c in hook.bot_comments(pr.number)]
    [table] = [c for c in comments if "ran this request with 2 agents" in c]
    # WHO.txt and widget.py, not the PR's own docs/usage.md
    assert table.count("| 2 files changed, 2 insertions(+), 1 deletion(-) |") == 2, table
    assert "moves this pull request's branch to that one's commit" in table
    assert any("Running 2 sessions from this pull request's head" in c for c in comments)
    picked = await hook.comment(pr.number, "@sesame pick 2")
    assert (await picked.json())["picked"] == ids[1]
    assert hook.fake.branches(hook.repo)["feature"] == rows[1].commit_sha
    assert gitrepo.git("rev-parse", f"refs/pull/{pr.number}/head", cwd=bare) == rows[1].commit_sha
    assert hook.fake.pulls == [pr]
    chosen = await hook.services.sessions.get(ids[1])
    assert (chosen.pr_number, chosen.pr_url) == (pr.number, f"{hook.fake.url}/{hook.repo}/pull/{pr.number}")
    assert any(f"Moved feature (#{pr.number}) to {rows[1].commit_sha[:7]}, the work of" in github_text(c.body)
               for c in hook.bot_comments(pr.number))
    again = await hook.comment(pr.number, "@sesame pick 1")
    assert (await again.json())["refused"] == "pick"
    assert hook.fake.branches(hook.repo)["feature"] == rows[1].commit_sha
    refusal = github_text(hook.bot_comments(pr.number)[-1].body)
    assert "feature moved since the sessions started from it" in refusal and rows[0].branch in refusal
    assert (await hook.services.sessions.get(ids[0])).pr_number is None
    group = rows[0].context["best_of"]["group"]  # the API sees the same group and refuses the same way
    facts = await (await hook.client.get(f"/api/best-of/{group}")).json()
    assert facts["picked"] == ids[1] and facts["source"] == "github" and facts["ended"]
    by_api = await hook.client.post(f"/api/best-of/{group}/pick", json={"pick": 1})
    assert by_api.status == 409 and "feature` moved since" in (await by_api.json())["error"]
    assert hook.fake.branches(hook.repo)["feature"] == rows[1].commit_sha


async def test_a_fork_pull_requests_best_of_runs_but_its_pick_is_refused(make_stack: MakeStack) -> None:
    """The fork's branch is out of the App's reach: the sessions start at the fork's head as the repository
    keeps it, and `pick` says the work stays on its branch here."""
    stack = await make_stack(AGENT, SANDBOX_SECURITY_ENABLED="false", GITHUB_ALLOW_FORK_PULL_REQUESTS="true")
    hook = stack.hook
    bare = hook.fake.repos[hook.repo].path
    fork = hook.fake.add_pull(hook.repo, "patch-1", head_repo="mallory/widget", user="mallory",
                              fork_files={"docs/usage.md": "# usage\n"})
    fork_head = gitrepo.git("rev-parse", f"refs/pull/{fork.number}/head", cwd=bare)
    answer = await hook.comment(fork.number, "@sesame --agents command,command make answer() return 42")
    ids = (await answer.json())["best_of"]
    await stack.drain()
    rows = [await hook.services.sessions.get(i) for i in ids]
    assert [r.state for r in rows] == ["completed"] * 2, [r.error for r in rows]
    assert all(gitrepo.git("rev-parse", f"{r.commit_sha}^", cwd=bare) == fork_head for r in rows)
    picked = await hook.comment(fork.number, "@sesame pick command")
    assert (await picked.json())["refused"] == "pick"  # two ran `command`: ambiguous
    picked = await hook.comment(fork.number, "@sesame pick 1")
    assert (await picked.json())["refused"] == "pick"
    refusal = github_text(hook.bot_comments(fork.number)[-1].body)
    assert f"#{fork.number} comes from a fork, whose branch I cannot move" in refusal and rows[0].branch in refusal
    assert gitrepo.git("rev-parse", f"refs/pull/{fork.number}/head", cwd=bare) == fork_head
    assert hook.fake.pulls == [fork] and not hook.fake.api_requests("PATCH", f"/repos/{hook.repo}/git/refs")
    assert (await hook.services.sessions.get(ids[0])).pr_number is None
