"""The daytona provider through the `daytona` SDK against a loopback Daytona (tests/support/fake_daytona.py):
the same pipeline test as every provider. Daytona reports no refused request, so none is recorded; its
domain allow list is asked for instead."""

from __future__ import annotations

from tests.providers.conftest import RunAgentSession, remote_fake


async def test_daytona_session_commits_what_the_agent_wrote_there_and_leaves_nothing(
        agent_session: RunAgentSession) -> None:
    async with remote_fake("daytona") as remote:
        run = await agent_session(**remote.env, DAYTONA_TARGET="eu", DAYTONA_SNAPSHOT="sesame-agents",
                                  SANDBOX_ALLOWED_DOMAINS="pypi.org")
        created, left = remote.fake.created, dict(remote.fake.sandboxes)
    run.assert_committed()
    assert created[0]["snapshot"] == "sesame-agents" and created[0]["target"] == "eu"
    assert created[0]["labels"]["sesame_session"] == run.session.id
    assert "pypi.org" in created[0]["domainAllowList"].split(",")
    assert left == {}  # killed at the end
