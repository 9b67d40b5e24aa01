"""Slack unreachable: /slack/events answers 502 with one sentence at once, no traceback, nothing recorded;
the same request sent again once Slack answers makes its session."""

from __future__ import annotations

import time

import pytest

from tests.slack.conftest import SlackHarness

FORM = "application/x-www-form-urlencoded"


def no_traceback(caplog: pytest.LogCaptureFixture) -> bool:
    return "Traceback" not in caplog.text and not any(r.exc_info for r in caplog.records)


async def test_a_command_while_slack_is_down_is_a_prompt_502(harness: SlackHarness,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    await harness.slack.close()
    before = len(await harness.services.sessions.recent(1000))  # PostgreSQL's database is shared by the run
    body = harness.slack.command_body("acme/widget fix the flaky test")
    started = time.monotonic()
    status, answer = await harness.post(body, harness.slack.signed_headers(body), FORM)
    assert time.monotonic() - started < 3  # within Slack's 3 s: Slack sees the 502, not its own timeout
    assert status == 502 and "unreachable" in answer["error"] and "\n" not in answer["error"]
    assert no_traceback(caplog) and harness.queue.enqueued == []
    assert len(await harness.services.sessions.recent(1000)) == before


async def test_an_event_dropped_by_slack_is_a_502_and_its_redelivery_runs(harness: SlackHarness,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    harness.slack.fail("auth.test", reset=True)  # the connection drops once
    body = harness.slack.command_body("acme/widget fix the flaky test")
    headers = harness.slack.signed_headers(body)
    status, answer = await harness.post(body, headers, FORM)
    assert status == 502 and "unreachable" in answer["error"]
    assert no_traceback(caplog) and harness.queue.enqueued == []
    status, answer = await harness.post(body, headers, FORM)
    assert status == 200 and "Queued session" in answer["text"]
    assert len(harness.queue.enqueued) == 1
