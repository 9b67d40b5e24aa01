"""Layered settings: environment > config file > built-in default, with locks."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import secrets
import shlex
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import json5
import tomlkit
import yaml

from bot.catalog import AGENT_NAMES
from bot.pricing import FORMAT_HINT, parse_prices

log = logging.getLogger(__name__)
CONFIG_NAMES = ("config.json", "config.yaml", "config.yml", "config.jsonc", "config.toml")
FALSE_WORDS = {"0", "false", "no", "off", ""}
TRUE_WORDS = {"1", "true", "yes", "on"}


class SettingsError(Exception):
    """A setting is missing or malformed; the message names the key and the fix."""

    def __init__(self, key: str, problem: str, fix: str) -> None:
        super().__init__(f"{key}: {problem}. {fix}")
        self.key, self.problem, self.fix = key, problem, fix


@dataclass(frozen=True)
class Key:
    """One setting: its name, environment names, config path, default and type."""

    name: str
    env: tuple[str, ...] = ()
    path: str | None = None
    default: Any = None
    kind: str = "str"  # str | bool | int | float | size | list | map | argv
    secret: bool = False
    help: str = ""
    minimum: float | None = None  # int and float kinds: the smallest value allowed
    maximum: float | None = None
    choices: tuple[str, ...] = ()  # the only values allowed (compared in lower case)
    url: bool = False  # an http(s) URL with a host
    live: bool = True  # a change in the config file applies without a restart


def _k(name: str, *env: str, path: str | None = None, default: Any = None, kind: str = "str",
       secret: bool = False, help: str = "", minimum: float | None = None, maximum: float | None = None,
       choices: tuple[str, ...] = (), url: bool = False, live: bool = True) -> Key:
    return Key(name, env or (name,), path, default, kind, secret, help, minimum, maximum, choices, url, live)


# Providers that exist; the seed's docker, e2b, daytona and vercel join when they are built.
SANDBOX_PROVIDERS = ("local",)
# Which repositories POST /api/session may name (bot/session_input.py): auto is `any` in the embedded
# single-machine mode and `installed` with PostgreSQL.
API_REPO_POLICIES = ("auto", "installed", "local", "any")


KEYS: tuple[Key, ...] = (
    _k("BASE_URL", url=True, help="public URL of this server; links in comments point here"),
    _k("HOST", default="127.0.0.1", help="address `sesame serve` listens on"),
    _k("PORT", default=13531, kind="int", minimum=1, maximum=65535, help="port `sesame serve` listens on"),
    _k("SESAME_DATA_DIR", default=".sesame", help="data dir: SQLite database, key file, mirrors, agents"),
    _k("ENCRYPTION_KEY", secret=True, help="64 hex characters (32 bytes) sealing stored credentials"),
    _k("ENCRYPTION_KEY_PREVIOUS", secret=True, kind="list",
       help="older keys (comma separated) still accepted for reading, for rotation"),
    _k("DATABASE_URL", secret=True,
       help="postgresql://... (production) or sqlite:///path; default SQLite in the data dir"),
    _k("REDIS_URL", secret=True, help="redis://... for the arq queue; without it sessions run in-process"),
    _k("INLINE_CONCURRENCY", default=2, kind="int", path="sessions.inlineConcurrency", minimum=1, maximum=256,
       live=False, help="sessions run at once by the in-process queue"),
    _k("SESSION_TIMEOUT", default=3600, kind="int", path="sessions.timeoutSeconds", minimum=1, maximum=7 * 86400,
       help="seconds an agent may run before it is stopped"),
    _k("SESSION_BUDGET_USD", kind="float", path="sessions.budgetUsd", minimum=0.01,
       help="the most a session may spend on its model API, in USD, unless its trigger says `--budget N`; "
            "none by default"),
    _k("MODEL_PRICES", path="sessions.modelPrices", default={}, kind="map",
       help="prices that price a session's budget, per model, added to or replacing the built-in table "
            "(bot/pricing.py): model=IN/OUT in USD per million input and output tokens, comma separated "
            "(my-model=1.5/6,gpt-5=1.25/10)"),
    _k("INTAKE_GITHUB_TIMEOUT", default=2.0, kind="float", path="github.intakeTimeoutSeconds", minimum=0.1, maximum=9,
       help="seconds a webhook waits for GitHub's permission answer; slower, the job's own check decides"),
    _k("SWEEP_INTERVAL", default=30, kind="int", path="sessions.sweepIntervalSeconds", minimum=5, maximum=60,
       live=False, help="seconds between sweeps (a divisor of 60): pending sessions whose job was lost (a Redis "
                        "restart without persistence) are enqueued again, dead workers' sessions retried"),
    _k("SWEEP_PENDING_GRACE", default=30, kind="int", path="sessions.sweepPendingGraceSeconds", minimum=1,
       maximum=3600, help="seconds a pending session may wait for its job before a sweep enqueues it again"),
    _k("DB_OUTAGE_GRACE", default=300, kind="int", path="sessions.databaseOutageGraceSeconds", minimum=0,
       help="seconds a worker keeps retrying a session's writes (events, its final state) while the "
            "database is unreachable"),
    _k("SESSION_LEASE_SECONDS", default=90, kind="int", path="sessions.leaseSeconds", minimum=3, maximum=86400,
       help="seconds a worker holds a session without renewing; a dead worker's session is retried after it"),
    _k("SESSION_MAX_ATTEMPTS", default=3, kind="int", path="sessions.maxAttempts", minimum=1, maximum=100,
       help="runs of a session whose worker died before it ends in error"),
    _k("WORKER_CONCURRENCY", default=4, kind="int", path="worker.concurrency", minimum=1, maximum=256, live=False,
       help="sessions one `sesame worker` runs at once"),
    _k("REPO_CONCURRENCY", default=0, kind="int", path="sessions.repoConcurrency", minimum=0,
       help="sessions of one repository running at once across all workers (0: no limit); more wait"),
    _k("INSTALLATION_CONCURRENCY", default=0, kind="int", path="sessions.installationConcurrency", minimum=0,
       help="sessions of one GitHub account's repositories (one App installation) running at once across "
            "all workers (0: no limit); more wait"),
    _k("WORKER_SHUTDOWN_GRACE", default=30, kind="int", path="worker.shutdownGraceSeconds", minimum=0,
       help="seconds a stopping worker (or `sesame serve`'s in-process queue) lets running sessions finish "
            "before it hands them back"),
    _k("AI_API_KEY", "AI_API_KEY", "OPENAI_API_KEY", path="ai.apiKey", secret=True,
       help="API key of the utility model (titles, branch names, commit messages)"),
    _k("AI_BASE_URL", path="ai.baseUrl", default="https://api.openai.com/v1", url=True),
    _k("AI_MODEL", path="ai.model", default="gpt-5-nano"),
    _k("SESSION_DIR_BASE", "SESSION_DIR_BASE", "TASK_DIR_BASE", path="sessions.baseDirectory", live=False,
       default="/tmp/sesame", help="where session workspaces are created"),
    _k("SANDBOX_PROVIDER", path="sandboxProvider.type", default="local", choices=SANDBOX_PROVIDERS),
    _k("SANDBOX_SECURITY_ENABLED", path="sandbox.security.enabled", default=True, kind="bool"),
    _k("SANDBOX_ALLOWED_DOMAINS", path="sandbox.allowedDomains", default=[], kind="list"),
    _k("SANDBOX_DENIED_DOMAINS", path="sandbox.deniedDomains", default=[], kind="list"),
    _k("SANDBOX_UID_RANGE", path="sandbox.uidRange", default="200000-299999", live=False,
       help="host uids sessions run as, one per session (FIRST-LAST); used when the worker runs as root"),
    _k("SANDBOX_UID_DIR", path="sandbox.uidDirectory", default="/var/lib/sesame/sandbox-uids", live=False,
       help="where a host's workers claim session uids (one symlink per uid to its workspace)"),
    _k("SANDBOX_MAX_PROCESSES", path="sandbox.limits.maxProcesses", default=1024, kind="int", minimum=1,
       help="processes (and threads) one session's sandbox may run at once"),
    _k("SANDBOX_MEMORY_LIMIT", path="sandbox.limits.memory", default="4g", kind="size",
       help="memory of one session's sandbox, tmpfs files included (e.g. 4g, 512m)"),
    _k("SANDBOX_CPU_SHARE", path="sandbox.limits.cpuShare", default=1.0, kind="float", minimum=0.01,
       help="CPU time of one session's sandbox, in cores (0.5: half a core)"),
    _k("SANDBOX_TMPFS_SIZE", path="sandbox.limits.tmpfsSize", default="256m", kind="size",
       help="size of every tmpfs the sandbox mounts, /dev/shm included"),
    _k("SANDBOX_DISK_LIMIT", path="sandbox.limits.disk", default="10g", kind="size",
       help="disk used by a session's project, HOME and tmp; a watchdog stops the session past it"),
    _k("SANDBOX_PROXY_HEAD_TIMEOUT", path="sandbox.proxy.headTimeoutSeconds", default=10.0, kind="float",
       minimum=0.1,
       help="seconds a connection to the egress proxy has to send its request"),
    _k("SANDBOX_PROXY_MAX_CONNECTIONS", path="sandbox.proxy.maxConnections", default=64, kind="int", minimum=1,
       help="egress proxy connections one session may hold open; more are refused as violations"),
    _k("SANDBOX_PROXY_IDLE_TIMEOUT", path="sandbox.proxy.idleTimeoutSeconds", default=300.0, kind="float",
       minimum=0.1,
       help="seconds a proxied connection may carry nothing before it is cut"),
    _k("GIT_INCLUDE_CO_AUTHORED_BY", path="git.includeCoAuthoredBy", default=True, kind="bool"),
    _k("GIT_MAX_FILE_SIZE_MB", path="git.maxFileSizeMb", default=100, kind="int", minimum=1,
       help="largest file a session commits and pushes, in MiB (GitHub refuses files over 100 MiB)"),
    _k("AUTH_PASSWORD", secret=True, help="HTTP Basic password for the API and pages"),
    _k("API_REPOS", path="api.repos", default="auto", choices=API_REPO_POLICIES,
       help="repositories the API may start sessions on: installed (owner/name where the GitHub App is "
            "installed), local (and absolute paths of git repositories here), any (and clone URLs); "
            "auto: any with the embedded SQLite, installed with PostgreSQL"),
    _k("SESAME_API_URL", path="sesameApi.baseUrl", default="https://api.sesame.works", url=True),
    _k("GITHUB_APP_ID"),
    _k("GITHUB_PRIVATE_KEY", secret=True),
    _k("GITHUB_PRIVATE_KEY_PATH"),
    _k("GITHUB_WEBHOOK_SECRET", secret=True),
    _k("GITHUB_APP_SLUG", path="github.appSlug", default="sesame", live=False),
    _k("GITHUB_API_URL", path="github.apiUrl", default="https://api.github.com", url=True, live=False),
    _k("GITHUB_ALLOW_FORK_PULL_REQUESTS", path="github.allowForkPullRequests", default=False, kind="bool"),
    _k("GITHUB_PAT", secret=True, help="personal access token whose identity authors commits"),
    _k("SLACK_SIGNING_SECRET", secret=True),
    _k("SLACK_BOT_TOKEN", secret=True),
    _k("SLACK_API_URL", path="slack.apiUrl", default="https://slack.com/api/", url=True, live=False),
    _k("SLACK_ALLOWED_USERS", path="slack.allowedUsers", default=[], kind="list",
       help="Slack user ids allowed to trigger (empty: everyone); listed users may also stop others' sessions"),
    _k("SLACK_ALLOWED_CHANNELS", path="slack.allowedChannels", default=[], kind="list",
       help="Slack channel ids Sesame runs in (empty: every channel)"),
    _k("SLACK_USER_MAP", path="slack.githubIdentities", default={}, kind="map",
       help="Slack user id -> GitHub login the user acts as (U123=octocat,U456=hubot); commits follow it"),
    _k("SESAME_DEFAULT_AGENT", path="agents.default", default="claude", choices=AGENT_NAMES),
    _k("ANTHROPIC_API_KEY", secret=True),
    _k("CLAUDE_CODE_OAUTH_TOKEN", secret=True),
    _k("ANTHROPIC_BASE_URL", path="agents.claude.baseUrl", url=True),
    _k("CLAUDE_MODEL", path="agents.claude.model"),
    # OPENAI_API_KEY is read twice, as the seed lists it: Codex's system key here, and above the
    # utility model's key when AI_API_KEY is unset.
    _k("CODEX_API_KEY", secret=True, help="Codex's key from the server, before OPENAI_API_KEY"),
    _k("OPENAI_API_KEY", secret=True,
       help="Codex's key from the server (it gets it as CODEX_API_KEY); also the utility model's without AI_API_KEY"),
    _k("OPENAI_BASE_URL", path="agents.codex.baseUrl", url=True),
    _k("CODEX_MODEL", path="agents.codex.model"),
    _k("GEMINI_API_KEY", secret=True),
    _k("GEMINI_BASE_URL", path="agents.gemini.baseUrl", url=True),
    _k("GEMINI_MODEL", path="agents.gemini.model"),
    _k("COPILOT_GITHUB_TOKEN", secret=True),
    _k("GH_TOKEN", secret=True),
    _k("GITHUB_TOKEN", secret=True),
    _k("COPILOT_MODEL", path="agents.copilot.model"),
    _k("COPILOT_PROVIDER_BASE_URL", path="agents.copilot.baseUrl", url=True,
       help="OpenAI chat-completions endpoint Copilot CLI uses instead of GitHub (bring your own key)"),
    _k("COPILOT_PROVIDER_API_KEY", secret=True, help="key for COPILOT_PROVIDER_BASE_URL"),
    _k("AMP_API_KEY", secret=True),
    _k("AMP_URL", path="agents.amp.baseUrl", url=True),
    _k("OPENCODE_PROVIDER_BASE_URL", path="agents.opencode.baseUrl", url=True,
       help="OpenAI-compatible endpoint Sesame writes into opencode's config as its provider"),
    _k("OPENCODE_MODEL", path="agents.opencode.model"),
    _k("OPENCODE_PROVIDER_API_KEY", secret=True, help="key for OPENCODE_PROVIDER_BASE_URL"),
    _k("AGENT_COMMAND", path="agents.command.command", kind="argv",
       help="the `command` agent's command line: a list of arguments, or text split as a shell would"),
    # issue 18: metrics, JSON logs, repository config
    _k("METRICS_DIR", path="metrics.directory", live=False,
       help="where each process writes its Prometheus counts, merged at a scrape of /metrics; processes on "
            "one machine share it (default: metrics in the data dir)"),
    _k("LOG_FORMAT", path="logging.format", default="text", choices=("text", "json"), live=False,
       help="text, or json: one JSON object per log line, with the session id on every line of a session"),
    _k("REPO_CONFIG", path="repositories.config", default=True, kind="bool",
       help="read a repository's .github/sesame.yml (or .sesame.yml) from its base branch: agent, model, setup "
            "and test commands, domains, budget, branch prefix, instructions"),
    _k("REPO_CONFIG_DOMAINS", path="repositories.allowDomains", default=True, kind="bool",
       help="let a repository's config add domains to the sandbox's allow list (the deny list always wins)"),
)
KEYS_BY_NAME = {k.name: k for k in KEYS}
HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
SIZE = re.compile(r"^([0-9]+)\s*([kmgt]?)(?:i?b)?$", re.IGNORECASE)
SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(name: str, value: Any) -> int:
    """A positive size in bytes from 4g, 512m, 1024k or a plain number of bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        match = SIZE.match(str(value).strip())
        if match is None:
            raise SettingsError(name, f"{value!r} is not a size",
                                "Write a whole number with an optional unit k, m, g or t, e.g. 4g or 512m")
        size = int(match.group(1)) * SIZE_UNITS[match.group(2).lower()]
    if size <= 0:
        raise SettingsError(name, f"{value!r} is not a positive size", "Give a size above zero, e.g. 4g")
    return size


