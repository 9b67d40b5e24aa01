"""runner.agents.failures on recorded real output, on the documented output of Copilot CLI and Amp,
and on the inputs a credential gateway and the sandbox add (upstream statuses, refused hosts)."""

from __future__ import annotations

import json

import pytest

from runner.agents import get_agent
from runner.agents.failures import AgentFailure, CredentialSource, FailureWatch
from tests.agents.test_parsers import DATA


def verdict(agent_name: str, lines: list[str], code: int = 1, *, stderr: tuple[str, ...] = (),
            source: CredentialSource | None = "api_key", model: str | None = None,
            upstream: tuple[int, ...] = (), blocked: tuple[str, ...] = ()) -> AgentFailure | None:
    """The classifier's verdict over output lines as the pipeline feeds them."""
    agent = get_agent(agent_name)
    watch = FailureWatch(agent.display_name, source, model)
    for line in lines:
        for event in agent.parse_line(line):
            watch.see(event)
    for line in stderr:
        watch.see_stderr(line)
    return watch.verdict(code, upstream, blocked)


def recorded(filename: str) -> list[str]:
    return (DATA / filename).read_text().splitlines()


@pytest.mark.parametrize("filename,sentence", [
    ("opencode_json_unauthorized.jsonl", "opencode's API key was rejected (401): replace it under Credentials"),
    ("opencode_json_unknown_model.jsonl", "opencode cannot use `claude-sonnet-4-5`: it does not exist or the "
     "credential has no access to it (404); choose another model with --model or in Settings"),
    ("opencode_json_no_credit.jsonl", "opencode's account has no credit left (400): add credit or renew the plan "
     "with the provider, or store another credential under Credentials"),
])
def test_recorded_opencode_failures(filename: str, sentence: str) -> None:
    failure = verdict("opencode", recorded(filename))
    assert failure is not None and failure.sentence == sentence


def test_recorded_codex_401_is_fatal_from_its_first_retry() -> None:
    lines = recorded("codex_json_unauthorized.jsonl")
    failure = verdict("codex", lines)
    watch = FailureWatch("Codex", "subscription")
    for event in get_agent("codex").parse_line(lines[2]):
        watch.see(event)
    assert watch.fatal is not None and watch.fatal.sentence == (
        "Codex's subscription token was rejected (401): sign in again and store the new token under Credentials")
    assert failure is not None and failure.cause == "credential"


@pytest.mark.parametrize("filename,agent", [
    ("claude_stream_api_error.jsonl", "claude"), ("codex_json_error.jsonl", "codex"),
    ("gemini_stream_error.jsonl", "gemini"), ("copilot_json_error.jsonl", "copilot")])
def test_an_unnamed_400_is_left_to_the_exit_message(filename: str, agent: str) -> None:
    assert verdict(agent, recorded(filename)) is None  # "scripted failure": no cause to name, none invented


@pytest.mark.parametrize("filename,agent", [
    ("claude_stream_edit.jsonl", "claude"), ("codex_json_edit.jsonl", "codex"),
    ("gemini_stream_edit.jsonl", "gemini"), ("copilot_json_edit.jsonl", "copilot"),
    ("opencode_json_edit.jsonl", "opencode")])
def test_a_successful_run_is_no_failure(filename: str, agent: str) -> None:
    assert verdict(agent, recorded(filename), code=0) is None


def copilot_error(error_type: str, message: str, status: int | None) -> str:
    """A `session.error` line of `copilot --output-format json` (the shape recorded in copilot_json_error)."""
    data = {"errorType": error_type, "message": message} | ({"statusCode": status} if status else {})
    return json.dumps({"type": "session.error", "data": data, "id": "e1", "timestamp": "2026-11-25T19:14:34Z"})


COPILOT_RESULT = json.dumps({"type": "result", "exitCode": 1, "usage": {"premiumRequests": 0}})


@pytest.mark.parametrize("line,cause,status", [
    (copilot_error("authentication", "401 Unauthorized: Bad credentials", 401), "credential", 401),
    (copilot_error("rate_limit", "429 Too Many Requests: rate limit exceeded", 429), "rate_limit", 429),
    (copilot_error("quota", "You have exceeded your monthly quota of premium requests", 402), "quota", 402),
    (copilot_error("query", "404 The requested model 'gpt-9' does not exist", 404), "model", 404),
    (copilot_error("query", "Connection error: fetch failed (getaddrinfo ENOTFOUND api.example.invalid)", None),
     "network", None),
])
def test_copilot_documented_errors(line: str, cause: str, status: int | None) -> None:
    failure = verdict("copilot", [line, COPILOT_RESULT])
    assert failure is not None and (failure.cause, failure.status) == (cause, status)


def amp_result(error: str) -> str:
    """Amp's --stream-json result line on failure (its documented Claude Code-compatible shape)."""
    return json.dumps({"type": "result", "subtype": "error_during_execution", "is_error": True,
                       "duration_ms": 812, "num_turns": 1, "error": error, "session_id": "T-1"})


