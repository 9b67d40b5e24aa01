"""A repository's own settings, `.github/sesame.yml` (or `.sesame.yml`), read from its base branch (issue 18).

The file is data: it is parsed here with YAML's safe loader, checked key by key against a fixed schema, and
never executed by the host. Its `setup` and `test` commands run only inside the session's sandbox
(runner/steps_setup_test.py). An invalid file is reported with its line and the session runs on the
server's defaults.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from bot.catalog import AGENT_NAMES
from bot.triggers import is_safe_ref

PATHS = (".github/sesame.yml", ".sesame.yml")
MAX_BYTES = 64 * 1024
MAX_COMMANDS = 20
MAX_COMMAND = 2000
MAX_INSTRUCTIONS = 8000
MAX_FIX_ROUNDS = 5
MAX_DOMAINS = 50
DOMAIN = re.compile(r"^(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]{0,62}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}"
                    r"[A-Za-z0-9])?)*(:[0-9]{1,5})?$")
MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}$")
KEYS = ("agent", "model", "setup", "test", "fix", "allowed_domains", "budget", "branch_prefix", "instructions")


@dataclass(frozen=True)
class RepoConfig:
    """What a repository asks for; every field optional (empty: the server's defaults)."""

    path: str | None = None  # where it was read from
    agent: str | None = None
    model: str | None = None
    setup: tuple[str, ...] = ()
    test: str | None = None
    fix: int = 0
    allowed_domains: tuple[str, ...] = ()
    budget_usd: float | None = None
    branch_prefix: str | None = None
    instructions: str | None = None
    agents_md: str | None = field(default=None, compare=False)  # AGENTS.md of the base branch, if any


class RepoConfigError(ValueError):
    """An invalid file: what is wrong and on which line (1-based; None: the whole file)."""

    def __init__(self, path: str, message: str, line: int | None = None) -> None:
        where = f"{path} line {line}" if line else path
        super().__init__(f"{where}: {message}")
        self.path, self.line, self.message = path, line, message


def parse(path: str, text: str) -> RepoConfig:
    """The file's settings; RepoConfigError naming the line of the first problem."""
    if len(text.encode()) > MAX_BYTES:
        raise RepoConfigError(path, f"larger than {MAX_BYTES // 1024} KiB")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise RepoConfigError(path, f"not valid YAML ({exc.problem or exc.context})",
                              mark.line + 1 if mark else None) from None
    except yaml.YAMLError as exc:
        raise RepoConfigError(path, f"not valid YAML ({exc})") from None
    if node is None:
        return RepoConfig(path=path)
    if not isinstance(node, yaml.MappingNode):
        raise RepoConfigError(path, "the file must be a mapping of settings (agent:, setup:, test: ...)",
                              node.start_mark.line + 1)
    values: dict[str, Any] = {}
    for key_node, value_node in node.value:
        key, line = str(key_node.value), key_node.start_mark.line + 1
        if key not in KEYS:
            raise RepoConfigError(path, f"unknown setting {key!r} (known: {', '.join(KEYS)})", line)
        if key in values:
            raise RepoConfigError(path, f"{key!r} is set twice", line)
        try:
            values[key] = _check(key, yaml.SafeLoader(text).construct_object(value_node, deep=True))
        except ValueError as exc:
            raise RepoConfigError(path, f"{key}: {exc}", value_node.start_mark.line + 1) from None
    return RepoConfig(path=path, agent=values.get("agent"), model=values.get("model"),
                      setup=tuple(values.get("setup", ())), test=values.get("test"), fix=values.get("fix", 0),
                      allowed_domains=tuple(values.get("allowed_domains", ())), budget_usd=values.get("budget"),
                      branch_prefix=values.get("branch_prefix"), instructions=values.get("instructions"))


def _check(key: str, value: Any) -> Any:
    """One setting's value, checked (ValueError saying what is expected)."""
    if key == "agent":
        if value not in AGENT_NAMES:
            raise ValueError(f"one of {', '.join(AGENT_NAMES)}")
        return value
    if key == "model":
        if not isinstance(value, str) or not MODEL.match(value):
            raise ValueError("a model name (letters, digits, . _ : / @ -)")
        return value
    if key == "setup":
        commands = [value] if isinstance(value, str) else value
        if not isinstance(commands, list) or not commands or len(commands) > MAX_COMMANDS or \
                not all(isinstance(c, str) and c.strip() and len(c) <= MAX_COMMAND for c in commands):
            raise ValueError(f"a command or a list of 1 to {MAX_COMMANDS} commands (text, at most "
                             f"{MAX_COMMAND} characters each)")
        return commands
    if key == "test":
        if not isinstance(value, str) or not value.strip() or len(value) > MAX_COMMAND:
            raise ValueError(f"one command (text, at most {MAX_COMMAND} characters)")
        return value
    if key == "fix":
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_FIX_ROUNDS:
            raise ValueError(f"a whole number from 0 to {MAX_FIX_ROUNDS}")
        return value
    if key == "allowed_domains":
        if not isinstance(value, list) or len(value) > MAX_DOMAINS or \
                not all(isinstance(d, str) and DOMAIN.match(d) for d in value):
            raise ValueError(f"a list of at most {MAX_DOMAINS} host names (example.com, *.example.com, host:port)")
        return [d.lower() for d in value]
    if key == "budget":
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0.01 <= value <= 10000:
            raise ValueError("an amount in USD from 0.01 to 10000")
        return float(value)
    if key == "branch_prefix":
        if not isinstance(value, str) or not is_safe_ref(value.rstrip("/") + "/x") or len(value) > 100:
            raise ValueError("a git branch name prefix (sesame/, bots/fix-)")
        return value
    if key == "instructions":
        if not isinstance(value, str) or len(value) > MAX_INSTRUCTIONS:
            raise ValueError(f"text of at most {MAX_INSTRUCTIONS} characters")
        return value
    raise ValueError("unknown")  # pragma: no cover (KEYS is checked first)


@dataclass(frozen=True)
class DomainPolicy:
    """Which of the repository's domains join the sandbox's allow list, and why the others do not."""

    added: tuple[str, ...]
    refused: tuple[str, ...]
    reason: str | None


def domains_within(config: RepoConfig, allow_additions: bool, denied: list[str]) -> DomainPolicy:
    """The server's policy wins: additions may be forbidden outright, and a denied domain never joins."""
    if not config.allowed_domains:
        return DomainPolicy((), (), None)
    if not allow_additions:
        return DomainPolicy((), config.allowed_domains, "this server does not let repositories add domains "
                                                        "(REPO_CONFIG_DOMAINS=false)")
    deny = {d.lower() for d in denied}
    refused = tuple(d for d in config.allowed_domains if d in deny or _host(d) in deny)
    added = tuple(d for d in config.allowed_domains if d not in refused)
    return DomainPolicy(added, refused, "on the server's deny list (SANDBOX_DENIED_DOMAINS)" if refused else None)


def _host(domain: str) -> str:
    return domain.rsplit(":", 1)[0] if re.search(r":[0-9]+$", domain) else domain


def trigger_choice(agent: str | None, model: str | None) -> dict[str, bool]:
    """What a session's context records of its trigger: whether it named the agent and the model. Every
    source (GitHub, Slack, the API and its form) records it here; the repository's defaults fill in only
    what it did not name (chosen)."""
    return {"agent_named": agent is not None, "model_named": model is not None}


def follow_up_choice(parent: Mapping[str, Any], agent: str | None, model: str | None) -> dict[str, bool]:
    """A follow-up names what it names; what it takes over from its parent counts as its parent's did."""
    return {"agent_named": agent is not None or parent.get("agent_named") is not False,
            "model_named": model is not None or _model_named(parent, None)}


def _model_named(context: Mapping[str, Any], model: str | None) -> bool:
    named = context.get("model_named")
    return model is not None if named is None else named is not False


def chosen(config: RepoConfig, agent: str, model: str | None, context: Mapping[str, Any]) -> tuple[str, str | None]:
    """The session's agent and model with the repository's defaults applied where its trigger named none.

    An agent or model the trigger named always wins. A named model also keeps the agent it was named for
    (it was checked against that one): the repository's agent applies only when neither was named. The
    repository's model goes with the repository's agent (or, with no agent in the file, with any). A
    session without the record (created before it existed) counts as having named its agent.
    """
    agent_named = context.get("agent_named") is not False
    model_named = _model_named(context, model)
    if config.agent and not agent_named and not model_named and config.agent != agent:
        agent, model = config.agent, None  # a model taken over (a follow-up's) belonged to the other agent
    if config.model and not model_named and config.agent in (None, agent):
        model = config.model
    return agent, model


AGENTS_READING_AGENTS_MD = frozenset({"codex", "amp", "opencode", "copilot", "command"})


def prompt_with(config: RepoConfig, prompt: str, agent: str) -> str:
    """The prompt with the repository's instructions, and AGENTS.md for an agent that does not read it."""
    parts = [prompt]
    if config.instructions and config.instructions.strip():
        parts.append(f"Instructions from the repository's {config.path}:\n{config.instructions.strip()}")
    if config.agents_md and agent not in AGENTS_READING_AGENTS_MD:
        parts.append(f"The repository's AGENTS.md:\n{config.agents_md.strip()}")
    return "\n\n".join(parts)


def branch_with_prefix(config: RepoConfig, branch: str) -> str:
    """The session's new branch under the repository's prefix (unchanged when it already has it)."""
    prefix = config.branch_prefix
    if not prefix:
        return branch
    tail = branch.split("/", 1)[1] if branch.startswith("sesame/") else branch
    named = branch if branch.startswith(prefix) else prefix + tail
    return named if is_safe_ref(named) else branch
