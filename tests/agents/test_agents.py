"""Agent definitions: registry, argv, credentials and their priority, domains, environment."""

from __future__ import annotations

import json
import tomllib

import pytest

from runner.agents import AGENTS, Credential, get_agent, pick_credential
from runner.agents.copilot import LINK_DIST

SUB = Credential("subscription", "sub-token")
KEY = Credential("api_key", "sk-ant-key")


def test_registry_knows_every_agent() -> None:
    assert sorted(AGENTS) == ["amp", "claude", "codex", "command", "copilot", "gemini", "opencode"]
    assert get_agent(" Claude ").display_name == "Claude Code"


def test_unknown_agent_lists_the_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown agent 'cursor'; valid agents: amp, claude, codex, command"):
        get_agent("cursor")


@pytest.mark.parametrize(("name", "package"), [
    ("claude", "@anthropic-ai/claude-code"), ("codex", "@openai/codex"), ("gemini", "@google/gemini-cli"),
    ("copilot", "@github/copilot"), ("amp", "@sourcegraph/amp"), ("opencode", "opencode-ai"), ("command", None)])
def test_npm_packages(name: str, package: str | None) -> None:
    assert get_agent(name).npm_package == package


PROMPT = "--help me; rm -rf / $(whoami) `id` 'quoted'\nsecond line"


@pytest.mark.parametrize("name", sorted(set(AGENTS) - {"command"}))
def test_prompt_survives_intact_as_one_argv_element_or_stdin(name: str) -> None:
    agent = get_agent(name)
    argv = agent.argv(PROMPT, "some-model", bin_dir="/data/agents/x/node_modules/.bin")
    start = argv.index(f"/data/agents/x/node_modules/.bin/{agent.binary}")
    # Copilot's runs behind a shell linking its shared unpacked package into HOME, passed as "$1"
    assert argv[:start] == ([] if name != "copilot" else ["/bin/sh", "-c", LINK_DIST, "copilot",
                                                          "/data/agents/x/sesame-dist"])
    stdin = agent.stdin(PROMPT)
    in_argv = [a for a in argv if PROMPT in a]
    assert (stdin == PROMPT.encode()) != bool(in_argv)
    if in_argv:  # glued to its flag or after "--", so a leading "-" cannot be read as an option
        assert in_argv[0] in (f"--prompt={PROMPT}",) or argv[argv.index(in_argv[0]) - 1] == "--"


def test_claude_argv() -> None:
    assert get_agent("claude").argv("x", "claude-sonnet-4-5") == [
        "claude", "-p", "--output-format", "stream-json", "--verbose", "--dangerously-skip-permissions",
        "--model", "claude-sonnet-4-5"]


def test_model_is_optional() -> None:
    assert "--model" not in get_agent("codex").argv("x", None)


def test_command_agent_argv_from_string_or_list() -> None:
    agent = get_agent("command", command="python3 -c 'import sys; print(sys.stdin.read())'")
    assert agent.argv("p", None) == ["python3", "-c", "import sys; print(sys.stdin.read())"]
    assert get_agent("command", command=["./agent.sh", "a b"]).argv("p", None) == ["./agent.sh", "a b"]
    assert agent.stdin("the prompt") == b"the prompt"
    assert agent.prompt_env("the prompt") == {"SESAME_PROMPT": "the prompt"}


def test_command_agent_without_command_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="needs a command"):
        get_agent("command").argv("p", None)


def test_pick_credential_prefers_subscription() -> None:
    assert pick_credential([KEY, SUB]) is SUB
    assert pick_credential([KEY]) is KEY
    assert pick_credential([Credential("api_key", "")]) is None
    assert pick_credential([]) is None


SERVER = {"ANTHROPIC_API_KEY": "srv-ant", "CLAUDE_CODE_OAUTH_TOKEN": "srv-oauth", "OPENAI_API_KEY": "srv-oai",
          "GEMINI_API_KEY": "srv-gem", "GH_TOKEN": "srv-gh", "GITHUB_TOKEN": "srv-ghx", "AMP_API_KEY": "srv-amp",
          "DATABASE_URL": "postgresql://secret"}


