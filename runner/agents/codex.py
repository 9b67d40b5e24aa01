"""OpenAI Codex CLI: `codex exec --json`, prompt on stdin."""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bot.catalog import CATALOG
from runner.agents.base import (
    Agent,
    AgentEvent,
    CredentialLike,
    as_dict,
    env_first,
    load_json_object,
    relative_path,
    shorten,
)
from runner.agents.tools import tool_event
from runner.agents.usage import usage_data
from runner.sandbox.gateway import KeyPlace

AUTH_FILE = ".codex/auth.json"
CONFIG_FILE = ".codex/config.toml"
# Each of these phones home from a plain `codex exec`: the release check (api.github.com), analytics
# (ab.chatgpt.com), the curated plugin and app sync (github.com, chatgpt.com).
QUIET_CONFIG = """check_for_update_on_startup = false

[analytics]
enabled = false

[features]
plugins = false
apps = false
"""
CHANGE_VERBS = {"add": "Creating", "delete": "Deleting", "update": "Editing"}
SHELLS = {"bash", "sh", "zsh", "dash"}
GATEWAY_PROVIDER = "sesame"
RETRY_NOTICE = "Reconnecting..."


def shell_script(command: str) -> str:
    """The script inside codex's `/bin/bash -lc '...'` wrapper, or the command unchanged."""
    try:
        words = shlex.split(command)
    except ValueError:
        return command
    if len(words) == 3 and words[0].rsplit("/", 1)[-1] in SHELLS and words[1] in ("-c", "-lc"):
        return words[2]
    return command


def error_text(message: Any) -> str:
    """An error message; codex passes an API's JSON error body through verbatim, so take its message."""
    text = str(message)
    body = load_json_object(text)
    inner = body.get("error") if body is not None else None
    if isinstance(inner, dict) and inner.get("message"):
        return str(inner["message"])
    return text


def gateway_args(base_url: str) -> list[str]:
    """`-c` overrides selecting a Responses API provider at base_url (codex ignores OPENAI_BASE_URL).

    It keeps OpenAI auth (CODEX_API_KEY / auth.json) and speaks HTTPS+SSE, not the WebSocket
    transport the built-in provider tries first, which a gateway need not offer.
    """
    provider = (f'{{name="Sesame gateway",base_url={json.dumps(base_url)},wire_api="responses",'
                'requires_openai_auth=true,supports_websockets=false}')
    return ["-c", f'model_provider="{GATEWAY_PROVIDER}"', "-c", f"model_providers.{GATEWAY_PROVIDER}={provider}"]


def item_events(phase: str, item: dict[str, Any], *, cwd: str | None) -> list[AgentEvent]:
    """Events for an item.started / item.completed line."""
    kind = item.get("type")
    if kind == "command_execution" and phase == "item.started":
        command = str(item.get("command", ""))
        extra = {"id": item.get("id"), "command_line": command}
        return [tool_event("shell", {"command": shell_script(command)}, cwd=cwd, extra=extra)]
    if kind == "file_change" and phase == "item.completed":
        return [file_change_event(c, cwd, item.get("status")) for c in item.get("changes") or []]
    if kind == "agent_message" and phase == "item.completed":
        return [AgentEvent("message", shorten(item.get("text", "")), {"text": item.get("text", "")})]
    if kind == "mcp_tool_call" and phase == "item.started":
        name = f"{item.get('server')}.{item.get('tool')}"
        return [tool_event(name, item.get("arguments"), cwd=cwd, extra={"id": item.get("id")})]
    if kind == "web_search" and phase == "item.started":
        return [tool_event("web_search", {"query": item.get("query", "")}, cwd=cwd)]
    if kind == "todo_list" and phase == "item.started":
        return [tool_event("todo_write", {"items": item.get("items")}, cwd=cwd)]
    if kind == "error":  # an error item is codex's non-fatal notice; failures end the turn
        return [AgentEvent("warning", shorten(error_text(item.get("message", "error"))), item)]
    return []


