"""GitHub Copilot CLI: `copilot --prompt=... --output-format json --allow-all`.

With a provider base URL (COPILOT_PROVIDER_BASE_URL, agents.copilot.baseUrl) it runs in its
bring-your-own-key mode: an OpenAI chat-completions endpoint, offline from GitHub.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bot.catalog import CATALOG
from runner.agents.base import Agent, AgentEvent, CredentialLike, as_dict, env_first, shorten
from runner.agents.tools import tool_event
from runner.sandbox.gateway import GatewayRoute, KeyPlace

# The npm package is a native executable carrying its JavaScript as a 235 MB archive it unpacks into
# ~/.cache/copilot on first run: once per session with a fresh HOME. after_install unpacks it once into
# the install prefix; a session links that read-only copy into its HOME (COPILOT_CLI_DIST_DIR), with
# real copies of the top-level scripts (8 MB): the CLI writes an in-use lock next to cli-main.js.
DIST_DIR = "sesame-dist"
SESSION_DIST = "$HOME/.cache/sesame-copilot-dist"
LINK_DIST = (
    'shared="$1"; shift; dist="' + SESSION_DIST + '"; '
    'if [ -f "$shared/cli-main.js" ] && mkdir -p "$dist" && ln -sf "$shared"/* "$dist"/ '
    '&& cp -f --remove-destination "$shared"/*.js "$dist"/; then export COPILOT_CLI_DIST_DIR="$dist"; fi; '
    'exec "$@"'
)
GITHUB_TOKEN_KEYS = ("COPILOT_GITHUB_TOKEN", "GH_TOKEN", "GITHUB_TOKEN")
PROVIDER_KEY_ENV = "COPILOT_PROVIDER_API_KEY"
PROVIDER_KEY_PLACES: tuple[KeyPlace, ...] = ("bearer",)  # an OpenAI chat-completions endpoint


def copilot_events(obj: dict[str, Any], *, cwd: str | None) -> list[AgentEvent]:
    """Events for one JSONL line of `--output-format json`."""
    kind = str(obj.get("type", ""))
    data = as_dict(obj.get("data"))
    if kind == "assistant.message" and str(data.get("content", "")).strip():
        return [AgentEvent("message", shorten(data["content"]), {"text": data["content"]})]
    if kind == "tool.execution_start":
        extra = {"id": data.get("toolCallId")}
        return [tool_event(str(data.get("toolName")), data.get("arguments"), cwd=cwd, extra=extra)]
    if kind in ("session.error", "error"):
        return [AgentEvent("error", shorten(str(data.get("message") or obj.get("message") or kind)), obj)]
    if kind == "result":
        failed = obj.get("exitCode", 0) != 0
        return [AgentEvent("result", "failed" if failed else "done", obj | {"is_error": failed})]
    return []


def native_binary(prefix: Path) -> Path | None:
    """The platform package's executable that npm-loader.js runs (@github/copilot-linux-x64/copilot)."""
    return next((p for p in sorted(prefix.glob("node_modules/@github/copilot-*/copilot")) if p.is_file()), None)