@pytest.mark.parametrize(("name", "cred", "expected"), [
    ("claude", SUB, {"CLAUDE_CODE_OAUTH_TOKEN": "sub-token"}),
    ("claude", KEY, {"ANTHROPIC_API_KEY": "sk-ant-key"}),
    ("claude", None, {"CLAUDE_CODE_OAUTH_TOKEN": "srv-oauth"}),
    ("codex", KEY, {"CODEX_API_KEY": "sk-ant-key"}),
    ("codex", None, {"CODEX_API_KEY": "srv-oai"}),  # codex exec reads no OPENAI_API_KEY
    ("gemini", KEY, {"GEMINI_API_KEY": "sk-ant-key"}),
    ("gemini", None, {"GEMINI_API_KEY": "srv-gem"}),
    ("copilot", SUB, {"COPILOT_GITHUB_TOKEN": "sub-token"}),
    ("copilot", None, {"GH_TOKEN": "srv-gh"}),
    ("amp", KEY, {"AMP_API_KEY": "sk-ant-key"}),
    ("amp", None, {"AMP_API_KEY": "srv-amp"}),
    ("opencode", KEY, {"ANTHROPIC_API_KEY": "sk-ant-key"}),
    ("opencode", Credential("api_key", "sk-proj-1"), {"OPENAI_API_KEY": "sk-proj-1"}),
    ("command", KEY, {"SESAME_AGENT_API_KEY": "sk-ant-key"}),
    ("command", None, {}),
])
def test_credential_env(name: str, cred: Credential | None, expected: dict[str, str]) -> None:
    assert get_agent(name).credential_env(cred, SERVER) == expected


@pytest.mark.parametrize("name", sorted(AGENTS))
def test_server_secrets_never_leak_into_agent_env(name: str) -> None:
    agent = get_agent(name)
    env = agent.credential_env(None, SERVER) | agent.base_env("https://gw.example.com")
    assert len([v for v in env.values() if v in SERVER.values()]) <= 1  # only its own key, never DATABASE_URL


def test_claude_subscription_file() -> None:
    blob = '{"claudeAiOauth": {"accessToken": "a", "refreshToken": "r"}}'
    claude = get_agent("claude")
    assert claude.credential_files(Credential("subscription", blob)) == {".claude/.credentials.json": blob}
    assert claude.credential_env(Credential("subscription", blob), SERVER) == {}
    assert claude.credential_files(KEY) == {}


@pytest.mark.parametrize(("name", "path"), [
    ("codex", ".codex/auth.json"), ("gemini", ".gemini/oauth_creds.json"),
    ("opencode", ".local/share/opencode/auth.json")])
def test_subscription_files(name: str, path: str) -> None:
    agent = get_agent(name)
    assert agent.credential_files(SUB)[path] == "sub-token"
    assert agent.credential_env(SUB, SERVER) == {}


@pytest.mark.parametrize(("name", "base_url", "expected"), [
    ("claude", None, ["api.anthropic.com"]),
    ("claude", "http://127.0.0.1:8080", ["api.anthropic.com", "127.0.0.1:8080"]),
    ("codex", "https://gateway.example.com/v1", ["api.openai.com", "chatgpt.com", "auth.openai.com",
                                                 "gateway.example.com:443"]),
    ("command", None, []),
])
def test_domains(name: str, base_url: str | None, expected: list[str]) -> None:
    assert get_agent(name).domains(base_url) == expected


