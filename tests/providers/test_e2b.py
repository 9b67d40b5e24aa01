"""The e2b provider through the `e2b` SDK against a loopback E2B (tests/support/fake_e2b.py): the same
pipeline test as every provider. E2B reports no refused request, so none is recorded; its egress
policy is asked for instead."""

from __future__ import annotations

import json

from tests.providers.conftest import RunAgentSession, remote_fake


async def test_e2b_session_commits_what_the_agent_wrote_there_and_leaves_nothing(
        agent_session: RunAgentSession) -> None:
    async with remote_fake("e2b") as remote:
        fake = remote.fake
        run = await agent_session(**remote.env, E2B_TEMPLATE="sesame-agents", SANDBOX_ALLOWED_DOMAINS="pypi.org")
        created, left, started = fake.created, dict(fake.sandboxes), json.dumps(fake.started)
    run.assert_committed()
    assert created[0]["templateID"] == "sesame-agents"
    assert created[0]["metadata"] == {"sesame_session": run.session.id}
    assert created[0]["network"]["denyOut"] == ["0.0.0.0/0"] and "pypi.org" in created[0]["network"]["allowOut"]
    assert left == {}  # killed at the end
    for secret in (fake.api_key, "ab" * 32):  # E2B's key and the encryption key never enter the sandbox
        assert secret and secret not in started
