"""The provider block Sesame writes into a session's opencode config, and where its key goes."""

from __future__ import annotations

import json

import pytest

from runner.agents import Credential, get_agent
from runner.agents.opencode import CONFIG_DIR, PLUGIN_FILES, PROVIDER_KEY_ENV, OpencodeAgent

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