def coerce(key: Key, value: Any) -> Any:
    """Turn a raw env/config value into the key's type and check its range, choices or URL form;
    SettingsError names the key and the values it takes."""
    return check(key, convert(key, value))


def check(key: Key, value: Any) -> Any:
    """value (already of the key's type) if it is in range, one of the choices, a URL; else SettingsError."""
    if value is None:
        return None
    if key.kind in ("int", "float"):
        low, high = key.minimum, key.maximum
        if (low is not None and value < low) or (high is not None and value > high):
            span = (f"from {low:g} to {high:g}" if low is not None and high is not None
                    else f"of at least {low:g}" if low is not None else f"of at most {high:g}")
            raise SettingsError(key.name, f"{value:g} is out of range", f"Give a number {span}")
    if key.choices:
        word = str(value).strip().lower()
        if word not in key.choices:
            raise SettingsError(key.name, f"{value!r} is not one of its values",
                                f"Use one of: {', '.join(key.choices)}")
        return word
    if key.url:
        parts = urlsplit(str(value).strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SettingsError(key.name, f"{value!r} is not an http(s) URL",
                                "Give a URL with its scheme and host, e.g. https://api.example.com")
    return value


def convert(key: Key, value: Any) -> Any:
    """Turn a raw env/config value into the key's type or raise SettingsError."""
    if value is None:
        return None
    if key.kind == "bool":
        if isinstance(value, bool):
            return value
        word = str(value).strip().lower()
        if word in TRUE_WORDS | FALSE_WORDS:
            return word in TRUE_WORDS
        raise SettingsError(key.name, f"{value!r} is not a boolean", "Use true or false")
    if key.kind == "size":
        return parse_size(key.name, value)
    if key.kind in ("int", "float"):
        number: int | float | None
        try:
            number = int(value) if key.kind == "int" else float(value)
        except (TypeError, ValueError, OverflowError):
            number = None
        if number is None or isinstance(value, bool) or (isinstance(number, float) and not math.isfinite(number)):
            raise SettingsError(key.name, f"{value!r} is not a number",
                                "Give a whole number" if key.kind == "int" else "Give a number, e.g. 1.5")
        return number
    if key.kind == "map":
        if isinstance(value, str):
            pairs = [part.split("=", 1) for part in value.split(",") if part.strip()]
            if any(len(p) != 2 for p in pairs):
                raise SettingsError(key.name, f"{value!r} is not a list of KEY=VALUE pairs",
                                    "Write it as U123=octocat,U456=hubot")
            return {k.strip(): v.strip() for k, v in pairs}
        if isinstance(value, dict):
            return {str(k): str(v) for k, v in value.items()}
        raise SettingsError(key.name, f"{value!r} is not a mapping", "Give an object or KEY=VALUE pairs")
    if key.kind == "list":
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list):
            return [str(v) for v in value]
        raise SettingsError(key.name, f"{value!r} is not a list", "Give a list or comma-separated text")
    if key.kind == "argv":
        return _argv(key.name, value)
    if isinstance(value, (dict, list)):
        raise SettingsError(key.name, "expected text, got a structure", "Give a plain value")
    return str(value)


