"""Google Gemini CLI: `gemini --output-format stream-json --prompt=...`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.catalog import CATALOG
from runner.agents.base import Agent, AgentEvent, CredentialLike, as_dict, shorten
from runner.agents.codex import error_text
from runner.agents.tools import tool_event
from runner.agents.usage import usage_data
from runner.sandbox.gateway import KeyPlace

OAUTH_FILE = ".gemini/oauth_creds.json"
SETTINGS_FILE = ".gemini/settings.json"
# Telemetry off is not enough: usage statistics go to play.googleapis.com unless privacy turns them off;
# no self-update either.
QUIET_SETTINGS = {"privacy": {"usageStatisticsEnabled": False}, "telemetry": {"enabled": False},
                  "general": {"enableAutoUpdate": False, "enableAutoUpdateNotification": False}}


def settings_json(auth: str) -> str:
    """The CLI's settings.json: the auth method and the quiet settings."""
    return json.dumps({"security": {"auth": {"selectedType": auth}}, **QUIET_SETTINGS}) + "\n"


# With GOOGLE_GEMINI_BASE_URL set and no auth chosen, the CLI picks a "gateway" auth its own headless check
# rejects ("Invalid auth method selected."), so the API-key auth is chosen explicitly.
API_KEY_SETTINGS = settings_json("gemini-api-key")


def api_error_text(message: object) -> str:
    """The message of an error; the CLI wraps an API's JSON body as `[API Error: {...}]`."""
    text = str(message).strip()
    if text.startswith("[API Error: ") and text.endswith("]"):
        text = text.removeprefix("[API Error: ")[:-1]
    return error_text(text)


def gemini_events(obj: dict[str, Any], *, cwd: str | None) -> list[AgentEvent]:
    """Events for one stream-json line."""
    kind = obj.get("type")
    if kind == "message" and obj.get("role") == "assistant" and str(obj.get("content", "")).strip():
        data = {"text": obj["content"], "delta": bool(obj.get("delta"))}
        return [AgentEvent("message", shorten(obj["content"]), data)]
    if kind == "tool_use":
        extra = {"id": obj.get("tool_id")}
        return [tool_event(str(obj.get("tool_name")), obj.get("parameters"), cwd=cwd, extra=extra)]
    if kind == "error":
        return [AgentEvent("error", shorten(api_error_text(obj.get("message", "error"))), obj)]
    if kind == "result":
        failed = obj.get("status") != "success"
        message = api_error_text(as_dict(obj.get("error")).get("message", "")) if failed else ""
        stats = as_dict(obj.get("stats"))
        data = obj | {"is_error": failed} | usage_data(stats.get("input_tokens"), stats.get("output_tokens"))
        return [AgentEvent("result", shorten(message) or ("failed" if failed else "done"), data)]
    if kind in ("init", "message", "tool_result"):
        return []
    return [AgentEvent("raw", shorten(str(kind or obj)), obj)]


@dataclass(frozen=True)
class GeminiAgent(Agent):
    """Google's Gemini CLI."""

    spec = CATALOG["gemini"]
    vendor_domains: tuple[str, ...] = CATALOG["gemini"].vendor_domains
    base_url_env: str | None = "GOOGLE_GEMINI_BASE_URL"
    api_key_env: str | None = "GEMINI_API_KEY"
    gateway_upstream: str | None = "https://generativelanguage.googleapis.com"
    gateway_key_places: tuple[KeyPlace, ...] = ("x-goog-api-key", "query-key")

    def argv(self, prompt: str, model: str | None, *, bin_dir: Path | str | None = None) -> list[str]:
        """Headless mode; `--prompt=` keeps a prompt starting with '-' a value."""
        argv = [self.executable(bin_dir), "--output-format", "stream-json", "--approval-mode", "yolo", "--skip-trust"]
        return argv + (["--model", model] if model else []) + [f"--prompt={prompt}"]

    def credential_files(self, cred: CredentialLike | None) -> dict[str, str]:
        """A Google-login subscription is the oauth_creds.json the CLI wrote, plus its auth setting."""
        if cred is None or cred.kind != "subscription":
            return {}
        return {OAUTH_FILE: cred.value, SETTINGS_FILE: settings_json("oauth-personal")}

    def config_files(self) -> dict[str, str]:
        """API-key auth, unless a subscription's credential_files replace it with the Google login."""
        return {SETTINGS_FILE: API_KEY_SETTINGS}

    def base_env(self, base_url: str | None = None) -> dict[str, str]:
        """No telemetry; optional gateway URL."""
        return {"GEMINI_TELEMETRY_ENABLED": "false"} | super().base_env(base_url)

    def parse_event(self, obj: dict[str, Any], *, cwd: str | None = None) -> list[AgentEvent]:
        """Events for a stream-json object."""
        return gemini_events(obj, cwd=cwd)
