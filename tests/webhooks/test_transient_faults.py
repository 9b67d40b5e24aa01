"""Transient GitHub faults (5xx, connection resets, long rate limits) no longer end a session in error."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest

import runner.git
from bot.github import Backoff
from bot.github_channel import github_factory
from tests.webhooks.test_end_to_end import EDIT, MakeStack, Stack, make_stack, progress_comment

__all__ = ["make_stack"]  # the fixture, shared with the end-to-end tests

TOKEN = r"^/app/installations/\d+/access_tokens$"
PULLS = r"^/repos/[^/]+/[^/]+/pulls$"
RECEIVE_PACK = r"/git-receive-pack$"
EDITS = r"/issues/comments/\d+$"


FAST = Backoff(base=0.05, cap=0.2, attempts=4)


async def run_with_faults(make_stack: MakeStack, *faults: tuple[str, str, dict[str, object]],
                          fast: bool = False) -> Stack:
    """One issue comment through the real pipeline with `faults` injected after intake answered."""
    stack = await make_stack(EDIT, SANDBOX_SECURITY_ENABLED="false")
    if fast:  # persistent faults: give up after FAST.attempts tries without waiting the real backoff
        github_factory(stack.worker_services).backoff = FAST
    await stack.hook.comment(1, "@sesame make answer() return 42")
    for method, path, options in faults:
        stack.hook.fake.fail_next(method, path, **options)  # type: ignore[arg-type]
    await stack.drain()
    return stack


def assert_completed_with_one_pr(stack: Stack, row_state: str, error: str | None) -> None:
    assert row_state == "completed", error
    assert len(stack.hook.fake.pulls) == 1
    assert stack.hook.fake.failures_left() == 0, "every injected fault was hit"
    assert "Done in" in progress_comment(stack, 1).body


@pytest.mark.parametrize("fault", [
    ("POST", TOKEN, {"status": 502, "count": 2}),
    ("POST", TOKEN, {"reset": True}),
    ("POST", PULLS, {"status": 502, "count": 2}),
    ("POST", PULLS, {"status": 503, "count": 1, "reset": True}),
    ("POST", PULLS, {"status": 429, "retry_after": 1}),
    ("POST", RECEIVE_PACK, {"status": 502, "count": 2}),
    ("POST", RECEIVE_PACK, {"reset": True}),
], ids=["token-502x2", "token-reset", "pr-502x2", "pr-reset", "pr-429", "push-502x2", "push-reset"])
async def test_a_transient_github_fault_is_retried(make_stack: MakeStack, monkeypatch: pytest.MonkeyPatch,
                                                   fault: tuple[str, str, dict[str, object]]) -> None:
    monkeypatch.setattr(runner.git, "PUSH_BACKOFF", FAST)
    stack = await run_with_faults(make_stack, fault)
    row = await stack.only_session()
    assert_completed_with_one_pr(stack, row.state, row.error)


async def test_a_pr_that_keeps_failing_leaves_the_branch_and_says_how_to_open_it(make_stack: MakeStack) -> None:
    stack = await run_with_faults(make_stack, ("POST", PULLS, {"status": 502, "count": 50}), fast=True)
    row = await stack.only_session()
    assert row.state == "error" and row.branch
    assert f"the branch `{row.branch}` is pushed" in (row.error or "") and "open it by hand" in (row.error or "")
    assert row.branch in stack.hook.fake.branches(stack.hook.repo), "the pushed branch stays"
    assert stack.hook.fake.pulls == []
    assert "open it by hand" in progress_comment(stack, 1).body
    assert len(stack.hook.fake.api_requests("POST", f"/repos/{stack.hook.repo}/pulls")) == FAST.attempts


async def test_a_push_that_keeps_failing_keeps_the_commit_and_says_how_to_push_it(
        make_stack: MakeStack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner.git, "PUSH_BACKOFF", FAST)
    stack = await run_with_faults(make_stack, ("POST", RECEIVE_PACK, {"status": 502, "count": 50}), fast=True)
    row = await stack.only_session()
    assert row.state == "error" and row.branch
    assert f"pushing `{row.branch}` failed" in (row.error or "") and "push it by hand" in (row.error or "")
    assert row.branch not in stack.hook.fake.branches(stack.hook.repo)
    git_dir = re.search(r"git --git-dir (\S+) push", row.error or "")
    assert git_dir and Path(git_dir.group(1)).is_dir(), "the workspace holding the commit is kept"
    assert row.commit_sha and row.commit_sha[:7] in (row.error or "")
    assert "push it by hand" in progress_comment(stack, 1).body
    pushes = [r for r in stack.hook.fake.requests if r.method == "POST" and r.path.endswith("git-receive-pack")]
    assert len(pushes) == FAST.attempts


@pytest.mark.parametrize("reset", [False, True], ids=["502", "reset"])
async def test_progress_edits_failing_for_the_rest_of_the_session_land_once_github_answers(
        make_stack: MakeStack, reset: bool) -> None:
    stack = await make_stack(EDIT, SANDBOX_SECURITY_ENABLED="false")
    github_factory(stack.worker_services).backoff = FAST
    hook = stack.hook
    await hook.comment(1, "@sesame make answer() return 42")
    hook.fake.fail_next("PATCH", EDITS, status=502, count=1_000_000, reset=reset)
    draining = asyncio.create_task(stack.drain())
    while (await stack.only_session()).state != "completed":
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)
    assert not draining.done(), "the worker keeps retrying the final edit"
    assert "will work on this" in progress_comment(stack, 1).body, "every edit failed so far"
    hook.fake.clear_failures()
    resumed = time.monotonic()
    await asyncio.wait_for(draining, 30)
    took = time.monotonic() - resumed
    body = progress_comment(stack, 1).body
    assert "Done in" in body and "#" in body, body
    assert took < 6.0, took  # PUBLISH_RETRY's 5 s cap, plus one request
    print(f"final message {took:.2f} s after edits resumed")
