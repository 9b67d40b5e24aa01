"""opencode: `opencode run --format json -- PROMPT`.

With a provider base URL (OPENCODE_PROVIDER_BASE_URL, agents.opencode.baseUrl) Sesame writes a provider
block into the session's own ~/.config/opencode/opencode.json: an OpenAI-compatible endpoint, the model,
and the key by reference to the environment (`{env:OPENCODE_PROVIDER_API_KEY}`), never in the file.

A key in the environment goes through the credential gateway (runner/sandbox/gateway.py): the provider's
to OPENCODE_PROVIDER_BASE_URL, opencode's own Anthropic or OpenAI key to that vendor's API. The config
then points the provider (or opencode's built-in `anthropic` / `openai` provider, by its
`provider.<id>.options.baseURL`) at the gateway, and the variable holds the session's placeholder.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bot.catalog import CATALOG
from runner.agents.base import Agent, AgentEvent, CredentialLike, as_dict, env_first, shorten
from runner.agents.tools import tool_event
from runner.agents.usage import sum_counts, usage_data
from runner.sandbox.gateway import GatewayRoute, KeyPlace

AUTH_FILE = ".local/share/opencode/auth.json"
CONFIG_DIR = ".config/opencode"
PROVIDER = "sesame"
PROVIDER_KEY_ENV = "OPENCODE_PROVIDER_API_KEY"
PLUGIN_PACKAGE = {"@opencode-ai/plugin": "*"}
# opencode's built-in providers for a key of the vendor's own: provider id, the API the gateway forwards to,
# where that API carries the key, and the path the provider's SDK puts after its base URL (@ai-sdk/anthropic
# defaults to https://api.anthropic.com/v1, @ai-sdk/openai to https://api.openai.com/v1).
NATIVE_ROUTES: dict[str, tuple[str, str, tuple[KeyPlace, ...], str]] = {
    "ANTHROPIC_API_KEY": ("anthropic", "https://api.anthropic.com", ("x-api-key",), "/v1"),
    "OPENAI_API_KEY": ("openai", "https://api.openai.com/v1", ("bearer",), ""),
}
# opencode npm-installs @opencode-ai/plugin into each config dir whose node_modules is missing or whose
# package-lock lacks it, in the background from registry.npmjs.org; these make the global one complete.
PLUGIN_FILES = {
    f"{CONFIG_DIR}/package.json": json.dumps({"dependencies": PLUGIN_PACKAGE}) + "\n",
    f"{CONFIG_DIR}/package-lock.json": json.dumps({"packages": {"": {"dependencies": PLUGIN_PACKAGE}}}) + "\n",
    f"{CONFIG_DIR}/node_modules/.sesame": "",
}


def opencode_events(obj: dict[str, Any], *, cwd: str | None) -> list[AgentEvent]:
    """Events for one `run --format json` line."""
    kind = obj.get("type")
    part = as_dict(obj.get("part"))
    if kind == "text" and str(part.get("text", "")).strip():
        return [AgentEvent("message", shorten(part["text"]), {"text": part["text"]})]
    if kind == "tool_use":
        state = as_dict(part.get("state"))
        extra = {"id": part.get("callID"), "status": state.get("status")}
        return [tool_event(str(part.get("tool")), state.get("input"), cwd=cwd, extra=extra)]
    if kind == "error":
        error = as_dict(obj.get("error"))
        message = as_dict(error.get("data")).get("message") or error.get("name") or "error"
        return [AgentEvent("error", shorten(str(message)), obj)]
    if kind == "step_finish" and part.get("reason") == "stop":
        usage = {"is_error": False, "tokens": part.get("tokens"), "cost": part.get("cost")} | step_usage(part)
        return [AgentEvent("result", "done", usage)]
    if kind == "step_finish":  # every step reports its tokens and cost: one usage event each
        return [AgentEvent("usage", "usage", step_usage(part))] if step_usage(part) else []
    return []


def step_usage(part: dict[str, Any]) -> dict[str, Any]:
    """A step's tokens (input counting cache reads and writes) and cost, as runner.agents.usage wants them."""
    tokens = as_dict(part.get("tokens"))
    cache = as_dict(tokens.get("cache"))
    read_write = {"input": tokens.get("input"), "read": cache.get("read"), "write": cache.get("write")}
    return usage_data(sum_counts(read_write, "input", "read", "write"), tokens.get("output"), part.get("cost"))