def _argv(name: str, value: Any) -> str | list[str]:
    """A command line: a list of text arguments as it is, or text a shell would split."""
    if isinstance(value, list) and value and all(isinstance(arg, (str, int, float)) for arg in value):
        return [str(arg) for arg in value]
    if isinstance(value, str) and value.strip():
        try:
            shlex.split(value)
        except ValueError as exc:
            raise SettingsError(name, f"{value!r} does not split into arguments ({exc})",
                                "Close the quote, or give a list such as [\"python3\", \"agent.py\"]") from None
        return value
    raise SettingsError(name, f"{value!r} is not a command line",
                        "Give a list of arguments such as [\"python3\", \"agent.py\"] or their text")


def find_config_file(cwd: Path, env: Mapping[str, str]) -> Path | None:
    """The config file in use: SESAME_CONFIG, else the first known name in cwd."""
    if env.get("SESAME_CONFIG"):
        return Path(env["SESAME_CONFIG"])
    for name in CONFIG_NAMES:
        if (cwd / name).is_file():
            return cwd / name
    return None


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse a config file by its extension; a malformed file raises SettingsError."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError("SESAME_CONFIG", f"cannot read {path} ({exc.strerror})",
                            "Fix the path or the file's permissions") from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            data = json.loads(text) if text.strip() else {}
        elif suffix == ".jsonc":
            data = json5.loads(text) if text.strip() else {}
        elif suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        elif suffix == ".toml":
            data = tomllib.loads(text)
        else:
            raise SettingsError("SESAME_CONFIG", f"{path.name} has an unknown format",
                                "Use .json, .yaml, .jsonc or .toml")
    except SettingsError:
        raise
    except Exception as exc:  # each parser has its own error type
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SettingsError(str(path), f"malformed config file ({first})",
                            "Fix the syntax or remove the file") from None
    if not isinstance(data, dict):
        raise SettingsError(str(path), "the config file must hold an object at the top level",
                            "Wrap the keys in {...}")
    return data


