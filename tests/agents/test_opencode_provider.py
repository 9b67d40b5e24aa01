"""The provider block Sesame writes into a session's opencode config, and where its key goes."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import pytest

from runner.agents import Credential, get_agent
from runner.agents.opencode import CONFIG_DIR, PLUGIN_FILES, PROVIDER_KEY_ENV, OpencodeAgent
from runner.sandbox.gateway import GatewayRoute

URL = "http://127.0.0.1:9/v1"


def opencode(base_url: str | None, model: str | None) -> OpencodeAgent:
    agent = get_agent("opencode").configured(base_url=base_url, model=model)
    assert isinstance(agent, OpencodeAgent)
    return agent


def test_the_provider_block_names_endpoint_and_model_and_refers_to_the_key() -> None:
    agent = opencode(URL, "qwen3-coder")
    files = agent.config_files()
    config = json.loads(files[f"{CONFIG_DIR}/opencode.json"])
    provider = config["provider"]["sesame"]
    assert provider["options"] == {"baseURL": URL, "apiKey": "{env:OPENCODE_PROVIDER_API_KEY}"}
    assert provider["models"] == {"qwen3-coder": {}} and config["model"] == "sesame/qwen3-coder"
    assert config["autoupdate"] is False and config["share"] == "disabled"
    assert agent.argv("hi", "qwen3-coder")[-4:] == ["--model", "sesame/qwen3-coder", "--", "hi"]
    server = {"OPENCODE_PROVIDER_API_KEY": "sk-provider", "ANTHROPIC_API_KEY": "sk-ant-x"}
    env = agent.credential_env(None, server)
    assert env == {PROVIDER_KEY_ENV: "sk-provider"} and "sk-provider" not in json.dumps(files)
    assert agent.credential_env(Credential("api_key", "sk-stored"), server) == {PROVIDER_KEY_ENV: "sk-stored"}


def test_without_a_provider_the_config_only_quiets_opencode_and_keys_stay_its_own() -> None:
    agent = opencode(None, "anthropic/claude-sonnet-4-5")
    config = json.loads(agent.config_files()[f"{CONFIG_DIR}/opencode.json"])
    assert "provider" not in config and "model" not in config
    assert agent.argv("hi", "anthropic/claude-sonnet-4-5")[-4:] == ["--model", "anthropic/claude-sonnet-4-5", "--", "hi"]
    server = {"OPENCODE_PROVIDER_API_KEY": "sk-provider", "OPENAI_API_KEY": "sk-openai"}
    assert agent.credential_env(None, server) == {"OPENAI_API_KEY": "sk-openai"}


def test_the_plugin_manifest_lists_what_opencode_would_otherwise_fetch_from_npm() -> None:
    lock = json.loads(PLUGIN_FILES[f"{CONFIG_DIR}/package-lock.json"])
    manifest = json.loads(PLUGIN_FILES[f"{CONFIG_DIR}/package.json"])
    assert set(manifest["dependencies"]) == set(lock["packages"][""]["dependencies"]) == {"@opencode-ai/plugin"}
    assert any(path.startswith(f"{CONFIG_DIR}/node_modules/") for path in PLUGIN_FILES)


def test_a_provider_without_a_model_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="set OPENCODE_MODEL"):
        opencode(URL, None)


def test_the_providers_key_goes_through_the_gateway_whose_url_the_block_names() -> None:
    agent = opencode(URL, "qwen3-coder")
    route = agent.gateway_route(None, {"OPENCODE_PROVIDER_API_KEY": "sk-provider", "ANTHROPIC_API_KEY": "sk-ant-x"})
    assert route == GatewayRoute(PROVIDER_KEY_ENV, "sk-provider", URL, ("bearer",))
    assert agent.domains(URL, route) == list(agent.vendor_domains)  # the provider's host is not needed
    through = agent.through_gateway("http://127.0.0.1:3129", route)
    block = json.loads(through.config_files()[f"{CONFIG_DIR}/opencode.json"])["provider"]["sesame"]
    assert block["options"] == {"baseURL": "http://127.0.0.1:3129", "apiKey": "{env:OPENCODE_PROVIDER_API_KEY}"}
    assert opencode(URL, "m").gateway_route(None, {"ANTHROPIC_API_KEY": "sk-ant-x"}) is None  # no provider key


@pytest.mark.parametrize(("cred", "server", "variable", "upstream", "place", "provider", "base"), [
    (None, {"ANTHROPIC_API_KEY": "sk-ant-x"}, "ANTHROPIC_API_KEY", "https://api.anthropic.com", "x-api-key",
     "anthropic", "http://127.0.0.1:3129/v1"),
    (Credential("api_key", "sk-openai"), {}, "OPENAI_API_KEY", "https://api.openai.com/v1", "bearer",
     "openai", "http://127.0.0.1:3129"),
])
def test_without_a_provider_opencodes_own_key_goes_through_the_gateway_to_its_vendor(
        cred: Credential | None, server: dict[str, str], variable: str, upstream: str, place: str, provider: str,
        base: str) -> None:
    agent = opencode(None, None)
    route = agent.gateway_route(cred, server)
    assert route is not None and (route.variable, route.upstream, route.places) == (variable, upstream, (place,))
    assert route.secret == (cred.value if cred else server[variable])
    assert urlsplit(upstream).hostname not in agent.domains(None, route)
    config = json.loads(agent.through_gateway("http://127.0.0.1:3129", route).config_files()[
        f"{CONFIG_DIR}/opencode.json"])
    assert config["provider"] == {provider: {"options": {"baseURL": base}}} and "model" not in config


def test_a_subscription_keeps_its_auth_file() -> None:
    assert opencode(None, None).gateway_route(Credential("subscription", '{"anthropic": {}}'), {}) is None