@dataclass(frozen=True)
class OpencodeAgent(Agent):
    """The opencode CLI (any provider; Anthropic by default)."""

    spec = CATALOG["opencode"]
    vendor_domains: tuple[str, ...] = CATALOG["opencode"].vendor_domains
    provider_url: str | None = None
    provider_model: str | None = None
    native_gateway: tuple[str, str] | None = None  # (built-in provider id, the gateway URL it talks to)

    def configured(self, *, base_url: str | None = None, command: str | Sequence[str] | None = None,
                   model: str | None = None) -> OpencodeAgent:
        """With a base URL, Sesame's provider block for that endpoint and model (a model is then required)."""
        if base_url and not model:
            raise ValueError("opencode needs a model for its provider at OPENCODE_PROVIDER_BASE_URL: "
                             "set OPENCODE_MODEL (agents.opencode.model) or pass --model")
        return replace(self, provider_url=base_url or None, provider_model=model if base_url else None)

    def argv(self, prompt: str, model: str | None, *, bin_dir: Path | str | None = None) -> list[str]:
        """Raw JSON events; `--` keeps the prompt a positional even if it starts with '-'."""
        argv = [self.executable(bin_dir), "run", "--format", "json", "--auto"]
        if self.provider_url and model:
            model = f"{PROVIDER}/{model}"
        return argv + (["--model", model] if model else []) + ["--", prompt]

    def gateway_route(self, cred: CredentialLike | None, server_env: Mapping[str, str]) -> GatewayRoute | None:
        """The provider's key to OPENCODE_PROVIDER_BASE_URL (Bearer); else an Anthropic or OpenAI key to its API.

        A subscription (auth.json, refreshed by opencode itself) keeps today's way.
        """
        env = self.credential_env(cred, server_env)
        if len(env) != 1:
            return None
        (variable, secret), = env.items()
        if self.provider_url:
            return GatewayRoute(variable, secret, self.provider_url, ("bearer",)) if variable == PROVIDER_KEY_ENV \
                else None
        if variable not in NATIVE_ROUTES:
            return None
        _provider, upstream, places, _path = NATIVE_ROUTES[variable]
        return GatewayRoute(variable, secret, upstream, places)

    def through_gateway(self, url: str, route: GatewayRoute) -> OpencodeAgent:
        """The provider block's baseURL, or the built-in provider's, is the gateway."""
        if self.provider_url:
            return replace(self, provider_url=url)
        provider, _upstream, _places, path = NATIVE_ROUTES[route.variable]
        return replace(self, native_gateway=(provider, url.rstrip("/") + path))

    def config_files(self) -> dict[str, str]:
        """The session's global opencode config (no self-update, no sharing, the provider) and plugin manifest."""
        config: dict[str, Any] = {"autoupdate": False, "share": "disabled"}
        if self.provider_url and self.provider_model:
            options = {"baseURL": self.provider_url, "apiKey": f"{{env:{PROVIDER_KEY_ENV}}}"}
            config["provider"] = {PROVIDER: {"npm": "@ai-sdk/openai-compatible", "name": "Sesame provider",
                                             "options": options, "models": {self.provider_model: {}}}}
            config["model"] = f"{PROVIDER}/{self.provider_model}"
        elif self.native_gateway:
            provider, url = self.native_gateway
            config["provider"] = {provider: {"options": {"baseURL": url}}}
        return {f"{CONFIG_DIR}/opencode.json": json.dumps(config, indent=2) + "\n", **PLUGIN_FILES}

    def credential_env(self, cred: CredentialLike | None, server_env: Mapping[str, str]) -> dict[str, str]:
        """The provider's key (stored API key or OPENCODE_PROVIDER_API_KEY) goes to the variable its block names.

        Without a provider, a stored API key is Anthropic's unless it looks like OpenAI's; a subscription
        is auth.json.
        """
        if self.provider_url:
            if cred is not None and cred.kind == "api_key":
                return {PROVIDER_KEY_ENV: cred.value}
            return env_first(server_env, (PROVIDER_KEY_ENV,))
        if cred is not None and cred.kind == "api_key":
            openai = cred.value.startswith("sk-") and not cred.value.startswith("sk-ant-")
            return {"OPENAI_API_KEY" if openai else "ANTHROPIC_API_KEY": cred.value}
        if cred is not None and cred.kind == "subscription":
            return {}
        return env_first(server_env, ("ANTHROPIC_API_KEY", "OPENAI_API_KEY"))

    def credential_files(self, cred: CredentialLike | None) -> dict[str, str]:
        """A subscription is the auth.json that `opencode auth login` writes."""
        return {AUTH_FILE: cred.value} if cred is not None and cred.kind == "subscription" else {}

    def base_env(self, base_url: str | None = None) -> dict[str, str]:
        """No self-update, no model-list fetch, no language-server downloads."""
        return {"OPENCODE_DISABLE_AUTOUPDATE": "1", "OPENCODE_DISABLE_MODELS_FETCH": "1",
                "OPENCODE_DISABLE_LSP_DOWNLOAD": "1"}

    def parse_event(self, obj: dict[str, Any], *, cwd: str | None = None) -> list[AgentEvent]:
        """Events for a JSON event object."""
        return opencode_events(obj, cwd=cwd)