@pytest.mark.parametrize("error,sentence", [
    ("401 Unauthorized: Invalid API key", "Amp's API key was rejected (401): replace it under Credentials"),
    ("402 Payment Required: out of credits", "Amp's account has no credit left (402): add credit or renew the "
     "plan with the provider, or store another credential under Credentials"),
    ("429 Too Many Requests", "Amp was rate-limited by its model API (429): try again in a few minutes, or "
     "raise the limit with the provider"),
])
def test_amp_documented_errors(error: str, sentence: str) -> None:
    failure = verdict("amp", [amp_result(error)], source="api_key")
    assert failure is not None and failure.sentence == sentence


@pytest.mark.parametrize("source,sentence", [
    ("subscription", "Claude Code's subscription token was rejected (401): sign in again and store the new token "
                     "under Credentials"),
    ("environment", "Claude Code's API key from the server's environment was rejected (401): replace it there, "
                    "or store a key under Credentials"),
    (None, "Claude Code has no credential (401): store an API key or a subscription under Credentials"),
])
def test_the_fix_depends_on_where_the_credential_came_from(source: CredentialSource | None, sentence: str) -> None:
    lines = recorded("claude_stream_api_error.jsonl")  # an unnamed 400: only the gateway's view names it
    failure = verdict("claude", lines, source=source, upstream=(200, 401))
    assert failure is not None and failure.sentence == sentence


def test_claude_expired_subscription() -> None:
    line = json.dumps({"type": "result", "subtype": "success", "is_error": True, "api_error_status": 401,
                       "result": "OAuth token has expired. Please obtain a new token or refresh your existing "
                                 "token. · Please run /login"})
    failure = verdict("claude", [line], source="subscription")
    assert failure is not None and failure.sentence == (
        "Claude Code's subscription has expired (401): sign in again and store the new token under Credentials")


@pytest.mark.parametrize("agent,line", [
    ("codex", json.dumps({"type": "turn.failed", "error": {"message": "Your access token could not be refreshed "
                          "because your refresh token has expired. Please log out and sign in again."}})),
    ("gemini", json.dumps({"type": "result", "status": "error", "error": {"type": "unknown", "message":
                           "[API Error: {\"error\":\"invalid_grant\",\"error_description\":\"Token has been "
                           "expired or revoked.\"}]"}})),
])
def test_subscriptions_that_expired(agent: str, line: str) -> None:
    failure = verdict(agent, [line], source="subscription")
    assert failure is not None and failure.cause == "expired" and failure.fatal
    assert failure.sentence.endswith("subscription has expired: sign in again and store the new token "
                                     "under Credentials")


def test_gateway_statuses_name_what_the_agent_hid() -> None:
    hidden = json.dumps({"type": "turn.failed", "error": {"message": "stream disconnected before completion"}})
    assert verdict("codex", [hidden]) is not None  # a network-looking failure by itself
    failure = verdict("codex", [hidden], upstream=(200, 429))
    assert failure is not None and (failure.cause, failure.status) == ("rate_limit", 429)
    recovered = verdict("codex", recorded("codex_json_edit.jsonl"), code=0, upstream=(429, 200, 200))
    assert recovered is None  # a rate limit the agent waited out is no failure


def test_a_refusal_of_the_sandbox_is_named_with_its_host() -> None:
    line = json.dumps({"type": "result", "subtype": "success", "is_error": True, "api_error_status": None,
                       "result": "API Error: Unable to connect to API (ConnectionRefused)"})
    failure = verdict("claude", [line], blocked=("api.anthropic.com:443",))
    assert failure is not None and failure.sentence == (
        "Claude Code could not reach api.anthropic.com:443 (blocked by the sandbox): add it to the allowed "
        "domains under /admin/sandbox, or point the agent's base URL at an allowed host")
    unreachable = verdict("claude", [line])
    assert unreachable is not None and unreachable.sentence.startswith(
        "Claude Code could not reach its model API (no connection): check the agent's base URL")


def test_stderr_is_read_only_when_the_run_failed() -> None:
    noisy = ("Error: 429 Too Many Requests (retrying)",)
    assert verdict("gemini", recorded("gemini_stream_edit.jsonl"), code=0, stderr=noisy) is None
    failure = verdict("gemini", [], code=1, stderr=("TerminalQuotaError: You have exhausted your daily quota",
                                                    "  status: 429"))
    assert failure is not None and (failure.cause, failure.status) == ("quota", 429)


def test_an_agent_message_about_rate_limits_is_not_evidence() -> None:
    text = json.dumps({"type": "assistant", "message": {"content": [
        {"type": "text", "text": "I added a 429 rate limit handler and a 401 unauthorized check."}]}})
    assert verdict("claude", [text], code=1) is None


def test_a_spent_budget_is_the_failure_whatever_the_agent_made_of_it() -> None:
    watch = FailureWatch("Claude Code", "api_key", budget_usd=2.5)
    refused = json.dumps({"type": "result", "subtype": "success", "is_error": True, "api_error_status": 402,
                          "result": "API Error: 402 Payment Required"})
    for event in get_agent("claude").parse_line(refused):
        watch.see(event)
    assert watch.fatal is not None and watch.fatal.cause == "billing"
    watch.budget_ran_out(2.5312)
    sentence = ("Claude Code was stopped: the budget of $2.50 ran out ($2.53 spent): raise it with --budget or "
                "SESSION_BUDGET_USD")
    assert watch.fatal is not None and watch.fatal.sentence == sentence
    failure = watch.verdict(1)
    assert failure is not None and failure.sentence == sentence
