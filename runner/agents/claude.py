"""Claude Code: `claude -p --output-format stream-json --verbose`, prompt on stdin."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.catalog import CATALOG
from runner.agents.base import Agent, AgentEvent, CredentialLike, shorten
from runner.agents.tools import tool_event
from runner.agents.usage import claude_usage
from runner.sandbox.gateway import KeyPlace

CREDENTIALS_FILE = ".claude/.credentials.json"


def parse_stream_json(obj: dict[str, Any], *, cwd: str | None = None) -> list[AgentEvent]:
    """Events for one Claude Code stream-json object (also what Amp's --stream-json prints)."""
    kind = obj.get("type")
    if kind == "assistant" and obj.get("error"):
        text = " ".join(b.get("text", "") for b in (obj.get("message") or {}).get("content") or [])
        return [AgentEvent("error", shorten(text) or str(obj["error"]), {"error": obj["error"], "text": text})]
    if kind == "assistant":
        return assistant_events(obj.get("message") or {}, cwd=cwd)
    if kind == "result":
        return result_events(obj)
    if kind == "system" and obj.get("subtype") == "init":
        return []
    if kind == "system" and obj.get("subtype") == "api_retry":
        return [retry_event(obj)]
    if kind in ("user", "system", "stream_event", "rate_limit_event", "keep_alive", "prompt_suggestion"):
        return []
    return [AgentEvent("raw", shorten(str(kind or obj)), obj)]


def assistant_events(message: dict[str, Any], *, cwd: str | None) -> list[AgentEvent]:
    """One event per text or tool_use block of an assistant message."""
    events = []
    for block in message.get("content") or []:
        if block.get("type") == "text" and str(block.get("text", "")).strip():
            events.append(AgentEvent("message", shorten(block["text"]), {"text": block["text"]}))
        elif block.get("type") == "tool_use":
            extra = {"id": block.get("id")}
            events.append(tool_event(str(block.get("name")), block.get("input"), cwd=cwd, extra=extra))
    return events


def retry_event(obj: dict[str, Any]) -> AgentEvent:
    """A warning for an API call the CLI retries; its status lets a failure be named before the retries end."""
    status, error = obj.get("error_status"), obj.get("error")
    summary = f"Retrying the model API ({status or error or 'no answer'}), attempt {obj.get('attempt')}"
    data = {"status": status, "error": error, "attempt": obj.get("attempt"), "max_retries": obj.get("max_retries")}
    return AgentEvent("warning", shorten(summary), data)


def result_events(obj: dict[str, Any]) -> list[AgentEvent]:
    """The final result line: one result event whose data says whether the run failed."""
    failed = bool(obj.get("is_error")) or str(obj.get("subtype", "success")) != "success"
    text = str(obj.get("result") or obj.get("error") or obj.get("subtype") or "")
    keys = ("subtype", "result", "num_turns", "duration_ms", "total_cost_usd", "usage", "api_error_status")
    data = {k: obj.get(k) for k in keys} | {"is_error": failed} | claude_usage(obj)
    return [AgentEvent("result", shorten(text) or ("failed" if failed else "done"), data)]


@dataclass(frozen=True)
class ClaudeAgent(Agent):
    """Anthropic's Claude Code CLI."""

    spec = CATALOG["claude"]
    vendor_domains: tuple[str, ...] = CATALOG["claude"].vendor_domains
    base_url_env: str | None = "ANTHROPIC_BASE_URL"
    api_key_env: str | None = "ANTHROPIC_API_KEY"
    gateway_upstream: str | None = "https://api.anthropic.com"
    # an API key goes as x-api-key; an OAuth token (CLAUDE_CODE_OAUTH_TOKEN) as Authorization: Bearer
    gateway_key_places: tuple[KeyPlace, ...] = ("x-api-key", "bearer")

    def argv(self, prompt: str, model: str | None, *, bin_dir: Path | str | None = None) -> list[str]:
        """`claude -p` with streaming JSON; the prompt arrives on stdin."""
        argv = [self.executable(bin_dir), "-p", "--output-format", "stream-json", "--verbose",
                "--dangerously-skip-permissions"]
        return argv + (["--model", model] if model else [])

    def stdin(self, prompt: str) -> bytes | None:
        """The prompt, so it never has to survive argv parsing."""
        return prompt.encode()

    def credential_env(self, cred: CredentialLike | None, server_env: Mapping[str, str]) -> dict[str, str]:
        """OAuth token (from `claude setup-token`) or API key; a credentials.json goes to a file."""
        if cred is not None and cred.kind == "subscription" and not is_json_blob(cred.value):
            return {"CLAUDE_CODE_OAUTH_TOKEN": cred.value}
        return super().credential_env(cred, server_env)

    def credential_files(self, cred: CredentialLike | None) -> dict[str, str]:
        """A subscription stored as the CLI's own credentials.json is written to ~/.claude."""
        if cred is not None and cred.kind == "subscription" and is_json_blob(cred.value):
            return {CREDENTIALS_FILE: cred.value}
        return {}

    def base_env(self, base_url: str | None = None) -> dict[str, str]:
        """No telemetry, no auto-update, optional gateway URL."""
        quiet = {"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1",
                 "DISABLE_TELEMETRY": "1", "DISABLE_ERROR_REPORTING": "1"}
        return quiet | super().base_env(base_url)

    def parse_event(self, obj: dict[str, Any], *, cwd: str | None = None) -> list[AgentEvent]:
        """Events for a stream-json object."""
        return parse_stream_json(obj, cwd=cwd)


def is_json_blob(value: str) -> bool:
    """Whether a stored credential is a JSON document rather than a bare token."""
    return value.lstrip().startswith("{")
