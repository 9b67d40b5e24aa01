"""The vercel provider through the `vercel` SDK against a loopback Vercel Sandbox API
(tests/support/fake_vercel.py): the same pipeline test as every provider. Vercel reports no refused
request, so none is recorded; its network policy is asked for instead."""

from __future__ import annotations

from tests.providers.conftest import RunAgentSession, remote_fake


async def test_vercel_session_commits_what_the_agent_wrote_there_and_leaves_nothing(
        agent_session: RunAgentSession) -> None:
    async with remote_fake("vercel") as remote:
        run = await agent_session(**remote.env, VERCEL_REGION="fra1", VERCEL_SANDBOX_IMAGE="sesame-agents",
                                  SANDBOX_ALLOWED_DOMAINS="pypi.org")
        created, left = remote.fake.created, dict(remote.fake.sandboxes)
    run.assert_committed()
    assert created[0]["image"] == "sesame-agents" and created[0]["region"] == "fra1"
    assert created[0]["projectId"] == "prj_1" and created[0]["tags"] == {"sesame_session": run.session.id}
    assert "pypi.org" in created[0]["networkPolicy"]["allow"]
    assert left == {}  # killed at the end
