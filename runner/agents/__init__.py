"""Coding-agent CLIs Sesame can run, by name."""

from __future__ import annotations

from collections.abc import Sequence

from bot.catalog import canonical_agent_name
from runner.agents.amp import AmpAgent
from runner.agents.base import Agent, AgentEvent, Credential, pick_credential
from runner.agents.claude import ClaudeAgent
from runner.agents.codex import CodexAgent
from runner.agents.command import CommandAgent
from runner.agents.copilot import CopilotAgent
from runner.agents.gemini import GeminiAgent
from runner.agents.opencode import OpencodeAgent

AGENTS: dict[str, Agent] = {
    agent.name: agent
    for agent in (ClaudeAgent(), CodexAgent(), GeminiAgent(), CopilotAgent(), AmpAgent(), OpencodeAgent(),
                  CommandAgent())
}


def get_agent(name: str, *, command: str | Sequence[str] | None = None) -> Agent:
    """The agent called name (case and blanks ignored); the `command` agent needs its command line."""
    agent = AGENTS.get(canonical_agent_name(name) or "")
    if agent is None:
        raise ValueError(f"unknown agent {name!r}; valid agents: {', '.join(sorted(AGENTS))}")
    return agent.configured(command=command) if command is not None else agent


__all__ = ["AGENTS", "Agent", "AgentEvent", "Credential", "get_agent", "pick_credential"]