def config_get(data: Mapping[str, Any], path: str) -> Any:
    """Look up a dotted path such as ai.apiKey in nested config data."""
    node: Any = data
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


class SettingValues:
    """The type of every setting, as `Settings.NAME` returns it (sizes in bytes); unset is None.

    tests/test_settings.py checks this against KEYS and against loaded values, so a key added to
    KEYS needs its line here, and a misspelt `settings.NAME` fails mypy.
    """

    BASE_URL: str | None
    HOST: str
    PORT: int
    SESAME_DATA_DIR: str
    ENCRYPTION_KEY: str | None
    ENCRYPTION_KEY_PREVIOUS: list[str] | None
    DATABASE_URL: str | None
    REDIS_URL: str | None
    INLINE_CONCURRENCY: int
    SESSION_TIMEOUT: int
    SESSION_BUDGET_USD: float | None
    MODEL_PRICES: dict[str, str]
    INTAKE_GITHUB_TIMEOUT: float
    SWEEP_INTERVAL: int
    SWEEP_PENDING_GRACE: int
    DB_OUTAGE_GRACE: int
    SESSION_LEASE_SECONDS: int
    SESSION_MAX_ATTEMPTS: int
    WORKER_CONCURRENCY: int
    REPO_CONCURRENCY: int
    INSTALLATION_CONCURRENCY: int
    WORKER_SHUTDOWN_GRACE: int
    AI_API_KEY: str | None
    AI_BASE_URL: str
    AI_MODEL: str
    SESSION_DIR_BASE: str
    SANDBOX_PROVIDER: str
    SANDBOX_SECURITY_ENABLED: bool
    SANDBOX_ALLOWED_DOMAINS: list[str]
    SANDBOX_DENIED_DOMAINS: list[str]
    SANDBOX_UID_RANGE: str
    SANDBOX_UID_DIR: str
    SANDBOX_MAX_PROCESSES: int
    SANDBOX_MEMORY_LIMIT: int
    SANDBOX_CPU_SHARE: float
    SANDBOX_TMPFS_SIZE: int
    SANDBOX_DISK_LIMIT: int
    SANDBOX_PROXY_HEAD_TIMEOUT: float
    SANDBOX_PROXY_MAX_CONNECTIONS: int
    SANDBOX_PROXY_IDLE_TIMEOUT: float
    GIT_INCLUDE_CO_AUTHORED_BY: bool
    GIT_MAX_FILE_SIZE_MB: int
    AUTH_PASSWORD: str | None
    API_REPOS: str
    SESAME_API_URL: str
    GITHUB_APP_ID: str | None
    GITHUB_PRIVATE_KEY: str | None
    GITHUB_PRIVATE_KEY_PATH: str | None
    GITHUB_WEBHOOK_SECRET: str | None
    GITHUB_APP_SLUG: str
    GITHUB_API_URL: str
    GITHUB_ALLOW_FORK_PULL_REQUESTS: bool
    GITHUB_PAT: str | None
    SLACK_SIGNING_SECRET: str | None
    SLACK_BOT_TOKEN: str | None
    SLACK_API_URL: str
    SLACK_ALLOWED_USERS: list[str]
    SLACK_ALLOWED_CHANNELS: list[str]
    SLACK_USER_MAP: dict[str, str]
    SESAME_DEFAULT_AGENT: str
    ANTHROPIC_API_KEY: str | None
    CLAUDE_CODE_OAUTH_TOKEN: str | None
    ANTHROPIC_BASE_URL: str | None
    CLAUDE_MODEL: str | None
    CODEX_API_KEY: str | None
    OPENAI_API_KEY: str | None
    OPENAI_BASE_URL: str | None
    CODEX_MODEL: str | None
    GEMINI_API_KEY: str | None
    GEMINI_BASE_URL: str | None
    GEMINI_MODEL: str | None
    COPILOT_GITHUB_TOKEN: str | None
    GH_TOKEN: str | None
    GITHUB_TOKEN: str | None
    COPILOT_MODEL: str | None
    COPILOT_PROVIDER_BASE_URL: str | None
    COPILOT_PROVIDER_API_KEY: str | None
    AMP_API_KEY: str | None
    AMP_URL: str | None
    OPENCODE_PROVIDER_BASE_URL: str | None
    OPENCODE_MODEL: str | None
    OPENCODE_PROVIDER_API_KEY: str | None
    AGENT_COMMAND: str | list[str] | None
    METRICS_DIR: str | None
    LOG_FORMAT: str
    REPO_CONFIG: bool
    REPO_CONFIG_DOMAINS: bool


