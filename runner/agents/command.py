"""The `command` agent: any argv from the server's config, prompt on stdin and in SESAME_PROMPT."""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from bot.catalog import CATALOG
from runner.agents.base import Agent, AgentEvent, CredentialLike, shorten


def command_argv(command: str | Sequence[str]) -> tuple[str, ...]:
    """The configured command as argv: a list as is, a string split like a shell would."""
    argv = tuple(shlex.split(command)) if isinstance(command, str) else tuple(str(a) for a in command)
    if not argv:
        raise ValueError("the command agent needs a command (agents.command.command or --command)")
    return argv


@dataclass(frozen=True)
class CommandAgent(Agent):
    """A custom agent: the operator's own command line, for scripts and tests."""

    spec = CATALOG["command"]
    command: tuple[str, ...] = field(default=())
    plain_lines: ClassVar[bool] = True

    def with_command(self, command: str | Sequence[str]) -> CommandAgent:
        """A copy of this agent that runs command."""
        return CommandAgent(command=command_argv(command))

    def configured(self, *, base_url: str | None = None, command: str | Sequence[str] | None = None,
                   model: str | None = None) -> CommandAgent:
        """This agent running command (from the session or AGENT_COMMAND); without one, a clear error."""
        if not command:
            raise ValueError("the command agent needs a command: set AGENT_COMMAND "
                             "(agents.command.command) or pass --command")
        return self.with_command(command)

    def argv(self, prompt: str, model: str | None, *, bin_dir: Path | str | None = None) -> list[str]:
        """The configured argv, untouched; the prompt goes to stdin and SESAME_PROMPT."""
        return list(command_argv(self.command))

    def stdin(self, prompt: str) -> bytes | None:
        """The prompt."""
        return prompt.encode()

    def credential_env(self, cred: CredentialLike | None, server_env: Mapping[str, str]) -> dict[str, str]:
        """A stored API key reaches the command as SESAME_AGENT_API_KEY; nothing from the server."""
        return {"SESAME_AGENT_API_KEY": cred.value} if cred is not None else {}

    def prompt_env(self, prompt: str) -> dict[str, str]:
        """SESAME_PROMPT carries the prompt too."""
        return {"SESAME_PROMPT": prompt}

    def parse_output(self, line: str, *, cwd: str | None = None) -> list[AgentEvent]:
        """Every non-blank line is shown as a message."""
        return [AgentEvent("message", shorten(line), {"line": line})]
