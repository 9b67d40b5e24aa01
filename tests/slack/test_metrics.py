"""Slack Web API calls are counted in /metrics' figures (issue 18), those of bolt's per-request clients too."""

from __future__ import annotations

from bot import metrics
from tests.slack.conftest import SlackHarness


def slack_calls() -> float:
    return sum(s.value for family in metrics.API_CALLS.collect() for s in family.samples
               if s.name == "sesame_api_calls_total" and s.labels["service"] == "slack")


async def test_a_commands_slack_calls_are_counted(harness: SlackHarness) -> None:
    before = slack_calls()
    status, _body = await harness.command("acme/widget --agent command fix it", user="U1ALICE", channel="C1GENERAL")
    assert status == 200
    made = [c.method for c in harness.slack.calls]
    assert made == ["auth.test", "chat.postMessage"]
    assert slack_calls() - before == len(made)