@dataclass
class Settings(SettingValues):
    """Resolved settings with where each value came from."""

    values: dict[str, Any]
    sources: dict[str, str]  # name -> env:VAR | config | default
    config_path: Path | None = None
    warnings: list[str] = field(default_factory=list)
    env: Mapping[str, str] | None = field(default=None, repr=False)  # what load_settings read; None: os.environ
    cwd: Path | None = None  # where a config file is looked for when SESAME_CONFIG is unset
    restart_pending: dict[str, Any] = field(default_factory=dict)  # key -> value the file holds, not yet in force
    _seen: tuple[int, int, int] | None = field(default=None, repr=False)  # the config file's stat at last read
    _checked: float = field(default=0.0, repr=False)

    def refresh(self, min_interval: float = 1.0) -> list[str]:
        """Re-read the config file if it changed (at most every min_interval seconds) and apply what
        may change without a restart; returns the names that changed. A file that does not load is
        logged and ignored: the values in force stay."""
        now = time.monotonic()
        if now - self._checked < min_interval:
            return []
        self._checked = now
        env = os.environ if self.env is None else self.env
        path = self.config_path or find_config_file(self.cwd or Path.cwd(), env)
        if path is None:
            return []
        try:
            st = path.stat()
        except OSError:
            return []
        seen = (st.st_ino, st.st_size, st.st_mtime_ns)
        if seen == self._seen and path == self.config_path:
            return []
        try:
            values, sources = resolve(env, read_config_file(path))
            values["SESAME_DATA_DIR"] = self.values.get("SESAME_DATA_DIR", values["SESAME_DATA_DIR"])
            fresh = Settings(values, sources, path)
            validate(fresh)
        except SettingsError as exc:
            log.warning("the config file %s changed but does not load, so nothing of it applies: %s", path, exc)
            self._seen = seen
            return []
        self._seen = seen
        return self.apply(fresh)

    def apply(self, fresh: Settings) -> list[str]:
        """Take fresh's values for the keys that may change while running; the others wait for a
        restart (listed in restart_pending). Returns the names that changed now."""
        changed = []
        for key in KEYS:
            new, old = fresh.values.get(key.name), self.values.get(key.name)
            if key.live:
                if new != old:
                    changed.append(key.name)
                self.values[key.name], self.sources[key.name] = new, fresh.sources.get(key.name, "default")
            elif new != old:
                self.restart_pending[key.name] = new
            else:
                self.restart_pending.pop(key.name, None)
        self.config_path = fresh.config_path
        if changed:
            log.info("settings changed in %s: %s", self.config_path, ", ".join(changed))
        return changed

    if not TYPE_CHECKING:  # mypy reads the SettingValues declarations instead
        def __getattr__(self, name: str) -> Any:
            if name not in KEYS_BY_NAME:
                raise AttributeError(name)
            return self.__dict__["values"].get(name)  # a hand-built Settings may hold only some keys

    def get(self, name: str, default: Any = None) -> Any:
        value = self.values.get(name)
        return default if value is None else value

    def locked(self, name: str) -> bool:
        return self.sources.get(name, "").startswith("env:")

    @property
    def data_dir(self) -> Path:
        return Path(self.values["SESAME_DATA_DIR"]).resolve()

    @property
    def metrics_dir(self) -> Path:
        return Path(self.values.get("METRICS_DIR") or self.data_dir / "metrics").resolve()

    @property
    def database_url(self) -> str:
        return self.values.get("DATABASE_URL") or f"sqlite:///{self.data_dir / 'sesame.db'}"

    @property
    def embedded(self) -> bool:
        """True when running the single-machine default (SQLite)."""
        return not self.database_url.startswith(("postgres", "postgresql"))

    @property
    def secret_values(self) -> list[str]:
        """Every secret value, for redaction."""
        found: list[str] = []
        for key in KEYS:
            value = self.values.get(key.name)
            if key.secret and value:
                found.extend(value if isinstance(value, list) else [str(value)])
        return [v for v in found if len(v) >= 6]

    def github_private_key_configured(self) -> bool:
        return bool(self.get("GITHUB_PRIVATE_KEY") or self.get("GITHUB_PRIVATE_KEY_PATH"))

    def github_private_key(self) -> str | None:
        """The App's private key, inline or read from its path."""
        if self.values.get("GITHUB_PRIVATE_KEY"):
            return str(self.values["GITHUB_PRIVATE_KEY"]).replace("\\n", "\n")
        path = self.values.get("GITHUB_PRIVATE_KEY_PATH")
        return Path(path).read_text() if path else None

    def public(self) -> dict[str, dict[str, Any]]:
        """Settings for the API: secrets masked, locks marked."""
        out = {}
        for key in KEYS:
            value = self.values.get(key.name)
            if key.secret:
                value = "********" if value else None
            out[key.name] = {"value": value, "locked": self.locked(key.name),
                             "source": self.sources.get(key.name), "configPath": key.path,
                             "env": list(key.env), "live": key.live,
                             "restartPending": key.name in self.restart_pending}
        return out


