"""The pull request of a session: a new branch's is opened with one request to GitHub (no look-up first); a
branch that has an open pull request already gets that one back, updated."""

from __future__ import annotations

from tests.webhooks.test_end_to_end import EDIT, MakeStack, make_stack, progress_comment

__all__ = ["make_stack"]  # the fixture, shared with the end-to-end tests


async def test_a_new_branch_s_pull_request_is_one_request_and_a_follow_up_updates_it(make_stack: MakeStack) -> None:
    stack = await make_stack(EDIT, SANDBOX_SECURITY_ENABLED="false")
    hook = stack.hook
    pulls = f"/repos/{hook.repo}/pulls"
    await hook.comment(1, "@sesame make answer() return 42")
    await stack.drain()
    [first] = await hook.sessions()
    assert first.state == "completed", first.error
    assert [r.method for r in hook.fake.api_requests(path_prefix=pulls)] == ["POST"]  # looked up first before
    [pr] = hook.fake.pulls
    assert first.pr_number == pr.number and f"#{pr.number} opened" in progress_comment(stack, 1).body

    await hook.comment(1, "@sesame and say so in a comment")  # the same issue: the same branch, its PR open
    await stack.drain()
    second = next(row for row in await hook.sessions() if row.id != first.id)
    assert second.state == "completed", second.error
    assert second.branch == first.branch and hook.fake.pulls == [pr] and second.pr_number == pr.number
    assert hook.fake.branches(hook.repo)[pr.head] == second.commit_sha != first.commit_sha
