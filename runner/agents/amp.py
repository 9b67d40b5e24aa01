"""Sourcegraph Amp: `amp --execute --stream-json` (Claude Code-compatible stream JSON)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.catalog import CATALOG
from runner.agents.base import Agent, AgentEvent
from runner.agents.claude import parse_stream_json

SETTINGS_FILE = ".config/amp/settings.json"


@dataclass(frozen=True)
class AmpAgent(Agent):
    """Sourcegraph's Amp CLI."""

    spec = CATALOG["amp"]
    vendor_domains: tuple[str, ...] = CATALOG["amp"].vendor_domains
    base_url_env: str | None = "AMP_URL"
    subscription_env: str | None = "AMP_API_KEY"
    api_key_env: str | None = "AMP_API_KEY"

    def argv(self, prompt: str, model: str | None, *, bin_dir: Path | str | None = None) -> list[str]:
        """Execute mode with stream JSON; Amp picks models by mode, so a model names the mode."""
        argv = [self.executable(bin_dir), "--execute", "--stream-json", "--no-ide", "--no-notifications", "--no-color"]
        return argv + (["--mode", model] if model else [])

    def stdin(self, prompt: str) -> bytes | None:
        """Execute mode reads the prompt from stdin."""
        return prompt.encode()

    def config_files(self) -> dict[str, str]:
        """Allow every tool: Sesame's sandbox, not Amp's prompts, is the boundary."""
        settings = {"amp.dangerouslyAllowAll": True, "amp.updates.mode": "disabled",
                    "amp.git.commit.coauthor.enabled": False}
        return {SETTINGS_FILE: json.dumps(settings, indent=2) + "\n"}

    def parse_event(self, obj: dict[str, Any], *, cwd: str | None = None) -> list[AgentEvent]:
        """Events for a stream-json object (same shape as Claude Code's)."""
        return parse_stream_json(obj, cwd=cwd)
