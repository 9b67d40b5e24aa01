"""The one registry of the agents Sesame knows: names, packages, binaries and their settings keys."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class AgentSpec:
    """What every part needs to know about one agent, without running it (runner/agents runs it)."""

    name: str
    display_name: str  # how messages name the agent ("Sesame is working with Claude Code")
    npm_package: str | None = None  # None: nothing to install
    binary: str = ""  # the executable npm installs; empty for the operator's own command
    model_key: str | None = None  # setting holding the default model
    base_url_key: str | None = None  # setting holding a gateway base URL
    server_env_keys: tuple[str, ...] = ()  # server settings the agent may take its key from, in order
    vendor_domains: tuple[str, ...] = ()  # network destinations its CLI needs (the sandbox allows them)
    models: tuple[str, ...] = ()  # the built-in model catalogue the session form offers (SESAME_API_URL's first)
    # how a person authenticates it, in the credentials page's tab order (the seed's: Subscription first)
    credential_kinds: tuple[str, ...] = ("api_key",)


AGENT_SPECS = (
    AgentSpec("claude", "Claude Code", "@anthropic-ai/claude-code", "claude", "CLAUDE_MODEL", "ANTHROPIC_BASE_URL",
              ("CLAUDE_CODE_OAUTH_TOKEN", "ANTHROPIC_API_KEY"), ("api.anthropic.com",),
              ("claude-sonnet-4-5", "claude-opus-4-5", "claude-haiku-4-5"), ("subscription", "api_key")),
    AgentSpec("codex", "Codex", "@openai/codex", "codex", "CODEX_MODEL", "OPENAI_BASE_URL",
              ("CODEX_API_KEY", "OPENAI_API_KEY"), ("api.openai.com", "chatgpt.com", "auth.openai.com"),
              ("gpt-5.1-codex", "gpt-5.1-codex-mini", "gpt-5.1"), ("subscription", "api_key")),
    AgentSpec("gemini", "Gemini CLI", "@google/gemini-cli", "gemini", "GEMINI_MODEL", "GEMINI_BASE_URL",
              ("GEMINI_API_KEY",),
              ("generativelanguage.googleapis.com", "cloudcode-pa.googleapis.com", "oauth2.googleapis.com"),
              ("gemini-2.5-pro", "gemini-2.5-flash", "gemini-3-pro-preview")),
    AgentSpec("copilot", "Copilot CLI", "@github/copilot", "copilot", "COPILOT_MODEL", "COPILOT_PROVIDER_BASE_URL",
              ("COPILOT_GITHUB_TOKEN", "GH_TOKEN", "GITHUB_TOKEN", "COPILOT_PROVIDER_API_KEY"),
              ("api.githubcopilot.com", "*.githubcopilot.com", "api.github.com", "github.com"),
              ("claude-sonnet-4.5", "gpt-5"), ("subscription",)),
    AgentSpec("amp", "Amp", "@sourcegraph/amp", "amp", None, "AMP_URL", ("AMP_API_KEY",),
              ("ampcode.com", "*.ampcode.com")),
    AgentSpec("opencode", "opencode", "opencode-ai", "opencode", "OPENCODE_MODEL", "OPENCODE_PROVIDER_BASE_URL",
              ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "OPENCODE_PROVIDER_API_KEY"),
              ("api.anthropic.com", "api.openai.com", "models.dev", "opencode.ai"),
              ("anthropic/claude-sonnet-4-5", "openai/gpt-5.1")),
    AgentSpec("command", "a custom command"),
)
CATALOG: dict[str, AgentSpec] = {spec.name: spec for spec in AGENT_SPECS}
AGENT_NAMES = tuple(CATALOG)
DISPLAY_NAMES = {spec.name: spec.display_name for spec in AGENT_SPECS}
# Settings an agent may take its own key from; every other secret stays out of the sandbox.
AGENT_ENV_KEYS = tuple(dict.fromkeys(key for spec in AGENT_SPECS for key in spec.server_env_keys))


def canonical_agent_name(name: str) -> str | None:
    """The catalogue's spelling of an agent name (case and surrounding blanks ignored), or None."""
    key = name.strip().lower()
    return key if key in CATALOG else None


def display_name(agent: str) -> str:
    """How progress messages name an agent."""
    return DISPLAY_NAMES.get(agent, agent)


def agent_bin_dir(name: str, data_dir: Path | str) -> Path:
    """Where `sesame agents install` puts an agent's executables: {data_dir}/agents/{name}/node_modules/.bin."""
    return Path(data_dir) / "agents" / name / "node_modules" / ".bin"


def find_agent_binary(name: str, data_dir: Path | str) -> Path | None:
    """The agent's executable: the data dir's install first, then PATH; None when it has none or is missing."""
    spec = CATALOG.get(name)
    if spec is None or not spec.binary:
        return None
    local = agent_bin_dir(name, data_dir) / spec.binary
    if local.exists():
        return local
    found = shutil.which(spec.binary)
    return Path(found) if found else None
