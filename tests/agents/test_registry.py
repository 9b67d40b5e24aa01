"""One registry of agents: bot.catalog, the agent classes, the settings, the API and the CLI agree."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest
from aiohttp import web

from bot.catalog import AGENT_ENV_KEYS, AGENT_NAMES, CATALOG, canonical_agent_name, display_name
from bot.models import Session
from bot.services import Services
from bot.settings import KEYS, Settings
from runner.agents import AGENTS, get_agent
from runner.agents.codex import GATEWAY_PROVIDER
from runner.execution import agent_argv, agent_setting, configured_agent
from tests.agents.test_install import cli_with_npm
from webhooks.api import check_agent

SETTINGS = {key.name: key for key in KEYS}


def test_every_catalogue_name_has_an_agent_class_and_every_class_a_catalogue_entry() -> None:
    assert list(AGENTS) == list(AGENT_NAMES)
    for name, agent in AGENTS.items():
        assert agent.spec is CATALOG[name] and agent.name == name


@pytest.mark.parametrize("name", AGENT_NAMES)
def test_agent_reads_names_package_and_binary_from_its_entry(name: str) -> None:
    agent, spec = get_agent(name), CATALOG[name]
    assert (agent.display_name, agent.npm_package, agent.binary) == (spec.display_name, spec.npm_package, spec.binary)
    assert display_name(name) == agent.display_name
    assert bool(spec.npm_package) == bool(spec.binary)  # an installable agent names the binary to run


@pytest.mark.parametrize("name", AGENT_NAMES)
def test_settings_keys_of_the_catalogue_exist_under_the_agents_config_path(name: str) -> None:
    spec = CATALOG[name]
    for key, field in ((spec.model_key, "model"), (spec.base_url_key, "baseUrl")):
        if key is not None:
            assert SETTINGS[key].path == f"agents.{name}.{field}" and not SETTINGS[key].secret


def test_only_agent_keys_reach_an_agent_and_each_setting_among_them_is_a_secret() -> None:
    assert set(AGENT_ENV_KEYS) == {"CLAUDE_CODE_OAUTH_TOKEN", "ANTHROPIC_API_KEY", "CODEX_API_KEY", "OPENAI_API_KEY",
                                   "GEMINI_API_KEY", "COPILOT_GITHUB_TOKEN", "GH_TOKEN", "GITHUB_TOKEN", "AMP_API_KEY",
                                   "COPILOT_PROVIDER_API_KEY", "OPENCODE_PROVIDER_API_KEY"}
    assert all(SETTINGS[key].secret for key in AGENT_ENV_KEYS if key in SETTINGS)


@pytest.mark.parametrize("spelling", ["claude", " Claude ", "OPENCODE", "command"])
def test_api_cli_and_runner_accept_the_same_spellings(spelling: str) -> None:
    name = canonical_agent_name(spelling)
    assert name is not None and check_agent(spelling) == name == get_agent(spelling).name


@pytest.mark.parametrize("spelling", ["cursor", "", "claude code", "rm -rf"])
def test_api_and_runner_refuse_the_same_unknown_names(spelling: str) -> None:
    assert canonical_agent_name(spelling) is None
    with pytest.raises(web.HTTPBadRequest):
        check_agent(spelling)
    with pytest.raises(ValueError, match="unknown agent"):
        get_agent(spelling)


def test_cli_lists_every_catalogue_agent_by_its_display_name(tmp_path: Path) -> None:
    done = cli_with_npm(tmp_path, "exit 1\n", "list")
    assert done.returncode == 0, done.stderr
    rows = [line.split(None, 1) for line in done.stdout.splitlines() if not line[:1].isspace()]
    assert [row[0] for row in rows] == list(AGENT_NAMES)
    assert all(row[1].startswith(CATALOG[row[0]].display_name) for row in rows)


def test_codex_takes_a_gateway_through_its_configured_hook() -> None:
    codex = get_agent("codex")
    assert codex.configured(base_url=None) is codex
    assert f'model_provider="{GATEWAY_PROVIDER}"' in codex.configured(base_url="http://127.0.0.1:9/v1").argv("x", None)


def test_command_agent_is_configured_with_its_command_or_refuses_clearly() -> None:
    command = get_agent("command")
    assert command.configured(base_url="http://ignored.invalid", command="echo hi").argv("p", None) == ["echo", "hi"]
    with pytest.raises(ValueError, match="needs a command: set AGENT_COMMAND"):
        command.configured(command=None)


@pytest.mark.parametrize("name", sorted(set(AGENT_NAMES) - {"codex", "command", "copilot", "opencode"}))
def test_other_agents_are_configured_as_they_are(name: str) -> None:
    agent = get_agent(name)
    assert agent.configured(base_url="http://127.0.0.1:9", command="ignored") is agent


def run_settings(**values: str) -> Services:
    """Services carrying only settings, which is all the agent set-up in runner.execution reads."""
    return cast(Services, SimpleNamespace(settings=Settings(values=dict(values), sources={})))


def test_execution_reads_model_and_gateway_keys_from_the_catalogue() -> None:
    services = run_settings(CLAUDE_MODEL="claude-default", OPENAI_BASE_URL="http://127.0.0.1:9/v1")
    claude, codex = get_agent("claude"), get_agent("codex")
    assert agent_argv(services, claude, Session(model=None), "p", None)[-2:] == ["--model", "claude-default"]
    assert agent_argv(services, claude, Session(model="m2"), "p", None)[-2:] == ["--model", "m2"]
    base_url = agent_setting(services.settings, codex.spec.base_url_key)
    argv = configured_agent(services, Session(context={}), codex, base_url).argv("p", None)
    assert base_url == "http://127.0.0.1:9/v1" and 'model_provider="sesame"' in argv


def test_execution_gives_the_command_agent_the_session_command_before_the_setting() -> None:
    services = run_settings(AGENT_COMMAND="echo from-settings")
    command = get_agent("command")
    from_settings = configured_agent(services, Session(context={}), command, None)
    assert from_settings.argv("p", None) == ["echo", "from-settings"]
    from_session = configured_agent(services, Session(context={"command": "echo cli"}), command, None)
    assert from_session.argv("p", None) == ["echo", "cli"]
    with pytest.raises(ValueError, match="needs a command"):
        configured_agent(run_settings(), Session(context={}), command, None)
