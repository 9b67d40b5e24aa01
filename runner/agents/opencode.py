"""opencode: `opencode run --format json -- PROMPT`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.catalog import CATALOG
from runner.agents.base import Agent, AgentEvent, CredentialLike, as_dict, env_first, shorten
from runner.agents.tools import tool_event
from runner.agents.usage import sum_counts, usage_data

AUTH_FILE = ".local/share/opencode/auth.json"


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
    vendor_domains: tuple[str, ...] = ("api.anthropic.com", "api.openai.com", "models.dev", "opencode.ai")

    def argv(self, prompt: str, model: str | None, *, bin_dir: Path | str | None = None) -> list[str]:
        """Raw JSON events; `--` keeps the prompt a positional even if it starts with '-'."""
        argv = [self.executable(bin_dir), "run", "--format", "json", "--auto"]
        return argv + (["--model", model] if model else []) + ["--", prompt]

    def credential_env(self, cred: CredentialLike | None, server_env: Mapping[str, str]) -> dict[str, str]:
        """A stored API key is Anthropic's unless it looks like OpenAI's; a subscription is auth.json."""
        if cred is not None and cred.kind == "api_key":
            openai = cred.value.startswith("sk-") and not cred.value.startswith("sk-ant-")
            return {"OPENAI_API_KEY" if openai else "ANTHROPIC_API_KEY": cred.value}
        if cred is not None and cred.kind == "subscription":
            return {}
        return env_first(server_env, self.server_env_keys)

    def credential_files(self, cred: CredentialLike | None) -> dict[str, str]:
        """A subscription is the auth.json that `opencode auth login` writes."""
        return {AUTH_FILE: cred.value} if cred is not None and cred.kind == "subscription" else {}

    def base_env(self, base_url: str | None = None) -> dict[str, str]:
        """No self-update, no model-list fetch, no telemetry."""
        return {"OPENCODE_DISABLE_AUTOUPDATE": "1", "OPENCODE_DISABLE_MODELS_FETCH": "1"}

    def parse_event(self, obj: dict[str, Any], *, cwd: str | None = None) -> list[AgentEvent]:
        """Events for a JSON event object."""
        return opencode_events(obj, cwd=cwd)
