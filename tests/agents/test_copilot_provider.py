"""Copilot CLI's bring-your-own-key provider and its shared unpacked package, without a model."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

from runner.agents import Credential, get_agent
from runner.agents.copilot import DIST_DIR, CopilotAgent, unpack_dist
from runner.agents.install import agent_prefix, install_agent
from runner.sandbox.gateway import GatewayRoute
from tests.agents import real_cli

URL = "http://127.0.0.1:9/v1"


def copilot(base_url: str | None = None) -> CopilotAgent:
    agent = get_agent("copilot").configured(base_url=base_url, model="gpt-4.1")
    assert isinstance(agent, CopilotAgent)
    return agent


def test_a_base_url_selects_the_offline_provider_and_its_key() -> None:
    agent = copilot(URL)
    assert agent.base_env(URL) == {"COPILOT_AUTO_UPDATE": "false", "COPILOT_GITHUB_TELEMETRY_DISABLED": "true",
                                   "COPILOT_PROVIDER_BASE_URL": URL, "COPILOT_OFFLINE": "true"}
    server = {"COPILOT_GITHUB_TOKEN": "ghu_x", "COPILOT_PROVIDER_API_KEY": "sk-provider"}
    assert agent.credential_env(None, server) == {"COPILOT_PROVIDER_API_KEY": "sk-provider"}
    assert agent.credential_env(Credential("api_key", "sk-stored"), server) == {"COPILOT_PROVIDER_API_KEY": "sk-stored"}
    assert agent.credential_env(None, {"COPILOT_GITHUB_TOKEN": "ghu_x"}) == {}  # no GitHub token for a provider


def test_without_a_base_url_copilot_talks_to_github_with_a_token() -> None:
    agent = copilot(None)
    assert agent.base_env(None) == {"COPILOT_AUTO_UPDATE": "false", "COPILOT_GITHUB_TELEMETRY_DISABLED": "true"}
    server = {"GH_TOKEN": "ghu_y", "COPILOT_PROVIDER_API_KEY": "sk-provider"}
    assert agent.credential_env(None, server) == {"GH_TOKEN": "ghu_y"}
    assert agent.credential_env(Credential("subscription", "ghu_z"), server) == {"COPILOT_GITHUB_TOKEN": "ghu_z"}
    assert agent.domains(None) == list(agent.vendor_domains)


def test_the_package_is_unpacked_once_and_kept_while_its_version_matches() -> None:
    prefix = agent_prefix("copilot", real_cli.agents_data_dir("copilot"))
    dist = prefix / DIST_DIR
    assert (dist / "cli-main.js").is_file() and (dist / "index.js").is_file()
    before = dist.stat().st_mtime_ns
    started = time.monotonic()
    assert asyncio.run(unpack_dist(prefix)) == dist
    assert dist.stat().st_mtime_ns == before and time.monotonic() - started < 1  # nothing unpacked again


def test_a_session_links_the_shared_copy_and_copies_only_the_scripts(tmp_path: Path) -> None:
    data_dir = real_cli.agents_data_dir("copilot")
    bin_dir = agent_prefix("copilot", data_dir) / "node_modules" / ".bin"
    argv = copilot(URL).argv("hi", None, bin_dir=bin_dir)
    home = tmp_path / "home"
    home.mkdir()
    # the same shell, with a probe in place of the CLI: what it leaves in HOME is the session's share
    shell = [*argv[: argv.index(str(bin_dir / "copilot"))], "sh", "-c", 'echo "$COPILOT_CLI_DIST_DIR"']
    out = subprocess.run(shell, env={"PATH": "/usr/bin:/bin", "HOME": str(home)}, capture_output=True, text=True,
                         check=True).stdout.strip()
    dist = home / ".cache" / "sesame-copilot-dist"
    assert out == str(dist)
    assert (dist / "cli-main.js").is_file() and not (dist / "cli-main.js").is_symlink()
    assert (dist / "prebuilds").is_symlink() and (dist / "prebuilds").resolve() == (bin_dir.parent.parent / DIST_DIR
                                                                                    / "prebuilds").resolve()
    used = int(subprocess.run(["du", "-sk", str(home)], capture_output=True, text=True, check=True).stdout.split()[0])
    assert used < 20_000  # kB: the scripts, not the 235 MB package


async def test_installing_copilot_unpacks_its_package_into_the_prefix(tmp_path: Path) -> None:
    native = agent_prefix("copilot", real_cli.agents_data_dir("copilot")) / "node_modules/@github/copilot-linux-x64"
    # This npm lays the prefix out as the real one does, its platform package linked from the shared install.
    npm = tmp_path / "npm"
    npm.write_text('#!/bin/sh\nmkdir -p "$3/node_modules/.bin" "$3/node_modules/@github/copilot-linux-x64"\n'
                   f'ln -s {native}/copilot {native}/package.json "$3/node_modules/@github/copilot-linux-x64/"\n'
                   'printf "#!/bin/sh\\n" > "$3/node_modules/.bin/copilot"\n')
    npm.chmod(0o755)
    await install_agent("copilot", tmp_path / "data", npm=str(npm))
    dist = agent_prefix("copilot", tmp_path / "data") / DIST_DIR
    assert (dist / "cli-main.js").is_file() and (dist / "prebuilds").is_dir()
    assert not [p for p in dist.parent.iterdir() if p.name.startswith(".sesame-unpack-")]  # scratch removed


def test_a_provider_key_goes_through_the_gateway_and_a_github_token_does_not() -> None:
    agent = copilot(URL)
    route = agent.gateway_route(Credential("api_key", "sk-stored"), {"COPILOT_PROVIDER_API_KEY": "sk-provider"})
    assert route == GatewayRoute("COPILOT_PROVIDER_API_KEY", "sk-stored", URL, ("bearer",))
    assert agent.gateway_route(None, {"COPILOT_PROVIDER_API_KEY": "sk-provider"}) == GatewayRoute(
        "COPILOT_PROVIDER_API_KEY", "sk-provider", URL, ("bearer",))
    assert agent.domains(URL, route) == list(agent.vendor_domains)  # the provider's host is not needed
    assert "127.0.0.1:9" in agent.domains(URL)  # without the gateway it is
    through = agent.through_gateway("http://127.0.0.1:3129", route)
    assert through.base_env("http://127.0.0.1:3129")["COPILOT_PROVIDER_BASE_URL"] == "http://127.0.0.1:3129"
    assert agent.gateway_route(None, {"COPILOT_GITHUB_TOKEN": "ghu_x"}) is None  # no provider key
    assert copilot(None).gateway_route(Credential("subscription", "ghu_z"), {}) is None
    assert copilot(None).gateway_route(None, {"GH_TOKEN": "ghu_y"}) is None
