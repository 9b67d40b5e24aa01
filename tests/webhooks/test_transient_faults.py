"""Transient GitHub faults (5xx, connection resets, long rate limits) no longer end a session in error."""

from __future__ import annotations

import pytest

from tests.webhooks.test_end_to_end import EDIT, MakeStack, Stack, make_stack, progress_comment

__all__ = ["make_stack"]  # the fixture, shared with the end-to-end tests

TOKEN = r"^/app/installations/\d+/access_tokens$"
PULLS = r"^/repos/[^/]+/[^/]+/pulls$"
RECEIVE_PACK = r"/git-receive-pack$"
EDITS = r"/issues/comments/\d+$"


async def run_with_faults(make_stack: MakeStack, *faults: tuple[str, str, dict[str, object]]) -> Stack:
    """One issue comment through the real pipeline with `faults` injected after intake answered."""
    stack = await make_stack(EDIT, SANDBOX_SECURITY_ENABLED="false")
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
], ids=["token-502x2", "token-reset", "pr-502x2", "pr-reset", "pr-429"])
async def test_a_transient_github_fault_is_retried(make_stack: MakeStack,
                                                   fault: tuple[str, str, dict[str, object]]) -> None:
    stack = await run_with_faults(make_stack, fault)
    row = await stack.only_session()
    assert_completed_with_one_pr(stack, row.state, row.error)
