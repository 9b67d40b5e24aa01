"""The real Claude Code, Codex and Gemini CLIs against fakes that refuse the way the vendors' APIs do.

Each fake answers every model request with the vendor's exact error body (a rejected key, a rate
limit, a spent quota or credit, an unknown model); what the CLI prints is classified by
runner.agents.failures into the one sentence a session ends with. Before that module, a session
ended with "Claude Code exited with status 1: " and the last lines of raw stream JSON.
The runs of one CLI go concurrently, so each test takes about one run's time.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from runner.agents import Agent, Credential, get_agent
from runner.agents.failures import AgentFailure, FailureWatch
from runner.agents.install import agent_bin_dir
from tests.agents.real_cli import BASE_PATH, agent_workspace, agents_data_dir, run_cli_status
from tests.support.fake_anthropic import FakeAnthropic
from tests.support.fake_gemini import FakeGemini
from tests.support.fake_openai import FakeOpenAI
from tests.support.loopback import LoopbackFake

pytestmark = pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed")
KEY = "test-key"


def classify(agent: Agent, code: int, out: list[str], err: list[str], model: str) -> tuple[AgentFailure, int]:
    """The verdict over a finished run, and the index of the line at which it was known to be fatal (-1)."""
    watch = FailureWatch(agent.display_name, "api_key", model)
    fatal_at = -1
    for index, line in enumerate(out):
        for event in agent.parse_line(line):
            watch.see(event)
        if fatal_at < 0 and watch.fatal is not None:
            fatal_at = index
    for line in err:
        watch.see_stderr(line)
    failure = watch.verdict(code)
    assert failure is not None, (code, out[-5:], err[-5:])
    return failure, fatal_at


async def run_against(agent: Agent, fake: LoopbackFake, model: str, key: str, root: Path,
                      extra_env: dict[str, str] | None = None) -> tuple[int, list[str], list[str]]:
    """Run the CLI once against fake (already started) with key."""
    configured = agent.configured(base_url=fake.base_url)
    env = {"PATH": BASE_PATH, "HOME": str(root / "home"), "TMPDIR": str(root)} | (extra_env or {})
    env |= configured.base_env(fake.base_url) | configured.credential_env(Credential("api_key", key), {})
    argv = configured.argv("add hello.py", model, bin_dir=agent_bin_dir(agent.name, agents_data_dir(agent.name)))
    return await run_cli_status(argv, env, root / "project", configured.stdin("add hello.py"), timeout=90)


async def failing_run(name: str, fake: LoopbackFake, model: str, key: str = KEY,
                      extra_env: dict[str, str] | None = None) -> tuple[AgentFailure, int, int]:
    """(failure, exit code, fatal line index) of one run of agent name against a refusing fake."""
    agent = get_agent(name)
    with agent_workspace(f"sesame-fail-{name}-", agent.config_files()) as root:
        async with fake:
            code, out, err = await run_against(agent, fake, model, key, root, extra_env)
        assert not (root / "project" / "hello.py").exists()
    failure, fatal_at = classify(agent, code, out, err, model)
    return failure, code, fatal_at


async def test_claude_code_failures_say_why() -> None:
    agents_data_dir("claude")
    model, quick = "claude-sonnet-4-5", {"CLAUDE_CODE_MAX_RETRIES": "1"}  # its default is ten, with backoff
    runs = await asyncio.gather(
        failing_run("claude", FakeAnthropic([], api_key=KEY), model, key="sk-ant-wrong", extra_env=quick),
        failing_run("claude", FakeAnthropic([], failure="rate_limit"), model, extra_env=quick),
        failing_run("claude", FakeAnthropic([], failure="unknown_model"), model, extra_env=quick),
        failing_run("claude", FakeAnthropic([], failure="credit"), model, extra_env=quick))
    sentences = [failure.sentence for failure, _code, _at in runs]
    assert sentences == [
        "Claude Code's API key was rejected (401): replace it under Credentials",
        "Claude Code was rate-limited by its model API (429): try again in a few minutes, or raise the limit "
        "with the provider",
        "Claude Code cannot use `claude-sonnet-4-5`: it does not exist or the credential has no access to it "
        "(404); choose another model with --model or in Settings",
        "Claude Code's account has no credit left (400): add credit or renew the plan with the provider, or "
        "store another credential under Credentials"]
    assert all(code != 0 for _f, code, _at in runs)
    # the first retry of a 401 already says it is fatal: a session stops the CLI there, not ten retries later
    auth, _code, fatal_at = runs[0]
    assert auth.fatal and fatal_at >= 0
    assert not runs[1][0].fatal  # a rate limit may pass: the CLI's own retries are left to run


async def test_codex_failures_say_why() -> None:
    agents_data_dir("codex")
    model = "gpt-5.5"
    runs = await asyncio.gather(
        failing_run("codex", FakeOpenAI(api_key=KEY), model, key="sk-wrong"),
        failing_run("codex", FakeOpenAI(failure="quota"), model),
        failing_run("codex", FakeOpenAI(failure="rate_limit"), model),
        failing_run("codex", FakeOpenAI(failure="unknown_model"), model))
    assert [failure.sentence for failure, _code, _at in runs] == [
        "Codex's API key was rejected (401): replace it under Credentials",
        "Codex's quota is used up (quota): check the plan and billing with the provider, or store another "
        "credential under Credentials",
        "Codex was rate-limited by its model API (429): try again in a few minutes, or raise the limit with "
        "the provider",
        "Codex cannot use `gpt-5.5`: it does not exist or the credential has no access to it (unknown model); "
        "choose another model with --model or in Settings"]
    assert all(code != 0 for _f, code, _at in runs)
    assert runs[0][2] == 2  # the first "Reconnecting... 1/5 (unexpected status 401" line, not the sixth


async def test_gemini_cli_failures_say_why() -> None:
    agents_data_dir("gemini")
    model = "gemini-2.5-pro"
    runs = await asyncio.gather(
        failing_run("gemini", FakeGemini([], api_key=KEY), model, key="wrong-key"),
        failing_run("gemini", FakeGemini([], failure="forbidden"), model),
        failing_run("gemini", FakeGemini([], failure="quota"), model),
        failing_run("gemini", FakeGemini([], failure="unknown_model"), model))
    assert [failure.sentence for failure, _code, _at in runs] == [
        "Gemini CLI's API key was rejected (400): replace it under Credentials",
        "Gemini CLI's API key was rejected (403): replace it under Credentials",
        "Gemini CLI's quota is used up (429): check the plan and billing with the provider, or store another "
        "credential under Credentials",
        "Gemini CLI cannot use `gemini-2.5-pro`: it does not exist or the credential has no access to it (404); "
        "choose another model with --model or in Settings"]
    assert all(code != 0 for _f, code, _at in runs)
