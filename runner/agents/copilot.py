"""GitHub Copilot CLI: `copilot --prompt=... --output-format json --allow-all`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.catalog import CATALOG
from runner.agents.base import Agent, AgentEvent, as_dict, shorten
from runner.agents.tools import tool_event


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


@dataclass(frozen=True)
class CopilotAgent(Agent):
    """GitHub's Copilot CLI."""

    spec = CATALOG["copilot"]
    vendor_domains: tuple[str, ...] = (
        "api.githubcopilot.com", "*.githubcopilot.com", "api.github.com", "github.com")
    subscription_env: str | None = "COPILOT_GITHUB_TOKEN"
    api_key_env: str | None = "COPILOT_GITHUB_TOKEN"

    def argv(self, prompt: str, model: str | None, *, bin_dir: Path | str | None = None) -> list[str]:
        """Prompt mode with JSONL output; every tool allowed (Sesame's sandbox is the boundary)."""
        argv = [self.executable(bin_dir), f"--prompt={prompt}", "--output-format", "json", "--allow-all",
                "--no-color", "--no-auto-update"]
        return argv + (["--model", model] if model else [])

    def base_env(self, base_url: str | None = None) -> dict[str, str]:
        """No self-update; a base URL selects a bring-your-own-key OpenAI-compatible provider."""
        env = {"COPILOT_AUTO_UPDATE": "false"}
        return env | ({"COPILOT_PROVIDER_BASE_URL": base_url} if base_url else {})

    def parse_event(self, obj: dict[str, Any], *, cwd: str | None = None) -> list[AgentEvent]:
        """Events for a JSONL object."""
        return copilot_events(obj, cwd=cwd)