def dist_version(dist: Path) -> str | None:
    """The version of an unpacked copy, from its package.json."""
    try:
        return str(json.loads((dist / "package.json").read_text())["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


async def unpack_dist(prefix: Path) -> Path | None:
    """Unpack the native binary's bundled package once into prefix/sesame-dist; None without a binary.

    The CLI's own extract-only mode (COPILOT_SEA_EXTRACT_ONLY) writes it under a throwaway cache
    home; the copy is then moved into place whole, so a session never sees half of one.
    """
    binary = native_binary(prefix)
    if binary is None:
        return None
    target = prefix / DIST_DIR
    version = json.loads((binary.parent / "package.json").read_text()).get("version")
    if (target / "index.js").is_file() and dist_version(target) == version:
        return target
    scratch = Path(tempfile.mkdtemp(prefix=".sesame-unpack-", dir=prefix))
    try:
        env = {"PATH": "/usr/bin:/bin", "HOME": str(scratch), "COPILOT_SEA_EXTRACT_ONLY": "1",
               "COPILOT_PKG_CACHE_HOME": str(scratch)}
        proc = await asyncio.create_subprocess_exec(
            str(binary), "--binary-version", env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        _, err = await proc.communicate()
        unpacked = next((p.parent for p in (scratch / "pkg").glob("*/*/index.js")), None)
        if proc.returncode != 0 or unpacked is None:
            raise RuntimeError(f"Copilot CLI could not unpack its package (exit {proc.returncode}): "
                               f"{err.decode(errors='replace').strip()[-300:]}")
        unpacked.chmod(0o755)
        shutil.rmtree(target, ignore_errors=True)
        unpacked.rename(target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def shared_dist(bin_dir: Path | str | None) -> Path | None:
    """Where the unpacked copy lies for a CLI run from {prefix}/node_modules/.bin (as the sandbox sees it)."""
    if bin_dir is None or Path(bin_dir).name != ".bin" or Path(bin_dir).parent.name != "node_modules":
        return None
    return Path(bin_dir).parent.parent / DIST_DIR


@dataclass(frozen=True)
class CopilotAgent(Agent):
    """GitHub's Copilot CLI."""

    spec = CATALOG["copilot"]
    vendor_domains: tuple[str, ...] = CATALOG["copilot"].vendor_domains
    subscription_env: str | None = "COPILOT_GITHUB_TOKEN"
    api_key_env: str | None = "COPILOT_GITHUB_TOKEN"
    provider_url: str | None = None

    def configured(self, *, base_url: str | None = None, command: str | Sequence[str] | None = None,
                   model: str | None = None) -> CopilotAgent:
        """With a base URL, the bring-your-own-key provider: the key then goes to COPILOT_PROVIDER_API_KEY."""
        return replace(self, provider_url=base_url or None)

    async def after_install(self, prefix: Path) -> None:
        """Unpack the CLI's package once, for every session to share."""
        await unpack_dist(prefix)

    def argv(self, prompt: str, model: str | None, *, bin_dir: Path | str | None = None) -> list[str]:
        """Prompt mode with JSONL output; every tool allowed (Sesame's sandbox is the boundary).

        Run from an install prefix, a shell links the shared unpacked copy (a path only bin_dir
        knows, as the sandbox sees it) into HOME first; without one the CLI unpacks its own.
        """
        dist = shared_dist(bin_dir)
        argv = ["/bin/sh", "-c", LINK_DIST, "copilot", str(dist)] if dist else []
        argv += [self.executable(bin_dir), f"--prompt={prompt}", "--output-format", "json", "--allow-all",
                 "--no-color", "--no-auto-update"]
        return argv + (["--model", model] if model else [])

    def credential_env(self, cred: CredentialLike | None, server_env: Mapping[str, str]) -> dict[str, str]:
        """A provider takes a stored API key or COPILOT_PROVIDER_API_KEY; GitHub takes a token."""
        if self.provider_url:
            if cred is not None and cred.kind == "api_key":
                return {PROVIDER_KEY_ENV: cred.value}
            return env_first(server_env, (PROVIDER_KEY_ENV,))
        if cred is not None:
            return super().credential_env(cred, server_env)
        return env_first(server_env, GITHUB_TOKEN_KEYS)

    def gateway_route(self, cred: CredentialLike | None, server_env: Mapping[str, str]) -> GatewayRoute | None:
        """A provider's key (bring-your-own-key mode) goes through the gateway to the provider URL, as a Bearer token.

        A GitHub token does not: the CLI sends it both to GitHub's API (api.github.com) and to the Copilot API
        at the endpoint GitHub's answer names (*.githubcopilot.com), and takes no base URL for either, so it
        keeps travelling in COPILOT_GITHUB_TOKEN as before.
        """
        if not self.provider_url:
            return None
        env = self.credential_env(cred, server_env)
        secret = env.get(PROVIDER_KEY_ENV)
        return GatewayRoute(PROVIDER_KEY_ENV, secret, self.provider_url, PROVIDER_KEY_PLACES) if secret else None

    def base_env(self, base_url: str | None = None) -> dict[str, str]:
        """No self-update or GitHub telemetry; a base URL selects the bring-your-own-key provider, offline.

        Offline, a provider session phones nowhere (tests/test_copilot_sandboxed.py); without it the CLI
        still calls api.github.com. The telemetry switch (read by its native runtime) matters only when
        logged in to GitHub, which no test here can be.
        """
        env = {"COPILOT_AUTO_UPDATE": "false", "COPILOT_GITHUB_TELEMETRY_DISABLED": "true"}
        return env | ({"COPILOT_PROVIDER_BASE_URL": base_url, "COPILOT_OFFLINE": "true"} if base_url else {})

    def parse_event(self, obj: dict[str, Any], *, cwd: str | None = None) -> list[AgentEvent]:
        """Events for a JSONL object."""
        return copilot_events(obj, cwd=cwd)