def file_change_event(change: dict[str, Any], cwd: str | None, status: Any = None) -> AgentEvent:
    """One file_edit event per changed path."""
    path = str(change.get("path", ""))
    verb = CHANGE_VERBS.get(str(change.get("kind")), "Editing")
    data = {"path": path, "kind": change.get("kind"), "status": status}
    return AgentEvent("file_edit", shorten(f"{verb} {relative_path(path, cwd)}"), data)


def codex_events(obj: dict[str, Any], *, cwd: str | None) -> list[AgentEvent]:
    """Events for one `codex exec --json` line."""
    kind = str(obj.get("type", ""))
    if kind.startswith("item.") and isinstance(obj.get("item"), dict):
        return item_events(kind, obj["item"], cwd=cwd)
    if kind == "turn.completed":
        usage = as_dict(obj.get("usage"))  # input_tokens counts the cached ones too
        data = {"is_error": False, "usage": obj.get("usage")} | usage_data(usage.get("input_tokens"),
                                                                           usage.get("output_tokens"))
        return [AgentEvent("result", "done", data)]
    if kind == "turn.failed":
        message = error_text(as_dict(obj.get("error")).get("message", "turn failed"))
        return [AgentEvent("result", shorten(message), {"is_error": True, "error": obj.get("error")})]
    if kind == "error":
        message = error_text(obj.get("message", "error"))
        retrying = message.startswith(RETRY_NOTICE)  # codex retries by itself; turn.failed says if it gave up
        return [AgentEvent("warning" if retrying else "error", shorten(message), obj)]
    if kind in ("thread.started", "turn.started"):
        return []
    return [AgentEvent("raw", shorten(kind or str(obj)), obj)]


@dataclass(frozen=True)
class CodexAgent(Agent):
    """OpenAI's Codex CLI."""

    spec = CATALOG["codex"]
    vendor_domains: tuple[str, ...] = CATALOG["codex"].vendor_domains
    api_key_env: str | None = "CODEX_API_KEY"
    gateway_upstream: str | None = "https://api.openai.com/v1"
    gateway_key_places: tuple[KeyPlace, ...] = ("bearer",)
    gateway_url: str | None = None

    def with_base_url(self, base_url: str | None) -> CodexAgent:
        """This agent talking to a Responses API gateway (codex takes it as config, not from the environment)."""
        return replace(self, gateway_url=base_url or None)

    def configured(self, *, base_url: str | None = None, command: str | Sequence[str] | None = None,
                   model: str | None = None) -> CodexAgent:
        """The gateway goes into codex's argv: it takes no base URL from the environment."""
        return self.with_base_url(base_url) if base_url else self

    def argv(self, prompt: str, model: str | None, *, bin_dir: Path | str | None = None) -> list[str]:
        """`codex exec --json`, its own sandbox off (Sesame's sandbox wraps it), prompt from stdin."""
        argv = [self.executable(bin_dir), "exec", "--json", "--color", "never", "--skip-git-repo-check",
                "--dangerously-bypass-approvals-and-sandbox"]
        argv += gateway_args(self.gateway_url) if self.gateway_url else []
        return argv + (["--model", model] if model else []) + ["-"]

    def stdin(self, prompt: str) -> bytes | None:
        """The prompt (`-` tells codex to read it from stdin)."""
        return prompt.encode()

    def credential_env(self, cred: CredentialLike | None, server_env: Mapping[str, str]) -> dict[str, str]:
        """`codex exec` reads only CODEX_API_KEY, so a server's OPENAI_API_KEY is passed under that name."""
        if cred is not None:
            return super().credential_env(cred, server_env)
        key = next(iter(env_first(server_env, self.server_env_keys).values()), None)
        return {"CODEX_API_KEY": key} if key else {}

    def config_files(self) -> dict[str, str]:
        """No update check, analytics, plugin or app sync."""
        return {CONFIG_FILE: QUIET_CONFIG}

    def credential_files(self, cred: CredentialLike | None) -> dict[str, str]:
        """A ChatGPT subscription is the auth.json that `codex login` writes."""
        return {AUTH_FILE: cred.value} if cred is not None and cred.kind == "subscription" else {}

    def parse_event(self, obj: dict[str, Any], *, cwd: str | None = None) -> list[AgentEvent]:
        """Events for an `exec --json` object."""
        return codex_events(obj, cwd=cwd)