def resolve(env: Mapping[str, str], config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Merge env, config and defaults (pure)."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key in KEYS:
        env_name = next((e for e in key.env if env.get(e) not in (None, "")), None)
        if env_name:
            values[key.name], sources[key.name] = coerce(key, env[env_name]), f"env:{env_name}"
        elif key.path and config_get(config, key.path) is not None:
            values[key.name], sources[key.name] = coerce(key, config_get(config, key.path)), "config"
        else:  # sizes are written as the user would (4g) and kept in bytes like the others
            default = coerce(key, key.default) if key.kind == "size" else key.default
            values[key.name], sources[key.name] = default, "default"
    return values, sources


def load_settings(env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Settings:
    """Read settings from the environment and the config file, and validate them."""
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else cwd
    path = find_config_file(cwd, env)
    config = read_config_file(path) if path else {}
    values, sources = resolve(env, config)
    settings = Settings(values, sources, path, env=env, cwd=cwd)
    if path is not None:
        _guard_secrets_in_file(settings, path)
    if path is not None:
        with contextlib.suppress(OSError):
            st = path.stat()
            settings._seen = (st.st_ino, st.st_size, st.st_mtime_ns)
    if not Path(values["SESAME_DATA_DIR"]).is_absolute():
        values["SESAME_DATA_DIR"] = str((cwd / values["SESAME_DATA_DIR"]).resolve())
    validate(settings)
    return settings


def _guard_secrets_in_file(settings: Settings, path: Path) -> None:
    """A secret already in the config file stays readable, but the file is made 0600 and a warning says
    to move it (the settings API stores secrets sealed in the database)."""
    held = [key.name for key in KEYS if key.secret and settings.sources.get(key.name) == "config"]
    if not held:
        return
    try:
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            path.chmod(0o600)
            note = f"its mode was {mode:o} and is now 600"
        else:
            note = "its mode is already 600"
    except OSError as exc:
        note = f"its mode could not be tightened ({exc.strerror})"
    message = (f"{path} holds the secret {', '.join(held)} in plain text ({note}): move it to the environment "
               "or set it through the settings API, which stores it sealed, and delete it from the file")
    settings.warnings.append(message)
    log.warning("%s", message)


def validate(settings: Settings) -> None:
    """Raise SettingsError for the first invalid or missing value."""
    key = settings.get("ENCRYPTION_KEY")
    if key is not None and not HEX64.match(key):
        raise SettingsError("ENCRYPTION_KEY", f"must be 64 hex characters (32 bytes), got {len(key)} characters",
                            "Generate one with `openssl rand -hex 32`")
    for old in settings.get("ENCRYPTION_KEY_PREVIOUS", []):
        if not HEX64.match(old):
            raise SettingsError("ENCRYPTION_KEY_PREVIOUS", "every previous key must be 64 hex characters",
                                "Remove or fix the malformed entry")
    url = settings.database_url
    if not url.startswith(("sqlite", "postgres")):
        raise SettingsError("DATABASE_URL", f"unsupported scheme in {url.split(':')[0]!r}",
                            "Use postgresql://user@host/db or sqlite:///path")
    if not settings.embedded:
        for name, fix in (("BASE_URL", "Set it to this server's public URL, e.g. https://sesame.example.com"),
                          ("ENCRYPTION_KEY", "Generate one with `openssl rand -hex 32`")):
            if not settings.get(name):
                raise SettingsError(name, "is required when DATABASE_URL names PostgreSQL", fix)
    for key in KEYS:  # a hand-built Settings or a default is checked as a file's value would be
        check(key, settings.values.get(key.name))
    if settings.get("GITHUB_APP_ID") and not settings.github_private_key_configured():
        raise SettingsError("GITHUB_PRIVATE_KEY", "is required when GITHUB_APP_ID is set",
                            "Set GITHUB_PRIVATE_KEY or GITHUB_PRIVATE_KEY_PATH to the App's .pem")
    parse_uid_range(settings.get("SANDBOX_UID_RANGE"))
    interval = settings.values.get("SWEEP_INTERVAL")
    if interval and 60 % int(interval):
        raise SettingsError("SWEEP_INTERVAL", f"{interval} does not divide a minute",
                            "Use one of: 5, 6, 10, 12, 15, 20, 30, 60")
    try:
        parse_prices(settings.get("MODEL_PRICES"))
    except ValueError as exc:
        raise SettingsError("MODEL_PRICES", str(exc), FORMAT_HINT) from None
    key_path = settings.get("GITHUB_PRIVATE_KEY_PATH")
    if key_path and not Path(key_path).is_file():
        raise SettingsError("GITHUB_PRIVATE_KEY_PATH", f"{key_path} does not exist", "Point it at the App's .pem file")


def parse_uid_range(text: str | None) -> tuple[int, int]:
    """SANDBOX_UID_RANGE as (first, last): FIRST-LAST, upwards, from 1000 on, within 32 bits."""
    first, sep, last = str(text or "").strip().partition("-")
    if sep and first.strip().isdigit() and last.strip().isdigit() and 1000 <= int(first) <= int(last) < 2**32 - 1:
        return int(first), int(last)
    raise SettingsError("SANDBOX_UID_RANGE", f"{text!r} is not a range of uids",
                        "Write FIRST-LAST, e.g. 200000-299999, with no uid of a real user in it")



def ensure_encryption_key(settings: Settings, warn: Callable[[str], None]) -> str:
    """The encryption key; in the embedded default, a generated key file (0600)."""
    if settings.get("ENCRYPTION_KEY"):
        return str(settings.ENCRYPTION_KEY)
    if not settings.embedded:
        raise SettingsError("ENCRYPTION_KEY", "is required", "Generate one with `openssl rand -hex 32`")
    path = settings.data_dir / "encryption.key"
    if path.exists():
        key = path.read_text().strip()
        if not HEX64.match(key):
            raise SettingsError("ENCRYPTION_KEY", f"the key file {path} is malformed",
                                "Restore it from a backup or set ENCRYPTION_KEY")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_hex(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(key + "\n")
        warn(f"ENCRYPTION_KEY is not set: generated {path} (mode 0600). Back it up, "
             "or set ENCRYPTION_KEY for production.")
    settings.values["ENCRYPTION_KEY"] = key
    settings.sources["ENCRYPTION_KEY"] = f"file:{path}"
    return key


def config_path_set(data: dict[str, Any], path: str, value: Any) -> None:
    """Set a dotted path in nested config data, creating tables as needed."""
    parts = path.split(".")
    node = data
    for part in parts[:-1]:
        if part not in node or not isinstance(node[part], dict):
            node[part] = tomlkit.table() if isinstance(node, tomlkit.TOMLDocument | tomlkit.items.Table) else {}
        node = node[part]
    if value is None:
        node.pop(parts[-1], None)
    else:
        node[parts[-1]] = value


def write_config(path: Path, updates: Mapping[str, Any], settings: Settings,
                 env: Mapping[str, str] | None = None) -> Settings:
    """Apply key updates to the config file, keeping its format and comments, and return the settings
    that result. Unknown, environment-only and locked keys are refused, and so is any value that would
    not load: the whole result is validated before a byte is written."""
    for name in updates:
        key = KEYS_BY_NAME.get(name)
        if key is None:
            raise SettingsError(name, "is not a setting", "See `sesame settings --keys` for every name")
        if not key.path:
            raise SettingsError(name, "can only be set in the environment",
                                f"Set {' or '.join(key.env)} where the server starts")
        if key.secret:
            raise SettingsError(name, "is a secret and never goes into the config file",
                                "Set it through the settings API (stored sealed) or the environment")
        if settings.locked(name):
            raise SettingsError(name, f"is locked by the environment ({settings.sources[name][4:]})",
                                "Change the environment variable and restart")
    suffix = path.suffix.lower()
    text = path.read_text() if path.exists() else ""
    doc = _parse_for_update(suffix, text)
    for name, value in updates.items():
        key = KEYS_BY_NAME[name]
        assert key.path is not None  # checked above
        config_path_set(doc, key.path, coerce(key, value))
    values, sources = resolve(os.environ if env is None else env, doc)
    values["SESAME_DATA_DIR"] = settings.values.get("SESAME_DATA_DIR", values["SESAME_DATA_DIR"])
    fresh = Settings(values, sources, path, list(settings.warnings))
    validate(fresh)
    out = _jsonc_edit(text, updates, doc) if suffix == ".jsonc" else None
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(out if out is not None else _dump_for_update(suffix, doc))
    tmp.replace(path)
    return fresh


def _jsonc_edit(text: str, updates: Mapping[str, Any], doc: Any) -> str | None:
    """The JSONC text with the updates spliced in, comments kept; None (write it plainly) in the unlikely
    case the edit does not read back as the values the whole file must hold."""
    from bot.jsonc import JsoncError, set_path

    out = text
    try:
        for name, value in updates.items():
            key = KEYS_BY_NAME[name]
            assert key.path is not None
            out = set_path(out, key.path, coerce(key, value))
        if json5.loads(out) == json.loads(json.dumps(doc)):
            return out
    except (JsoncError, ValueError):
        pass
    log.warning("the JSONC edit did not read back; the config file is written without its comments")
    return None


def check_secret_setting(settings: Settings, name: str, value: Any) -> None:
    """A secret setting the API stores sealed: not locked by the environment, and text (empty removes it)."""
    if settings.locked(name):
        raise SettingsError(name, f"is locked by the environment ({settings.sources[name][4:]})",
                            "Change the environment variable and restart")
    if value is not None and (not isinstance(value, str) or any(ch.isspace() for ch in value.strip())
                              or len(value) > 20_000):
        raise SettingsError(name, "must be the key itself, as text without spaces", "Paste the key alone")


def _yaml() -> Any:
    """A round-trip YAML reader and writer: comments, order and quoting survive a rewrite."""
    from ruamel.yaml import YAML

    rt = YAML(typ="rt")
    rt.preserve_quotes = True
    return rt


def _parse_for_update(suffix: str, text: str) -> Any:
    if suffix == ".toml":
        return tomlkit.parse(text)
    if suffix in (".yaml", ".yml"):
        return _yaml().load(text) or {}
    if suffix == ".jsonc":
        return json5.loads(text) if text.strip() else {}
    return json.loads(text) if text.strip() else {}


def _dump_for_update(suffix: str, doc: Any) -> str:
    if suffix == ".toml":
        return tomlkit.dumps(doc)
    if suffix in (".yaml", ".yml"):
        import io

        out = io.StringIO()
        _yaml().dump(doc, out)
        return out.getvalue()
    return json.dumps(doc, indent=2) + "\n"


def describe_keys() -> Iterable[str]:
    """Lines for `sesame settings --keys`: env name, config path, default."""
    for key in KEYS:
        default = "" if key.default in (None, [], {}) else f" (default {key.default})"
        path = f" / {key.path}" if key.path else ""
        yield f"{' | '.join(key.env)}{path}{default}  {key.help}".rstrip()
