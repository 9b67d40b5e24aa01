"""Names shared by every part: the agents Sesame knows."""

AGENT_NAMES = ("claude", "codex", "gemini", "copilot", "amp", "opencode", "command")
DISPLAY_NAMES = {"claude": "Claude Code", "codex": "Codex", "gemini": "Gemini CLI", "copilot": "Copilot CLI",
                 "amp": "Amp", "opencode": "opencode", "command": "a custom command"}


def display_name(agent: str) -> str:
    """How progress messages name an agent."""
    return DISPLAY_NAMES.get(agent, agent)
