"""OpenAI Codex CLI: `codex exec --json`, prompt on stdin."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.agents.base import Agent, AgentEvent, CredentialLike, load_json_object, raw_event, relative_path, shorten
from runner.agents.tools import tool_event

AUTH_FILE = ".codex/auth.json"
CHANGE_VERBS = {"add": "Creating", "delete": "Deleting", "update": "Editing"}


def item_events(phase: str, item: dict[str, Any], *, cwd: str | None) -> list[AgentEvent]:
    """Events for an item.started / item.completed line."""
    kind = item.get("type")
    if kind == "command_execution" and phase == "item.started":
        return [tool_event("shell", {"command": item.get("command", "")}, cwd=cwd, extra={"id": item.get("id")})]
    if kind == "file_change" and phase == "item.completed":
        return [file_change_event(c, cwd) for c in item.get("changes") or []]
    if kind == "agent_message" and phase == "item.completed":
        return [AgentEvent("message", shorten(item.get("text", "")), {"text": item.get("text", "")})]
    if kind == "mcp_tool_call" and phase == "item.started":
        name = f"{item.get('server')}.{item.get('tool')}"
        return [tool_event(name, item.get("arguments"), cwd=cwd, extra={"id": item.get("id")})]
    if kind == "web_search" and phase == "item.started":
        return [tool_event("web_search", {"query": item.get("query", "")}, cwd=cwd)]
    if kind == "todo_list" and phase == "item.started":
        return [tool_event("todo_write", {"items": item.get("items")}, cwd=cwd)]
    if kind == "error":
        return [AgentEvent("error", shorten(item.get("message", "error")), item)]
    return []


def file_change_event(change: dict[str, Any], cwd: str | None) -> AgentEvent:
    """One file_edit event per changed path."""
    path = str(change.get("path", ""))
    verb = CHANGE_VERBS.get(str(change.get("kind")), "Editing")
    data = {"path": path, "kind": change.get("kind")}
    return AgentEvent("file_edit", shorten(f"{verb} {relative_path(path, cwd)}"), data)


def codex_events(obj: dict[str, Any], *, cwd: str | None) -> list[AgentEvent]:
    """Events for one `codex exec --json` line."""
    kind = str(obj.get("type", ""))
    if kind.startswith("item.") and isinstance(obj.get("item"), dict):
        return item_events(kind, obj["item"], cwd=cwd)
    if kind == "turn.completed":
        return [AgentEvent("result", "done", {"is_error": False, "usage": obj.get("usage")})]
    if kind == "turn.failed":
        message = str((obj.get("error") or {}).get("message", "turn failed"))
        return [AgentEvent("result", shorten(message), {"is_error": True, "error": obj.get("error")})]
    if kind == "error":
        return [AgentEvent("error", shorten(str(obj.get("message", "error"))), obj)]
    if kind in ("thread.started", "turn.started"):
        return []
    return [AgentEvent("raw", shorten(kind or str(obj)), obj)]


@dataclass(frozen=True)
class CodexAgent(Agent):
    """OpenAI's Codex CLI."""

    name: str = "codex"
    display_name: str = "Codex"
    npm_package: str | None = "@openai/codex"
    binary: str = "codex"
    vendor_domains: tuple[str, ...] = ("api.openai.com", "chatgpt.com", "auth.openai.com")
    base_url_env: str | None = "OPENAI_BASE_URL"
    api_key_env: str | None = "CODEX_API_KEY"
    server_env_keys: tuple[str, ...] = ("CODEX_API_KEY", "OPENAI_API_KEY")

    def argv(self, prompt: str, model: str | None, *, bin_dir: Path | str | None = None) -> list[str]:
        """`codex exec --json`, its own sandbox off (Sesame's sandbox wraps it), prompt from stdin."""
        argv = [self.executable(bin_dir), "exec", "--json", "--color", "never", "--skip-git-repo-check",
                "--dangerously-bypass-approvals-and-sandbox"]
        return argv + (["--model", model] if model else []) + ["-"]

    def stdin(self, prompt: str) -> bytes | None:
        """The prompt (`-` tells codex to read it from stdin)."""
        return prompt.encode()

    def credential_files(self, cred: CredentialLike | None) -> dict[str, str]:
        """A ChatGPT subscription is the auth.json that `codex login` writes."""
        return {AUTH_FILE: cred.value} if cred is not None and cred.kind == "subscription" else {}

    def parse_json_line(self, line: str, *, cwd: str | None = None) -> list[AgentEvent]:
        """Parse an `exec --json` line."""
        if not line.strip():
            return []
        obj = load_json_object(line)
        return codex_events(obj, cwd=cwd) if obj is not None else [raw_event(line)]