def test_claude_base_env() -> None:
    env = get_agent("claude").base_env("http://127.0.0.1:9")
    assert env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1" and env["DISABLE_AUTOUPDATER"] == "1"
    assert env["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:9"
    assert "ANTHROPIC_BASE_URL" not in get_agent("claude").base_env(None)


def test_amp_allows_all_tools_through_its_settings_file() -> None:
    files = get_agent("amp").config_files()
    assert '"amp.dangerouslyAllowAll": true' in files[".config/amp/settings.json"]


def test_codex_gateway_is_config_not_environment() -> None:
    """codex ignores OPENAI_BASE_URL; a gateway is a Responses provider over HTTPS given with `-c`."""
    codex = get_agent("codex")
    assert "-c" not in codex.argv("x", None)
    argv = codex.configured(base_url="http://127.0.0.1:9/v1").argv("x", "gpt-5.5")
    assert argv[argv.index("-c") : argv.index("--model")] == [
        "-c", 'model_provider="sesame"', "-c", 'model_providers.sesame={name="Sesame gateway",'
        'base_url="http://127.0.0.1:9/v1",wire_api="responses",requires_openai_auth=true,supports_websockets=false}']
    assert codex.base_env("http://127.0.0.1:9/v1") == {}


def test_gemini_chooses_api_key_auth_unless_subscribed() -> None:
    gemini = get_agent("gemini")
    files = gemini.config_files() | gemini.credential_files(KEY)
    settings = json.loads(files.pop(".gemini/settings.json"))
    assert files == {} and settings["security"] == {"auth": {"selectedType": "gemini-api-key"}}
    assert settings["privacy"] == {"usageStatisticsEnabled": False}  # else it reports to play.googleapis.com
    assert "oauth-personal" in (gemini.config_files() | gemini.credential_files(SUB))[".gemini/settings.json"]


def test_gemini_login_settings_keep_usage_statistics_off() -> None:
    settings = json.loads(get_agent("gemini").credential_files(SUB)[".gemini/settings.json"])
    assert settings["privacy"] == {"usageStatisticsEnabled": False}
    assert settings["general"]["enableAutoUpdate"] is False


def test_codex_config_turns_off_update_check_analytics_and_plugin_sync() -> None:
    config = tomllib.loads(get_agent("codex").config_files()[".codex/config.toml"])
    assert config == {"check_for_update_on_startup": False, "analytics": {"enabled": False},
                      "features": {"plugins": False, "apps": False}}


CLAUDE_LOGIN = '{"claudeAiOauth": {"accessToken": "at", "refreshToken": "rt"}}'


@pytest.mark.parametrize(("name", "cred", "server_env", "expected"), [
    ("claude", Credential("api_key", "k"), {}, ("ANTHROPIC_API_KEY", "k")),
    ("claude", Credential("subscription", "oauth-token"), {}, ("CLAUDE_CODE_OAUTH_TOKEN", "oauth-token")),
    ("claude", None, {"ANTHROPIC_API_KEY": "env-k"}, ("ANTHROPIC_API_KEY", "env-k")),
    ("claude", Credential("subscription", CLAUDE_LOGIN), {"ANTHROPIC_API_KEY": "env-k"}, None),  # a login file
    ("claude", None, {}, None),  # no key at all: nothing to guard
    ("codex", Credential("api_key", "k"), {}, ("CODEX_API_KEY", "k")),
    ("codex", None, {"OPENAI_API_KEY": "env-k"}, ("CODEX_API_KEY", "env-k")),
    ("codex", Credential("subscription", '{"tokens": {}}'), {}, None),  # auth.json
    ("gemini", Credential("api_key", "k"), {}, ("GEMINI_API_KEY", "k")),
    ("gemini", Credential("subscription", '{"refresh_token": "r"}'), {}, None),  # oauth_creds.json
    ("amp", Credential("api_key", "k"), {}, None),  # names no gateway upstream (yet)
    ("command", None, {"ANTHROPIC_API_KEY": "env-k"}, None),
])
def test_which_credentials_go_through_the_gateway(name: str, cred: Credential | None, server_env: dict[str, str],
                                                  expected: tuple[str, str] | None) -> None:
    route = get_agent(name).gateway_route(cred, server_env)
    assert (route and (route.variable, route.secret)) == expected
    assert route is None or (route.upstream == get_agent(name).gateway_upstream and route.places)


@pytest.mark.parametrize("name", ["claude", "codex", "gemini"])
def test_gateway_agents_name_an_https_upstream_and_a_key_place(name: str) -> None:
    agent = get_agent(name)
    assert (agent.gateway_upstream or "").startswith("https://") and agent.gateway_key_places


@pytest.mark.parametrize(("name", "expected"), [
    ("claude", []), ("codex", ["chatgpt.com", "auth.openai.com"]),
    ("gemini", ["cloudcode-pa.googleapis.com", "oauth2.googleapis.com"])])
def test_with_the_gateway_the_api_domain_and_base_url_leave_the_allow_list(name: str, expected: list[str]) -> None:
    agent = get_agent(name)
    route = agent.gateway_route(Credential("api_key", "k"), {})
    assert route is not None
    assert agent.domains("http://127.0.0.1:9/v1", route) == expected
    assert agent.domains("http://127.0.0.1:9/v1")[-1] == "127.0.0.1:9"  # without it, both stay
