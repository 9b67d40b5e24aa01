"""Signed delivery -> session -> arq worker -> `command` agent -> push over HTTP -> PR, on PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import pytest

from bot.cli import build_web_app
from bot.models import Session
from bot.queue import ArqQueue
from bot.services import Services
from runner.worker import build_worker
from tests.support import gitrepo
from tests.support.fake_github import FakeComment, FakeGitHub
from tests.webhooks.conftest import Hook, github_services, own_repo

PYTHON = "/usr/bin/python3"  # readable by the sandbox user, unlike a pyenv under /root
EDIT = ("import pathlib, sys\nprompt = sys.stdin.read()\n"
        "pathlib.Path('src/widget.py').write_text('def answer():\\n    return 42\\n')\n"
        "pathlib.Path('PROMPT.md').write_text(prompt)\nprint('edited src/widget.py', flush=True)\n")
SLEEP = ("import pathlib, time\npathlib.Path('partial.txt').write_text('partial\\n')\n"
         "print('working', flush=True)\ntime.sleep(120)\n")
CHATTY = ("import pathlib\nfor i in range({lines}):\n    print(f'step {{i}} of the plan', flush=True)\n"
          "pathlib.Path('src/widget.py').write_text('def answer():\\n    return 42\\n')\n")


def agent(script: str) -> str:
    """AGENT_COMMAND running `script` with the system Python."""
    return shlex.join([PYTHON, "-c", script])


@dataclass
class Stack:
    """The web app and a burst worker sharing PostgreSQL and Redis, the fake GitHub behind both."""

    hook: Hook
    worker_services: Services
    redis_url: str

    async def drain(self) -> None:
        """Run a burst worker until the queue is empty."""
        worker = build_worker(self.worker_services, self.hook.queue, self.redis_url, burst=True, poll_delay=0)
        try:
            await asyncio.wait_for(worker.async_run(), 120)
        finally:
            await worker.close()

    async def only_session(self) -> Session:
        [row] = await self.hook.sessions()
        return row


MakeStack = Callable[..., Awaitable[Stack]]


@pytest.fixture
async def make_stack(pg_database: str, redis_url: str, settings_for: Any, fake_github: FakeGitHub,
                     aiohttp_client: Any) -> AsyncIterator[MakeStack]:
    """Build a Stack whose agent runs `script`; env adds settings, interval sets progress coalescing."""
    opened: list[Any] = []

    async def build(script: str, *, interval: float = 1.0, **env: Any) -> Stack:
        env = {"REDIS_URL": redis_url, "AGENT_COMMAND": agent(script), "SESAME_DEFAULT_AGENT": "command",
               "SESSION_TIMEOUT": "90", **env}
        web_services = await github_services(settings_for, pg_database, fake_github, **env)
        worker_services = await github_services(settings_for, pg_database, fake_github, **env)
        worker_services = replace(worker_services, progress_interval=interval)
        queue = ArqQueue(redis_url)
        opened.extend([web_services, worker_services, queue])
        client = await aiohttp_client(build_web_app(web_services, queue))
        repo, installation_id = own_repo(fake_github)
        return Stack(Hook(client, fake_github, queue, web_services, repo, installation_id),
                     worker_services, redis_url)

    yield build
    for thing in reversed(opened):
        await thing.close()


def assert_no_token_posted(fake: FakeGitHub) -> None:
    """No installation token ever appears in any version of any comment."""
    for comment in fake.comments:
        for body in comment.history:
            assert not any(token in body for token in fake.tokens), body


def progress_comment(stack: Stack, number: int) -> FakeComment:
    [comment] = stack.hook.bot_comments(number)
    return comment


async def issue_to_pull_request(stack: Stack) -> None:
    """The whole path for one issue comment; asserts every visible effect."""
    hook = stack.hook
    issue = hook.fake.add_issue(hook.repo, "answer() is wrong", "It returns 41.")
    response = await hook.comment(issue.number, "@sesame make answer() return 42")
    assert response.status == 202
    await stack.drain()
    row = await stack.only_session()
    assert row.state == "completed", row.error
    assert hook.fake.branches(hook.repo)[row.branch] == row.commit_sha
    assert gitrepo.git("show", f"{row.commit_sha}:src/widget.py", cwd=hook.fake.repos[hook.repo].path).endswith("42")
    prompt = gitrepo.git("show", f"{row.commit_sha}:PROMPT.md", cwd=hook.fake.repos[hook.repo].path)
    assert prompt.startswith("make answer() return 42") and "It returns 41." in prompt
    [pr] = hook.fake.pulls
    assert pr.head == row.branch and pr.base == "main" and f"Fixes #{issue.number}" in (pr.body or "")
    assert (row.pr_number, row.pr_url) == (pr.number, f"{hook.fake.url}/{hook.repo}/pull/{pr.number}")
    pushes = [r for r in hook.fake.api_requests("POST", f"/git/{hook.repo}.git/git-receive-pack")]
    assert pushes and all(r.auth_scheme == "basic" and r.status == 200 for r in pushes)
    comment = progress_comment(stack, issue.number)
    assert "will work on this" in comment.history[0] and "- [ ] Workspace ready" in comment.history[0]
    assert comment.history[-1].splitlines()[-3].startswith("Done in ") and f"#{pr.number} opened" in comment.body
    assert comment.history[-1].endswith(f"<!-- sesame:session={row.id} -->")
    assert_no_token_posted(hook.fake)


async def test_issue_comment_to_pull_request_unsandboxed(make_stack: MakeStack) -> None:
    await issue_to_pull_request(await make_stack(EDIT, SANDBOX_SECURITY_ENABLED="false"))


async def test_issue_comment_to_pull_request_sandboxed(make_stack: MakeStack) -> None:
    await issue_to_pull_request(await make_stack(EDIT))


async def wait_for_output(stack: Stack, text: str) -> None:
    """Until the agent has printed `text` (the session's events show it)."""
    for _ in range(600):
        rows = await stack.hook.sessions()
        if rows and any(text in str(e.data) for e in await stack.hook.services.sessions.events(rows[0].id)):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the agent never printed {text!r}")


async def test_stop_during_a_run(make_stack: MakeStack) -> None:
    stack = await make_stack(SLEEP, SANDBOX_SECURITY_ENABLED="false")
    hook = stack.hook
    await hook.comment(1, "@sesame think about it for a long time")
    worker = asyncio.create_task(stack.drain())
    await wait_for_output(stack, "working")
    response = await hook.comment(1, "@sesame stop")
    row = await stack.only_session()
    assert (await response.json())["stopped"] == [row.id]
    await worker
    row = await stack.only_session()
    assert row.state == "stopped" and row.error is None
    comment = progress_comment(stack, 1)
    assert "Stopped in" in comment.body and "stopped on request" in comment.body
    assert gitrepo.git("show", f"{row.branch}:partial.txt", cwd=hook.fake.repos[hook.repo].path) == "partial"
    assert hook.fake.pulls == []


async def test_review_comment_follow_up_pushes_to_the_pr_branch(make_stack: MakeStack) -> None:
    stack = await make_stack(EDIT, SANDBOX_SECURITY_ENABLED="false")
    hook = stack.hook
    bare = hook.fake.repos[hook.repo].path
    gitrepo.git("branch", "feature", "main", cwd=bare)
    before = hook.fake.branches(hook.repo)["feature"]
    pr = hook.fake.add_pull(hook.repo, "feature", title="Answer")
    payload = hook.fake.review_comment_payload(hook.repo, pr.number, "@sesame return 42 here")
    await hook.send("pull_request_review_comment", payload)
    await stack.drain()
    row = await stack.only_session()
    assert row.state == "completed", row.error
    after = hook.fake.branches(hook.repo)["feature"]
    assert after == row.commit_sha != before
    assert gitrepo.git("rev-parse", f"{after}^", cwd=bare) == before
    assert hook.fake.pulls == [pr] and row.pr_number == pr.number
    comment = progress_comment(stack, pr.number)
    assert comment.kind == "review" and comment.in_reply_to == payload["comment"]["id"]
    assert "Done in" in comment.body and f"#{pr.number} updated" in comment.body
    assert_no_token_posted(hook.fake)


async def test_allowed_fork_pull_request_starts_from_its_head(make_stack: MakeStack) -> None:
    """The fork's branch is out of reach: a new branch here holds its commit and the agent's, in a new PR."""
    stack = await make_stack(EDIT, SANDBOX_SECURITY_ENABLED="false", GITHUB_ALLOW_FORK_PULL_REQUESTS="true")
    hook = stack.hook
    fork = hook.fake.add_pull(hook.repo, "patch-1", head_repo="mallory/widget", user="mallory",
                              fork_files={"docs/usage.md": "# usage\n"})
    assert (await hook.comment(fork.number, "@sesame make answer() return 42")).status == 202
    await stack.drain()
    row = await stack.only_session()
    assert row.state == "completed", row.error
    bare = hook.fake.repos[hook.repo].path
    fork_head = gitrepo.git("rev-parse", f"refs/pull/{fork.number}/head", cwd=bare)
    assert hook.fake.branches(hook.repo)[row.branch] == row.commit_sha
    assert gitrepo.git("rev-parse", f"{row.commit_sha}^", cwd=bare) == fork_head
    assert gitrepo.git("show", f"{row.commit_sha}:docs/usage.md", cwd=bare) == "# usage"
    assert gitrepo.git("show", f"{row.commit_sha}:src/widget.py", cwd=bare).endswith("42")
    [pr] = [p for p in hook.fake.pulls if p.number != fork.number]
    assert (pr.head, pr.base, row.pr_number) == (row.branch, "main", pr.number)
    assert f"Builds on #{fork.number} from `mallory/widget`" in (pr.body or "") and "Fixes" not in (pr.body or "")
    assert f"#{pr.number} opened" in progress_comment(stack, fork.number).body
    assert_no_token_posted(hook.fake)


async def test_chatty_agent_makes_few_comment_edits(make_stack: MakeStack) -> None:
    lines = 1000
    stack = await make_stack(CHATTY.format(lines=lines), interval=2.0, SANDBOX_SECURITY_ENABLED="false")
    await stack.hook.comment(1, "@sesame plan it out loud")
    await stack.drain()
    row = await stack.only_session()
    assert row.state == "completed", row.error
    comment = progress_comment(stack, 1)
    assert "Done in" in comment.body
    assert 1 <= comment.edits <= lines // 50, comment.edits  # coalesced: one edit per interval at most
    messages = [e for e in await stack.hook.services.sessions.events(row.id, limit=10_000)
                if e.kind == "message"]
    assert len(messages) == lines


@pytest.mark.parametrize("status", [403, 429])
async def test_rate_limited_comment_edits_are_retried_after_retry_after(make_stack: MakeStack, status: int) -> None:
    stack = await make_stack(EDIT, SANDBOX_SECURITY_ENABLED="false")
    hook = stack.hook
    await hook.comment(1, "@sesame make answer() return 42")
    hook.fake.rate_limit_comment_edits(2, status=status, retry_after=1)
    await stack.drain()
    row = await stack.only_session()
    assert row.state == "completed", row.error
    edits = [r.status for r in hook.fake.api_requests("PATCH", f"/repos/{hook.repo}/issues/comments/")]
    assert edits[:2] == [status, status] and edits[-1] == 200
    assert "Done in" in progress_comment(stack, 1).body


FIX = "import pathlib\npathlib.Path('src/widget.py').write_text('def answer():\\n    return 42\\n')\n"


async def test_a_retry_of_a_pushed_attempt_still_opens_the_pull_request(make_stack: MakeStack, tmp_path: Any) -> None:
    """A worker died (or handed the session back) after pushing its commit and before opening the PR: the next
    attempt writes the same change, which is no change on the pushed branch, and must still open the PR."""
    stack = await make_stack(FIX, SANDBOX_SECURITY_ENABLED="false")
    hook = stack.hook
    issue = hook.fake.add_issue(hook.repo, "answer() is wrong", "It returns 41.")
    assert (await hook.comment(issue.number, "@sesame make answer() return 42")).status == 202
    row = await stack.only_session()
    # What the lost attempt left: its branch and commit recorded, the commit pushed, no pull request.
    clone = tmp_path / "attempt-1"
    gitrepo.git("clone", "-q", str(hook.fake.repos[hook.repo].path), str(clone), cwd=tmp_path)
    sha = gitrepo.commit_files(clone, {"src/widget.py": "def answer():\n    return 42\n"}, "Return 42")
    gitrepo.git("push", "-q", "origin", "HEAD:refs/heads/sesame/answer-42", cwd=clone)
    await hook.services.sessions.set_branch(row.id, "sesame/answer-42", "main")
    await hook.services.sessions.record_commit(row.id, sha)
    await stack.drain()
    row = await stack.only_session()
    assert row.state == "completed", row.error
    [pr] = hook.fake.pulls
    assert pr.head == "sesame/answer-42" and f"Fixes #{issue.number}" in (pr.body or "")
    assert row.pr_number == pr.number
    comment = progress_comment(stack, issue.number)
    assert f"#{pr.number} opened" in comment.body and "no changes were needed" not in comment.body
